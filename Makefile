# clickstream — developer commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## List the commands
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the package with its dev extras

demo: install ## Run the embedded demo (no servers, no cloud account): producer, consumer, dashboard
	$(PY) -m clickstream.demo

system-deps: ## Install the Debian packages the tests need (PostgreSQL, Chromium, a JDK, Maven), if missing
	@bash scripts/system-deps.sh

stack-up: install ## Start the local stack (Kafka, PostgreSQL, OpenSearch); idempotent
	$(PY) -m devstack up

stack-down: install ## Stop the local stack
	$(PY) -m devstack down

test: install system-deps ## Start the local stack, run every test (unit, integration, browser, Pulumi mocks), stop the stack
	@$(PY) -m devstack up
	@CLICKSTREAM_REQUIRE_SERVICES=1 $(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	  $(PY) -m devstack down; exit $$status

test-unit: install ## Quick loop: only the tests that need no services
	$(PY) -m pytest -m "not integration and not browser" $(PYTEST_ARGS)

lint: install ## ruff (lint + format check) and mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install ## Run the benchmarks against the local stack (start it with `make stack-up`)
	$(PY) -m bench.producer
	$(PY) -m bench.consumer

.PHONY: help install demo system-deps stack-up stack-down test test-unit lint bench

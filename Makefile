# clickstream — developer commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
COMPILED := $(VENV)/.compiled
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## List the commands
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'setuptools>=77'
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The traffic simulator compiled with mypyc (setup.py): the producer's speed. Built again when
# one of its sources changes (the list is read from clickstream/_build_stamp.py) or on `make compile`; if it
# cannot be built, the pure-Python module runs (the same events, slower) and the outcome is
# kept until then, so other targets do not retry it.
COMPILED_SOURCES := setup.py $(addprefix clickstream/,$(shell sed -n 's/^COMPILED_SOURCES: Final = (\(.*\))/\1/p' clickstream/_build_stamp.py | tr -d '",'))
$(COMPILED): $(STAMP) $(COMPILED_SOURCES)
	@$(MAKE) --no-print-directory compile

compile: $(STAMP) ## Compile the traffic simulator with mypyc (again); make install does when needed
	@echo "compiling clickstream/simulator.py with mypyc (about a minute; log: build/mypyc.log)"
	@mkdir -p build
	@rm -f clickstream/_simulator_compiled*.so  # a new file: a running producer keeps its copy
	@CLICKSTREAM_MYPYC=1 $(PY) setup.py build_ext --inplace > build/mypyc.log 2>&1 || true
	@$(PY) -c 'import clickstream.simulator as s; print("simulator:", s.IMPLEMENTATION); raise SystemExit(s.IMPLEMENTATION != "compiled (mypyc)")' \
	  || echo "warning: the simulator is not compiled (see build/mypyc.log; a C compiler and Python's headers are needed); the pure-Python module runs"
	@touch $(COMPILED)

install: $(STAMP) $(COMPILED) ## Create .venv, install the package with its dev extras, compile the simulator

demo: install ## Run the embedded demo (no servers, no cloud account): producer, consumer, dashboard (DEMO_ARGS="--port 9000" passes flags)
	$(PY) -m clickstream.demo $(DEMO_ARGS)

system-deps: ## Install the Debian packages the tests need (PostgreSQL, Chromium, a JDK, Maven, a C compiler), if missing
	@PYTHON=$(PYTHON) bash scripts/system-deps.sh

stack-up: install ## Start the local stack (Kafka, PostgreSQL, OpenSearch); idempotent
	$(PY) -m devstack up

stack-down: install ## Stop the local stack
	$(PY) -m devstack down

test: system-deps ## Start the local stack, run every test (unit, integration, browser, Pulumi mocks), stop the stack (unless it was already running)
	@$(MAKE) --no-print-directory install
	@if $(PY) -m devstack status >/dev/null 2>&1; then was_up=1; else was_up=0; fi; \
	  $(PY) -m devstack up || exit $$?; \
	  CLICKSTREAM_REQUIRE_SERVICES=1 CLICKSTREAM_REQUIRE_COMPILED=1 $(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	  if [ $$was_up = 1 ]; then echo "the stack was running before the tests: left running (make stack-down stops it)"; \
	  else $(PY) -m devstack down; fi; exit $$status

test-unit: install ## Quick loop: only the tests that need no services
	$(PY) -m pytest -m "not integration and not browser" $(PYTEST_ARGS)

lint: install ## ruff (lint + format check) and mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install ## Run the benchmarks against the local stack (start it with `make stack-up`)
	$(PY) -m bench.producer
	$(PY) -m bench.consumer

.PHONY: help install compile demo system-deps stack-up stack-down test test-unit lint bench

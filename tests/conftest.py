"""Shared fixtures: the real local stack (``python -m devstack up``) and per-test isolation.

Services are found the way ``python -m devstack env`` finds them (``CLICKSTREAM_DEVSTACK_*``
ports, else the defaults). A test whose service is unreachable is skipped with the reason, or
fails when ``CLICKSTREAM_REQUIRE_SERVICES=1`` (``make test`` and CI), so a missing service can
never pass silently there. Each test gets its own topic, database or index prefix, and the
fixtures delete them afterwards.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # the typed home of NewTopic
from opensearchpy import OpenSearch
from opensearchpy.exceptions import NotFoundError, OpenSearchException, RequestError
from psycopg import sql

from devstack.config import StackConfig, config_from_env

_INTEGRATION_DIR = Path(__file__).parent / "integration"
_SERVICE_TIMEOUT_S = 10.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under ``tests/integration`` with ``integration``."""
    for item in items:
        if _INTEGRATION_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def _unavailable(reason: str) -> None:
    hint = " (start it with `python -m devstack up`)"
    if os.environ.get("CLICKSTREAM_REQUIRE_SERVICES") == "1":
        pytest.fail(reason + hint, pytrace=False)
    pytest.skip(reason + hint)


def _libpq_url(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


class Stack:
    """Addresses of the local stack; reading one checks, once per session, that it answers.

    Attributes are read lazily so that a test using only Kafka is not skipped because
    OpenSearch is down.
    """

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self._checked: dict[str, str | None] = {}

    def _require(self, name: str, check: Callable[[], None]) -> None:
        if name not in self._checked:
            try:
                check()
            except Exception as exc:  # any failure means "unreachable"
                self._checked[name] = f"{type(exc).__name__}: {exc}"
            else:
                self._checked[name] = None
        error = self._checked[name]
        if error is not None:
            _unavailable(f"{name} is unreachable: {error}")

    def _check_kafka(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.config.kafka_bootstrap})
        metadata = admin.list_topics(timeout=_SERVICE_TIMEOUT_S)
        if not metadata.brokers:
            raise RuntimeError(f"no brokers at {self.config.kafka_bootstrap}")

    def _check_postgres(self) -> None:
        with psycopg.connect(
            _libpq_url(self.config.database_url("postgres")),
            connect_timeout=int(_SERVICE_TIMEOUT_S),
        ) as conn:
            conn.execute("SELECT 1")

    def _check_opensearch(self) -> None:
        client = OpenSearch(hosts=[self.config.opensearch_url], timeout=_SERVICE_TIMEOUT_S)
        health = client.cluster.health(wait_for_status="yellow")
        if health.get("status") not in {"green", "yellow"}:
            raise RuntimeError(f"cluster health is {health.get('status')}")

    @property
    def kafka_bootstrap(self) -> str:
        """``host:port`` of the PLAINTEXT listener."""
        self._require("Kafka", self._check_kafka)
        return self.config.kafka_bootstrap

    @property
    def postgres_admin_url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` database as the project role (may create DBs)."""
        self._require("PostgreSQL", self._check_postgres)
        return self.config.database_url("postgres")

    @property
    def opensearch_url(self) -> str:
        """Base URL of OpenSearch (HTTP, no auth)."""
        self._require("OpenSearch", self._check_opensearch)
        return self.config.opensearch_url


@pytest.fixture(scope="session")
def stack() -> Stack:
    """The local stack; attribute access skips or fails the test if that service is down."""
    return Stack(config_from_env(os.environ))


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@pytest.fixture
def kafka_topic_factory(stack: Stack) -> Iterator[Callable[..., str]]:
    """Return ``make(partitions=3, *, config=None) -> name`` creating a unique topic.

    The topic exists with all partitions led when the call returns; every topic made is deleted
    after the test.
    """
    bootstrap = stack.kafka_bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    created: list[str] = []

    def make(partitions: int = 3, *, config: Mapping[str, str] | None = None) -> str:
        name = _unique("test-")
        topic = NewTopic(
            name, num_partitions=partitions, replication_factor=1, config=dict(config or {})
        )
        admin.create_topics([topic], operation_timeout=30)[name].result(timeout=30)
        created.append(name)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            meta = admin.list_topics(topic=name, timeout=5).topics.get(name)
            if (
                meta is not None
                and meta.error is None
                and len(meta.partitions) == partitions
                and all(p.leader >= 0 for p in meta.partitions.values())
            ):
                return name
            time.sleep(0.1)
        raise TimeoutError(f"topic {name} has no leaders after 30 s")

    yield make
    if created:
        for future in admin.delete_topics(created, operation_timeout=30).values():
            future.result(timeout=30)


@pytest.fixture
def database_url(stack: Stack) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (SQLAlchemy URL, psycopg 3 driver), dropped afterwards."""
    admin_url = _libpq_url(stack.postgres_admin_url)
    name = _unique("test_")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield stack.config.database_url(name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _delete_by_prefix(client: OpenSearch, prefix: str) -> None:
    pattern = f"{prefix}*"
    ignore = (400, 404)
    # Data streams first: their backing indices cannot be deleted while the stream exists.
    client.transport.perform_request(
        "DELETE", f"/_data_stream/{pattern}", params={"ignore": ignore}
    )
    client.indices.delete(index=pattern, expand_wildcards="all", ignore=ignore)
    for path in ("/_index_template", "/_component_template"):
        try:
            found: Any = client.transport.perform_request("GET", f"{path}/{pattern}")
        except (NotFoundError, RequestError):
            continue
        key = "index_templates" if path == "/_index_template" else "component_templates"
        for template in found.get(key, []):
            client.transport.perform_request("DELETE", f"{path}/{template['name']}")
    client.indices.delete_template(name=pattern, ignore=ignore)
    client.transport.perform_request(
        "DELETE", f"/_ingest/pipeline/{pattern}", params={"ignore": ignore}
    )
    # Index State Management is a plugin; nodes without it answer 400/404 here.
    try:
        policies: Any = client.transport.perform_request(
            "GET", "/_plugins/_ism/policies", params={"size": 1000}
        )
    except OpenSearchException:
        return
    for policy in policies.get("policies", []):
        policy_id = policy.get("_id", "")
        if policy_id.startswith(prefix):
            client.transport.perform_request("DELETE", f"/_plugins/_ism/policies/{policy_id}")


@pytest.fixture
def opensearch_index_prefix(stack: Stack) -> Iterator[str]:
    """A unique lower-case prefix (``test-<hex>``); afterwards every index, alias, data stream,
    index/component/legacy template, ingest pipeline and ISM policy named with it is deleted."""
    client = OpenSearch(hosts=[stack.opensearch_url], timeout=30)
    prefix = _unique("test-")
    try:
        yield prefix
    finally:
        _delete_by_prefix(client, prefix)
        client.close()

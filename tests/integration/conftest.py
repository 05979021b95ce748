"""Fixtures for the pipeline's integration tests, on top of the shared ones in tests/conftest.py."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from sqlalchemy import Engine

from clickstream.db import make_engine
from clickstream.db.migrate import upgrade
from clickstream.kafka import DLQ_MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from devstack.kafka import RunningBroker


@pytest.fixture
def migrated_database_url(database_url: str) -> str:
    """A fresh PostgreSQL database with the schema at Alembic's head."""
    upgrade(database_url)
    return database_url


@pytest.fixture
def migrated_engine(migrated_database_url: str) -> Iterator[Engine]:
    """An engine on a fresh PostgreSQL database with the schema at Alembic's head."""
    engine = make_engine(migrated_database_url)
    yield engine
    engine.dispose()


@dataclass(frozen=True)
class Topics:
    events: str
    dlq: str


@pytest.fixture
def topics(stack, kafka_topic_factory: Callable[..., str]) -> Iterator[Callable[[int], Topics]]:
    """Factory: a fresh events topic with N partitions and its dead-letter topic (``.dlq``)."""
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    created: list[str] = []

    def make(partitions: int = 3) -> Topics:
        events = kafka_topic_factory(partitions)
        dlq = events + ".dlq"
        # As python -m clickstream.topics makes it: room for whole oversized messages.
        config = {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)}
        for future in admin.create_topics([NewTopic(dlq, 1, 1, config=config)]).values():
            future.result(30)
        created.append(dlq)
        return Topics(events, dlq)

    yield make
    if created:
        for future in admin.delete_topics(created).values():
            with contextlib.suppress(Exception):  # best-effort cleanup
                future.result(30)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[RunningBroker]:
    """A broker of this test's own, so that it can be hung (SIGSTOP) without disturbing others.

    Resumed (SIGCONT) before it is stopped, whatever the test left it in.
    """
    from devstack.kafka import BrokerConfig, start_broker
    from devstack.process import free_tcp_port

    config = BrokerConfig(
        data_dir=tmp_path / "broker",
        port=free_tcp_port(),
        controller_port=free_tcp_port(),
        heap="384m",
    )
    with start_broker(config) as broker:
        try:
            yield broker
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(broker.pid, signal.SIGCONT)

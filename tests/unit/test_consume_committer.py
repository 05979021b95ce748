"""Offset commits and the close that a hung Kafka cannot hold: ``consume._Committer``.

The client here is a stand-in whose calls block until released, as librdkafka's synchronous
commit does while the group coordinator does not answer; the real hung broker is in
tests/integration/test_consumer.py.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from clickstream import consume
from clickstream.consume import _Committer


@dataclass
class Message:
    partition_: int
    offset_: int

    def topic(self) -> str:
        return "events"

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_


@dataclass
class HungClient:
    """``commit`` and ``close`` wait for ``answer``; they record the thread they ran in."""

    answer: threading.Event = field(default_factory=threading.Event)
    refuse: bool = False
    commits: list[list[tuple[int, int]]] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)
    seeks: list[tuple[int, int]] = field(default_factory=list)

    def commit(self, *, offsets: Any, asynchronous: bool) -> None:
        assert not asynchronous
        self.threads.append(threading.current_thread().name)
        self.answer.wait()
        if self.refuse:
            raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])

    def close(self) -> None:
        self.threads.append(threading.current_thread().name)
        self.answer.wait()
        self.closed.set()

    def seek(self, tp: Any) -> None:
        self.seeks.append((tp.partition, tp.offset))


def _committer(client: HungClient, stop: threading.Event, grace: float = 0.3) -> _Committer:
    return _Committer(client, stop, grace=grace)  # type: ignore[arg-type]


def test_an_answered_commit_commits_the_offsets_after_the_batch() -> None:
    client = HungClient()
    client.answer.set()
    committer = _committer(client, threading.Event())
    committer.commit([Message(0, 5), Message(0, 6), Message(2, 1)])
    assert client.commits == [[(0, 7), (2, 2)]]
    assert client.threads == ["kafka-commit"]
    assert not committer.abandoned
    assert committer.consumer is client


def test_a_stop_leaves_an_unanswered_commit_after_the_grace_and_the_client_alone() -> None:
    client, stop = HungClient(), threading.Event()
    committer = _committer(client, stop)
    stop.set()
    committer.commit([Message(0, 5)])  # returns although Kafka never answers
    assert committer.abandoned
    assert client.commits == []
    assert committer.consumer is None  # any further call would wait behind the commit
    committer.commit([Message(0, 6)])  # not even tried
    assert client.threads == ["kafka-commit"]
    committer.close()  # the grace is spent: it starts the close and does not wait for it
    assert client.threads == ["kafka-commit", "kafka-commit"]
    assert not client.closed.is_set()
    client.answer.set()
    assert client.closed.wait(5)


def test_without_a_stop_an_unanswered_commit_is_waited_for_and_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(consume, "_COMMIT_NOTE_INTERVAL", 0.3)
    client = HungClient()
    committer = _committer(client, threading.Event(), grace=0.0)
    threading.Timer(1.5, client.answer.set).start()
    with caplog.at_level(logging.WARNING, logger="clickstream.consume"):
        committer.commit([Message(1, 9)])
    assert client.commits == [[(1, 10)]]  # waited for, however long: no stop came
    assert not committer.abandoned
    assert any("offset commit has waited" in r.getMessage() for r in caplog.records)


def test_a_refused_commit_rewinds_the_batch() -> None:
    client = HungClient(refuse=True)
    client.answer.set()
    committer = _committer(client, threading.Event())
    committer.commit([Message(0, 5), Message(0, 6), Message(1, 3)])
    assert client.commits == []
    assert sorted(client.seeks) == [(0, 5), (1, 3)]
    assert not committer.abandoned


def test_a_commit_from_a_rebalance_callback_runs_in_the_calling_thread() -> None:
    # The callback runs inside consume() or close(), which hold the client: a commit from
    # another thread would wait for them, and they for the callback.
    client = HungClient()
    client.answer.set()
    committer = _committer(client, threading.Event())
    committer.commit([Message(0, 1)], inline=True)
    assert client.threads == [threading.current_thread().name]
    assert client.commits == [[(0, 2)]]

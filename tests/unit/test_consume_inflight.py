"""When the loop commits offsets: the batch being indexed while the next is stored, and
commits (and the close) that a hung Kafka cannot hold (``consume._Committer``).

The clients here are stand-ins; ``HungClient``'s calls block until released, as librdkafka's
synchronous commit does while the group coordinator does not answer. The real hung broker is
in tests/integration/test_consumer.py.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from clickstream import consume
from clickstream.consume import _Committer, _Inflight, _Progress
from clickstream.errors import TransientError
from clickstream.pipeline import BatchReport


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
class Consumer:
    committed: list[list[tuple[int, int]]] = field(default_factory=list)
    seeks: list[tuple[int, int]] = field(default_factory=list)

    def commit(self, *, offsets: Any, asynchronous: bool) -> None:
        assert not asynchronous
        self.committed.append([(tp.partition, tp.offset) for tp in offsets])

    def seek(self, tp: Any) -> None:
        self.seeks.append((tp.partition, tp.offset))


@dataclass
class Processor:
    """Indexing waits for ``release``, then fails or succeeds as told."""

    fail: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    owed: list[Any] = field(default_factory=list)
    dead_letters: Any = None

    def index(self, stored: Any) -> list[Any]:
        assert self.release.wait(10)
        if self.fail:
            raise TransientError("search unavailable")
        return []

    def owe(self, stored: Any) -> None:
        self.owed.append(stored)

    def complete(self, stored: Any, indexed: Any) -> BatchReport:
        try:
            indexed()
        except BaseException:
            self.owe(stored)
            raise
        return BatchReport(consumed=len(stored), stored=len(stored))


def _inflight(processor: Processor) -> tuple[_Inflight, Consumer, _Progress]:
    consumer, progress = Consumer(), _Progress(3600)
    committer = _Committer(consumer, threading.Event(), grace=1.0)  # type: ignore[arg-type]
    return _Inflight(committer, processor, progress), consumer, progress


def test_offsets_are_committed_only_once_indexing_finished() -> None:
    processor = Processor()
    inflight, consumer, progress = _inflight(processor)
    batch = [Message(0, 5), Message(0, 6), Message(1, 9)]
    inflight.start(batch, "stored")  # type: ignore[arg-type]
    assert not inflight.ready()
    assert consumer.committed == []
    processor.release.set()
    assert inflight.settle() == ()
    assert consumer.committed == [[(0, 7), (1, 10)]]
    assert progress.total.stored == len("stored")
    inflight.close()


def test_a_failure_settled_in_a_rebalance_is_handed_to_the_loop_not_rewound_there() -> None:
    # Inside consume() a seek would race with the messages consume() already holds; the loop
    # rewinds the failed batch together with what consume() returned after the callback.
    processor = Processor(fail=True)
    processor.release.set()
    inflight, consumer, _ = _inflight(processor)
    batch = [Message(0, 5), Message(1, 9)]
    inflight.start(batch, "stored")  # type: ignore[arg-type]
    inflight.on_revoke(consumer, [])  # type: ignore[arg-type]
    assert consumer.committed == []
    assert consumer.seeks == []
    assert processor.owed == ["stored"]
    assert list(inflight.take_failed()) == batch
    assert list(inflight.take_failed()) == []
    inflight.close()


def test_indexed_says_whether_the_last_settled_batch_reached_opensearch() -> None:
    # The loop's backoff restarts only once OpenSearch took a batch: a batch read again after
    # an indexing failure is stored at once (the database has it) and says nothing about it.
    processor = Processor(fail=True)
    processor.release.set()
    inflight, _, _ = _inflight(processor)
    assert not inflight.indexed
    inflight.start([Message(0, 5)], "stored")  # type: ignore[arg-type]
    assert list(inflight.settle()) == [Message(0, 5)]
    assert not inflight.indexed
    assert inflight.settle() == ()  # nothing pending: still not indexed
    assert not inflight.indexed
    processor.fail = False
    inflight.start([Message(0, 5)], "stored")  # type: ignore[arg-type]
    assert inflight.settle() == ()
    assert inflight.indexed
    inflight.close()


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

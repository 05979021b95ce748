"""The batch being indexed while the next is stored: when its offsets are committed."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

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

"""The order of effects of one batch, on SQLite with in-memory stand-ins for the other sinks.

The real services are exercised in tests/integration/test_consumer.py; these tests pin down the
orchestration: what is committed when a sink fails, what is dead-lettered and with which headers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from clickstream.consume import _SearchSync
from clickstream.db import make_engine
from clickstream.db.migrate import upgrade
from clickstream.errors import SinkError, TransientError
from clickstream.events import ClickEvent, decode_event
from clickstream.pipeline import BatchProcessor, DeadLetter
from clickstream.search.documents import click_event_json, dumps, event_document
from clickstream.store import SessionRules

NOW = datetime(2024, 8, 1, 12, 0, tzinfo=UTC)


@dataclass
class Message:
    raw: bytes | None
    at: int
    key_bytes: bytes | None = b"k"

    def value(self) -> bytes | None:
        return self.raw

    def key(self) -> bytes | None:
        return self.key_bytes

    def topic(self) -> str:
        return "events"

    def partition(self) -> int:
        return 1

    def offset(self) -> int:
        return self.at


@dataclass
class Letters:
    sent: list[DeadLetter] = field(default_factory=list)
    fail: bool = False

    def send(self, letters: Sequence[DeadLetter]) -> None:
        if self.fail:
            raise TransientError("dead-letter topic unavailable")
        self.sent.extend(letters)


@dataclass(frozen=True)
class Rejected:
    doc_id: str
    reason: str
    detail: str


@dataclass
class Index:
    events: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    sessions: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    reject: set[str] = field(default_factory=set)
    fail: bool = False
    fail_sessions: bool = False

    calls: int = 0

    def index_click_events(self, events: Sequence[ClickEvent]) -> list[Rejected]:
        docs = [click_event_json(item) for item in events]
        return self._index([(event_id, json.loads(text)) for event_id, _, text in docs])

    def index_events(self, events: Sequence[Mapping[str, Any]]) -> list[Rejected]:
        docs = [event_document(row) for row in events]
        return self._index([(event_id, json.loads(dumps(doc))) for event_id, _, doc in docs])

    def _index(self, docs: list[tuple[str, dict[str, Any]]]) -> list[Rejected]:
        # op_type=index: a document replaces the one of its id
        self.calls += 1
        if self.fail:
            raise TransientError("search unavailable")
        out = []
        for event_id, doc in docs:
            if event_id in self.reject:
                out.append(Rejected(event_id, "search_rejected", "mapper_parsing_exception"))
            else:
                self.events[event_id] = doc
        return out

    def upsert_session_documents(
        self,
        documents: Mapping[str, str | Mapping[str, Any]],
        deleted_session_ids: Sequence[str],
        *,
        version: int,
    ) -> list[Rejected]:
        if self.fail or self.fail_sessions:
            raise TransientError("search unavailable")
        for session_id in deleted_session_ids:
            self.sessions.pop(session_id, None)
        out = []
        for session_id, doc in documents.items():
            if session_id in self.reject:
                out.append(Rejected(session_id, "search_rejected", "mapper_parsing_exception"))
            else:
                self.sessions[session_id] = json.loads(doc) if isinstance(doc, str) else doc
        return out


def event(n: int, minute: int, **extra: Any) -> bytes:
    data = {
        "event_id": f"20000000-0000-4000-8000-{n:012d}",
        "event_type": "page_view",
        "occurred_at": f"2024-08-01T10:{minute:02d}:00Z",
        "user_id": "visitor",
        "page_url": f"https://shop.example/{n}",
        "page_type": "home",
        "device_type": "desktop",
    } | extra
    return json.dumps(data).encode()


@pytest.fixture
def engine(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'pipeline.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def processor(engine, letters: Letters, index: Index | None = None) -> BatchProcessor:
    return BatchProcessor(
        engine=engine,
        rules=SessionRules(),
        clock=lambda: NOW,
        future_tolerance=timedelta(minutes=5),
        dead_letters=letters,
        search=index,
    )


def index_of(raw: bytes) -> dict[str, Any]:
    """The search document of a valid event, as the sink makes it from the validated event."""
    decoded = decode_event(raw, now=NOW, future_tolerance=timedelta(minutes=5))
    return dict(json.loads(click_event_json(decoded)[2]))


def count(engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_valid_events_are_stored_and_invalid_ones_dead_lettered(engine) -> None:
    letters, index = Letters(), Index()
    batch = [
        Message(event(1, 0), 10),
        Message(b"{oops", 11, b"bad-key"),
        Message(event(2, 5), 12),
        Message(event(3, 7, country="de"), 13),
    ]
    run = processor(engine, letters, index)
    report = run.process(batch)
    assert (report.consumed, report.stored, report.duplicates, report.dead_lettered) == (4, 2, 0, 2)
    assert report.reasons == {"not_json": 1, "schema": 1}
    assert count(engine, "events") == 2
    assert count(engine, "sessions") == 1
    first = letters.sent[0]
    assert (first.key, first.value, first.reason) == (b"bad-key", b"{oops", "not_json")
    headers = dict(first.headers())
    assert (headers["source_topic"], headers["source_partition"], headers["source_offset"]) == (
        b"events",
        b"1",
        b"11",
    )
    assert headers["reason"] == b"not_json"
    assert headers["detail"].startswith(b"the message is not JSON")
    second = letters.sent[1]
    assert (second.key, second.value, second.reason) == (b"k", event(3, 7, country="de"), "schema")
    assert (second.source_partition, second.source_offset) == (1, 13)
    assert "country" in second.detail
    assert len(index.events) == 2
    assert index.sessions == {}  # session documents follow through the outbox
    assert run.sync_search() == 1
    assert len(index.sessions) == 1


def test_a_redelivered_batch_changes_nothing(engine) -> None:
    letters, index = Letters(), Index()
    batch = [Message(event(1, 0), 1), Message(event(2, 10), 2)]
    processor(engine, letters, index).process(batch)
    again = processor(engine, letters, index).process(batch)
    assert (again.stored, again.duplicates, again.sessions_written) == (0, 2, 0)
    assert count(engine, "events") == 2
    with engine.connect() as conn:
        assert conn.execute(text("SELECT sum(events) FROM traffic_minute")).scalar_one() == 2


def test_a_failing_dead_letter_topic_rolls_back_the_whole_batch(engine) -> None:
    letters, index = Letters(fail=True), Index()
    batch = [Message(event(1, 0), 1), Message(b"not json", 2)]
    with pytest.raises(TransientError):
        processor(engine, letters, index).process(batch)
    assert count(engine, "events") == 0
    assert count(engine, "sessions") == 0
    assert count(engine, "traffic_minute") == 0
    assert index.events == {}  # nothing of a rolled-back attempt reaches OpenSearch
    # the retry succeeds once the sink is back, and stores everything
    letters.fail = False
    report = processor(engine, letters, index).process(batch)
    assert (report.stored, report.dead_lettered) == (1, 1)
    assert set(index.events) == {"20000000-0000-4000-8000-000000000001"}


def test_opensearch_failing_after_the_commit_is_retried_from_the_stored_copies(engine) -> None:
    letters, index = Letters(), Index(fail=True)
    run = processor(engine, letters, index)
    batch = [Message(event(1, 0), 1), Message(event(2, 10), 2), Message(b"not json", 3)]
    with pytest.raises(TransientError):
        run.process(batch)
    # SQL committed (the offsets were not): the retry finds the events stored
    assert count(engine, "events") == 2
    assert index.events == {}
    index.fail = False
    report = run.process(batch)
    # counted as stored once, as if the first attempt had succeeded; not as duplicates
    assert (report.consumed, report.stored, report.duplicates) == (3, 2, 0)
    assert set(index.events) == {
        "20000000-0000-4000-8000-000000000001",
        "20000000-0000-4000-8000-000000000002",
    }
    # the document made from the stored row equals the one made from the validated event
    assert index.events["20000000-0000-4000-8000-000000000002"] == index_of(event(2, 10))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT sum(events) FROM traffic_minute")).scalar_one() == 2
    # a later redelivery is a plain duplicate again
    again = run.process(batch)
    assert (again.stored, again.duplicates) == (0, 2)


def test_opensearch_holds_the_stored_copy_when_an_attempt_with_another_copy_rolled_back(
    engine,
) -> None:
    # Two copies of one event_id from two visitors (so from two partitions in Kafka): the
    # first attempt with copy A rolls back (here: the dead-letter topic fails), copy B is
    # stored meanwhile, and the retry finds A a duplicate. OpenSearch must hold B, the stored
    # copy. (Indexing A before its transaction committed left A there for good.)
    same_id = 7
    copy_a = event(same_id, 0, user_id="visitor-a", page_url="https://shop.example/a")
    copy_b = event(same_id, 0, user_id="visitor-b", page_url="https://shop.example/b")
    letters, index = Letters(fail=True), Index()
    batch_a = [Message(copy_a, 1, b"visitor-a"), Message(b"not json", 2, b"visitor-a")]
    with pytest.raises(TransientError):
        processor(engine, letters, index).process(batch_a)
    letters.fail = False
    stored = processor(engine, letters, index).process([Message(copy_b, 9, b"visitor-b")])
    assert stored.stored == 1
    retried = processor(engine, letters, index).process(batch_a)
    assert (retried.stored, retried.duplicates, retried.dead_lettered) == (0, 1, 1)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT page_url FROM events")).scalar_one() == (
            "https://shop.example/b"
        )
    (doc,) = index.events.values()
    assert (doc["page_url"], doc["user_id"]) == ("https://shop.example/b", "visitor-b")


def test_a_document_the_search_sink_rejects_is_dead_lettered_but_stays_in_sql(engine) -> None:
    rejected_id = "20000000-0000-4000-8000-000000000002"
    letters, index = Letters(), Index(reject={rejected_id})
    batch = [Message(event(1, 0), 1), Message(event(2, 1), 2, b"visitor")]
    report = processor(engine, letters, index).process(batch)
    # Stored, so not counted as dead-lettered: consumed = stored + duplicates + dead-lettered.
    assert (report.consumed, report.stored, report.duplicates, report.dead_lettered) == (2, 2, 0, 0)
    assert (report.search_rejected, report.reasons) == (1, {})
    assert count(engine, "events") == 2
    (letter,) = letters.sent
    assert (letter.reason, letter.source_offset, letter.key) == ("search_rejected", 2, b"visitor")
    assert letter.value == event(2, 1)
    assert "opensearch" in letter.detail


def test_a_late_event_merges_sessions_in_sql_and_in_the_index(engine) -> None:
    letters, index = Letters(), Index()
    run = processor(engine, letters, index)
    run.process([Message(event(1, 0), 1)])
    run.process([Message(event(3, 59), 2)])  # 59 minutes later: a second session
    run.sync_search()
    assert count(engine, "sessions") == 2
    assert len(index.sessions) == 2
    run.process([Message(event(2, 30), 3)])  # bridges both: one session
    run.sync_search()
    assert count(engine, "sessions") == 1
    assert len(index.sessions) == 1
    (session,) = index.sessions.values()
    assert session["event_count"] == 3


def session_ids(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT session_id FROM sessions")).scalars())


def test_session_documents_come_only_from_committed_rows(engine) -> None:
    # The first attempt fails after OpenSearch was reachable; its retry contains one more
    # (earlier) event, so the session it would have had never exists in SQL. No document
    # of it may linger in the index.
    letters, index = Letters(fail=True), Index()
    run = processor(engine, letters, index)
    first_try = [Message(event(2, 10), 1), Message(event(3, 20), 2), Message(b"bad", 3)]
    with pytest.raises(TransientError):
        run.process(first_try)
    assert index.sessions == {}
    letters.fail = False
    run.process([Message(event(1, 5), 0), *first_try])
    run.sync_search()
    assert set(index.sessions) == session_ids(engine)
    (document,) = index.sessions.values()
    assert document["event_count"] == 3


def test_session_documents_owed_during_an_outage_are_drained_later(engine) -> None:
    letters, index = Letters(), Index()
    run = processor(engine, letters, index)
    index.fail_sessions = True
    batch = [Message(event(1, 0), 1), Message(event(2, 50), 2)]
    run.process(batch)
    assert count(engine, "events") == 2  # SQL committed
    assert count(engine, "search_outbox") == 2  # the documents are owed
    with pytest.raises(TransientError):
        run.sync_search()
    assert count(engine, "search_outbox") == 2  # still owed after a failed drain
    index.fail_sessions = False
    assert run.sync_search() == 2
    assert set(index.sessions) == session_ids(engine)
    assert count(engine, "search_outbox") == 0


def test_rows_the_database_refuses_are_dead_lettered_one_by_one(engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON events"
                " WHEN NEW.user_id = 'poison' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        )
    letters = Letters()
    poison = event(9, 1, user_id="poison")
    report = processor(engine, letters).process(
        [Message(event(1, 0), 1), Message(poison, 2, b"poison"), Message(event(2, 2), 3)]
    )
    assert (report.stored, report.dead_lettered) == (2, 1)
    (letter,) = letters.sent
    assert (letter.reason, letter.value, letter.source_offset) == ("rejected_by_sink", poison, 2)
    assert "refused" in letter.detail
    assert count(engine, "events") == 2


def test_a_session_document_the_search_sink_rejects_is_dead_lettered(engine) -> None:
    letters, index = Letters(), Index()
    run = processor(engine, letters, index)
    run.process([Message(event(1, 0), 1), Message(event(2, 1), 2)])
    (session_id,) = session_ids(engine)
    index.reject = {session_id}
    assert run.sync_search() == 1
    assert index.sessions == {}
    assert count(engine, "search_outbox") == 0  # refused for good: not retried forever
    (letter,) = letters.sent
    assert (letter.reason, letter.key, letter.source_topic) == (
        "search_rejected",
        b"visitor",
        "sessions",
    )
    assert "opensearch rejected session document" in letter.detail
    document = json.loads(letter.value or b"")
    assert (document["session_id"], document["event_count"]) == (session_id, 2)


# -- the consumer's background drainer (clickstream.consume._SearchSync) ---------------------


@dataclass
class Drains:
    """A processor whose sync_search counts calls and fails as told."""

    outcomes: list[BaseException | None] = field(default_factory=list)
    calls: int = 0
    running: int = 0
    most_at_once: int = 0
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    waits: list[bool] = field(default_factory=list)

    def sync_search(self, *, wait: bool = False) -> int:
        self.entered.set()
        self.calls += 1
        self.waits.append(wait)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.release.wait(30)
            outcome = self.outcomes.pop(0) if self.outcomes else None
            if outcome is not None:
                raise outcome
            return 0
        finally:
            self.running -= 1


def test_the_drainer_drains_on_request_and_reports_transient_failures() -> None:
    drains = Drains(outcomes=[None, TransientError("opensearch down"), None])
    sync = _SearchSync(drains, interval=3600)  # type: ignore[arg-type]
    sync.start()
    try:
        assert drains.entered.wait(30)  # the start-up drain is under way (and waits for release)
        results = []
        requester = threading.Thread(target=lambda: results.append(sync.drain_now()))
        requester.start()
        drains.release.set()
        requester.join(30)
        # Not the start-up drain's result: a drain that began after the request.
        assert results == [False]
        assert sync.drain_now() is True
    finally:
        sync.close()
    assert drains.calls == 3
    assert drains.most_at_once == 1
    sync.check()  # transient failures do not stop the drainer


def test_only_a_complete_drain_waits_for_other_processes_drains() -> None:
    drains = Drains()
    drains.release.set()
    sync = _SearchSync(drains, interval=3600)  # type: ignore[arg-type]
    sync.start()
    try:
        assert drains.entered.wait(10)  # the start-up drain began: requests come after it
        assert sync.drain_now() is True
        assert sync.drain_now(complete=True) is True  # before exiting
        assert sync.drain_now() is True
    finally:
        sync.close()
    # the start-up drain, then one per request: only the one before exiting waits
    assert drains.waits == [False, False, True, False]


def test_close_lets_the_current_drain_finish_and_stops_the_drainer() -> None:
    drains = Drains()
    sync = _SearchSync(drains, interval=3600)  # type: ignore[arg-type]
    sync.start()
    closer = threading.Thread(target=sync.close)
    closer.start()
    drains.release.set()  # the start-up drain was waiting; it completes, then the thread ends
    closer.join(30)
    assert drains.calls == 1
    assert drains.running == 0


def test_a_fatal_drain_error_reaches_the_loop() -> None:
    drains = Drains(outcomes=[SinkError("missing alias")])
    drains.release.set()
    sync = _SearchSync(drains, interval=3600)  # type: ignore[arg-type]
    sync.start()
    with pytest.raises(SinkError, match="missing alias"):
        sync.drain_now()
    with pytest.raises(SinkError):
        sync.check()
    sync.close()


def test_only_the_same_messages_read_again_count_as_stored_after_a_failed_index(engine) -> None:
    # The batch with copy A is stored, then OpenSearch fails: its offsets are not committed.
    # Another visitor's copy B of the same event_id, at another offset, is a duplicate; only
    # copy A read again at its own offset counts as the event stored (once).
    copy_a = event(5, 0, user_id="visitor-a")
    copy_b = event(5, 0, user_id="visitor-b", page_url="https://shop.example/b")
    letters, index = Letters(), Index(fail=True)
    run = processor(engine, letters, index)
    with pytest.raises(TransientError):
        run.process([Message(copy_a, 1, b"visitor-a")])
    index.fail = False
    other = run.process([Message(copy_b, 7, b"visitor-b")])
    assert (other.stored, other.duplicates) == (0, 1)
    again = run.process([Message(copy_a, 1, b"visitor-a")])
    assert (again.stored, again.duplicates) == (1, 0)
    assert count(engine, "events") == 1
    (doc,) = index.events.values()
    assert doc["user_id"] == "visitor-a"

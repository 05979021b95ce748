"""The search outbox on PostgreSQL: the documents it renders, and how drainers and batches meet.

The drain's sink is a plain recording function here; the real OpenSearch node takes these
documents in tests/integration/test_search_opensearch.py and test_consumer.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, text

from clickstream import outbox
from clickstream.db import make_engine
from clickstream.db.models import sessions_table
from clickstream.search.documents import dumps, session_document
from tests.support import sample_session_row

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(migrated_database_url: str) -> Iterator[Engine]:
    # A drain that waited for a lock would fail after 20 s instead of hanging the test.
    engine = make_engine(migrated_database_url, statement_timeout_s=20)
    yield engine
    engine.dispose()


SESSIONS = [
    sample_session_row("s-plain"),
    sample_session_row(
        "s-rich",
        user_id='visitor "7" \\ tab\there',
        started_at=datetime(2024, 5, 1, 9, 0, 0, 1, tzinfo=UTC),
        ended_at=datetime(2024, 5, 1, 9, 30, 15, 250000, tzinfo=UTC),
        duration_seconds=1815.249999,
        event_count=7,
        page_views=4,
        purchases=2,
        revenue=Decimal("129.90"),
        converted=True,
        bounced=False,
        entry_page="https://shop.example/s?q=schuhe&größe=42",
        conversion_path="home > product > cart > checkout",
        traffic_source="newsletter / email",
        device_type="mobile",
        os="iOS",
        browser="Safari",
        country="CH",
        city="Zürich\n\u0001",
        funnel_step=5,
        updated_at=datetime(2024, 5, 3, 23, 59, 59, 999999, tzinfo=UTC),
    ),
    sample_session_row(
        "s-numbers",
        ended_at=datetime(2024, 5, 1, 9, 0, 0, 10, tzinfo=UTC),
        duration_seconds=0.00001,
        event_count=2,
        page_views=0,
        purchases=1,
        revenue=Decimal("9999999999999999.99"),
        converted=True,
        bounced=False,
        conversion_path="x",
        funnel_step=3,
    ),
    sample_session_row("s-whole", duration_seconds=86400.0, revenue=Decimal("12.00"), os=""),
    sample_session_row("s-large", duration_seconds=3.0e15, revenue=Decimal("2000000000000000.00")),
]


@dataclass
class Recorder:
    """Stands in for the sink's ``upsert_session_documents``; records what a drain hands over."""

    calls: list[tuple[dict[str, outbox.Document], list[str]]]
    reject: frozenset[str] = frozenset()
    versions: list[int] = field(default_factory=list)

    def __call__(
        self, documents: Mapping[str, outbox.Document], deleted: Sequence[str], *, version: int
    ) -> list[Any]:
        self.calls.append((dict(documents), list(deleted)))
        self.versions.append(version)
        return [Rejection(sid) for sid in documents if sid in self.reject]


@dataclass(frozen=True)
class Rejection:
    doc_id: str
    reason: str = "search_rejected"
    detail: str = "mapper_parsing_exception"


def _store(engine: Engine, rows: Sequence[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(sessions_table), list(rows))
        outbox.enqueue(conn, [row["session_id"] for row in rows])


def _queued(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT session_id, version FROM search_outbox")).all())


def _no_rejections(rejected: Sequence[Any], documents: Mapping[str, Any]) -> None:
    raise AssertionError(f"unexpected rejections {rejected}")


def test_postgresql_renders_each_session_as_the_python_document(engine: Engine) -> None:
    _store(engine, SESSIONS)
    with engine.begin() as conn:
        outbox.enqueue(conn, ["s-gone"])  # queued, but no row: its document is deleted
    recorder = Recorder([])
    assert outbox.drain(engine, recorder, on_rejected=_no_rejections) == len(SESSIONS) + 1
    ((documents, deleted),) = recorder.calls
    assert deleted == ["s-gone"]
    with engine.connect() as conn:
        rows = {r["session_id"]: dict(r) for r in conn.execute(select(sessions_table)).mappings()}
    assert set(documents) == set(rows) == {row["session_id"] for row in SESSIONS}
    for session_id, document in documents.items():
        # Byte for byte what the sink would serialise from the row itself.
        assert document == dumps(session_document(rows[session_id])[1]), session_id
    assert _queued(engine) == {}


def test_a_drain_neither_waits_for_a_batch_nor_removes_what_it_re_enqueues(
    engine: Engine,
) -> None:
    _store(engine, [sample_session_row("s-1"), sample_session_row("s-2")])
    recorder = Recorder([])
    with engine.connect() as batch:
        # A consumer's batch re-enqueues s-1 and has not committed yet.
        with batch.begin():
            batch.execute(
                text("UPDATE sessions SET event_count = 2, bounced = false, page_views = 2")
            )
            outbox.enqueue(batch, ["s-1"])
            assert outbox.drain(engine, recorder, on_rejected=_no_rejections) == 2
            # The drain wrote the committed rows and removed s-2 only.
            assert {sid: json_count(doc) for sid, doc in recorder.calls[0][0].items()} == {
                "s-1": 1,
                "s-2": 1,
            }
            assert _queued(engine) == {"s-1": 1}  # the batch's version is not visible yet
        assert _queued(engine) == {"s-1": 2}
    # The next drain brings s-1 to the state the batch committed.
    assert outbox.drain(engine, recorder, on_rejected=_no_rejections) == 1
    assert {sid: json_count(doc) for sid, doc in recorder.calls[1][0].items()} == {"s-1": 2}
    assert _queued(engine) == {}


def json_count(document: outbox.Document) -> int:
    parsed = json.loads(document) if isinstance(document, str) else document
    return int(parsed["event_count"])


def test_each_drain_writes_with_a_higher_version_than_the_one_before(engine: Engine) -> None:
    # The version orders the writes in OpenSearch: a later drain's must win over an earlier
    # one's, whatever order their requests land in.
    recorder = Recorder([])
    _store(engine, [sample_session_row("s-1")])
    assert outbox.drain(engine, recorder, on_rejected=_no_rejections) == 1
    with engine.begin() as conn:
        outbox.enqueue(conn, ["s-1"])  # the session changed again
    assert outbox.drain(engine, recorder, on_rejected=_no_rejections) == 1
    first, second = recorder.versions
    assert 0 < first < second


def test_drain_versions_keep_growing_when_the_clock_is_behind_the_last_one(
    engine: Engine,
) -> None:
    # As after the database server's clock stepped back: the last version written is an hour
    # ahead of the clock. The next drain's must still be higher, or OpenSearch would ignore it.
    ahead = (time.time_ns() // 1000) + 3_600 * 1_000_000
    with engine.begin() as conn:
        conn.execute(text("UPDATE search_sync_state SET version = :v"), {"v": ahead})
    recorder = Recorder([])
    _store(engine, [sample_session_row("s-1")])
    assert outbox.drain(engine, recorder, on_rejected=_no_rejections) == 1
    assert recorder.versions == [ahead + 1]


def test_one_drainer_at_a_time(engine: Engine) -> None:
    _store(engine, [sample_session_row("s-1")])
    nested: list[int] = []
    inner = Recorder([])

    def upsert(
        documents: Mapping[str, outbox.Document], deleted: Sequence[str], *, version: int
    ) -> list[Any]:
        # Another drainer starts while this one writes: it finds the drain taken and leaves.
        nested.append(outbox.drain(engine, inner, on_rejected=_no_rejections))
        return []

    assert outbox.drain(engine, upsert, on_rejected=_no_rejections) == 1
    assert nested == [0]
    assert inner.calls == []
    assert _queued(engine) == {}


def test_a_waiting_drain_drains_what_a_busy_drainer_left(engine: Engine) -> None:
    _store(engine, [sample_session_row("s-1")])
    outer = Recorder([])
    inner = Recorder([])
    nested: list[int] = []

    def upsert(
        documents: Mapping[str, outbox.Document], deleted: Sequence[str], *, version: int
    ) -> list[Any]:
        outer(documents, deleted, version=version)
        # While this drainer writes its (last) batch, another process commits a session ...
        _store(engine, [sample_session_row("s-2")])
        # ... and, about to exit, drains with wait: it must not give up on the busy lock.
        worker = threading.Thread(
            target=lambda: nested.append(
                outbox.drain(engine, inner, on_rejected=_no_rejections, wait=True)
            )
        )
        worker.start()
        worker.join(1.0)
        assert worker.is_alive(), "the waiting drain returned while the lock was held"
        waiting.append(worker)
        return []

    waiting: list[threading.Thread] = []
    assert outbox.drain(engine, upsert, on_rejected=_no_rejections) == 1
    waiting[0].join(20)
    assert nested == [1]
    assert [sorted(documents) for documents, _ in outer.calls] == [["s-1"]]
    assert [sorted(documents) for documents, _ in inner.calls] == [["s-2"]]
    assert _queued(engine) == {}


def test_rejected_documents_reach_on_rejected_and_leave_the_queue(engine: Engine) -> None:
    _store(engine, [sample_session_row("s-ok"), sample_session_row("s-bad")])
    seen: list[tuple[list[str], dict[str, outbox.Document]]] = []
    outbox.drain(
        engine,
        Recorder([], reject=frozenset({"s-bad"})),
        on_rejected=lambda rejected, documents: seen.append(
            ([r.doc_id for r in rejected], dict(documents))
        ),
    )
    ((ids, documents),) = seen
    assert ids == ["s-bad"]
    assert documents["s-bad"] == dumps(session_document(sample_session_row("s-bad"))[1])
    assert _queued(engine) == {}

"""SQL sink: events, ``traffic_minute`` and sessions, written in one transaction per batch.

Exactly-once effect under redelivery comes from three rules applied inside one transaction:

* ``events`` insert with ``ON CONFLICT DO NOTHING ... RETURNING``: only the first stored copy of
  an ``event_id`` counts, and the statement tells which events are new;
* ``traffic_minute`` adds the measures of the *new* events only, so its totals always equal the
  same aggregates over ``events``;
* ``sessions`` rows are recomputed from events (never blindly incremented) for the runs of
  activity that the new events touch (see :mod:`clickstream.sessions`); rows of superseded
  sessions are deleted.

The caller commits the transaction, and only then commits Kafka offsets. On PostgreSQL each
batch takes transaction-scoped advisory locks on its visitors, so two consumers never
re-sessionize the same visitor at once, even when a producer did not key by ``user_id``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

import psycopg
from sqlalchemy import Connection, Table, delete, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from clickstream.db.models import events_table, sessions_table, traffic_minute_table
from clickstream.events import ClickEvent, DeviceType, EventType, PageType
from clickstream.sessions import Session, SessionEvent, build_sessions, extend_session

__all__ = [
    "BatchOutcome",
    "PositionedEvent",
    "SessionChanges",
    "SessionRules",
    "session_row",
    "write_batch",
]

_log = logging.getLogger(__name__)

_SESSION_COLUMNS: Final = Session._fields
_SESSION_COPY_COLUMNS: Final = (*_SESSION_COLUMNS, "duration_seconds", "converted", "bounced")
"""The ``sessions`` columns a writer sets (all but ``updated_at``), in COPY order."""
_EVENT_SESSION_COLUMNS: Final = SessionEvent._fields
_TEXT: Final[dict[StrEnum, str]] = {
    member: member.value for kind in (EventType, PageType, DeviceType) for member in kind
}
"""Plain text of the vocabularies' members: a dict lookup is cheaper than ``Enum.value``."""
_IN_CHUNK: Final = 5000  # bound the number of bind parameters of one IN (...)


@dataclass(frozen=True, slots=True)
class SessionRules:
    """The session definition's two parameters."""

    gap: timedelta = timedelta(minutes=30)
    max_length: timedelta = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class PositionedEvent:
    """A valid event and where it was read from."""

    event: ClickEvent
    partition: int
    offset: int


@dataclass(slots=True)
class SessionChanges:
    """Session rows written (inserted or replaced) and ids of rows deleted by one batch."""

    upserted: list[Session] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


@dataclass(slots=True)
class BatchOutcome:
    """What one batch changed."""

    new_events: list[ClickEvent] = field(default_factory=list)
    duplicates: int = 0
    sessions: SessionChanges = field(default_factory=SessionChanges)
    slow_path_users: int = 0

    def add(self, other: BatchOutcome) -> None:
        """Accumulate another outcome into this one."""
        self.new_events.extend(other.new_events)
        self.duplicates += other.duplicates
        self.sessions.upserted.extend(other.sessions.upserted)
        self.sessions.deleted.extend(other.sessions.deleted)
        self.slow_path_users += other.slow_path_users


def write_batch(
    conn: Connection, *, events: Sequence[PositionedEvent], rules: SessionRules
) -> BatchOutcome:
    """Store a batch of valid events inside the caller's open transaction.

    Idempotent: writing the same events again (redelivery) changes nothing. Within the batch,
    the first copy of an ``event_id`` (in the given order) is the one stored.
    """
    distinct: dict[str, PositionedEvent] = {}
    for item in events:
        distinct.setdefault(item.event.event_id, item)
    if not distinct:
        return BatchOutcome(duplicates=len(events))
    if conn.dialect.name == "postgresql":
        _lock_users(conn, {item.event.user_id for item in distinct.values()})
    inserted_ids = _insert_events(conn, distinct.values())
    new_events = [distinct[event_id].event for event_id in inserted_ids]
    new_events.sort(key=lambda event: (event.occurred_at, event.event_id))
    changes, slow = _resessionize(conn, new_events, rules)
    # Last: traffic_minute rows are shared by every visitor of a minute, and their row locks
    # are held until commit. Taken at the end, concurrent consumers wait for each other least.
    _add_traffic(conn, new_events)
    return BatchOutcome(new_events, len(events) - len(new_events), changes, slow)


def _lock_users(conn: Connection, users: Iterable[str]) -> None:
    keys = sorted(
        int.from_bytes(hashlib.blake2b(user.encode(), digest_size=8).digest(), "big", signed=True)
        for user in users
    )
    # Sorted keys: two batches that share visitors lock them in the same order (no deadlock).
    conn.execute(
        text(
            "SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k ORDER BY k"
        ),
        {"keys": keys},
    )


def _insert_dialect(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


_EVENT_COPY_COLUMNS: Final = (
    "event_id",
    "event_type",
    "occurred_at",
    "user_id",
    "session_id",
    "page_url",
    "page_type",
    "referrer_url",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "device_type",
    "os",
    "browser",
    "country",
    "city",
    "latitude",
    "longitude",
    "product_id",
    "search_query",
    "order_id",
    "revenue",
    "currency",
    "kafka_partition",
    "kafka_offset",
)


def _event_values(item: PositionedEvent) -> tuple[Any, ...]:
    """The ``events`` row of ``item`` in :data:`_EVENT_COPY_COLUMNS` order (the COPY hot path)."""
    e = item.event
    return (
        e.event_id,
        _TEXT[e.event_type],
        e.occurred_at,
        e.user_id,
        e.session_id,
        e.page_url,
        _TEXT[e.page_type],
        e.referrer_url,
        e.utm_source,
        e.utm_medium,
        e.utm_campaign,
        _TEXT[e.device_type],
        e.os,
        e.browser,
        e.country,
        e.city,
        e.latitude,
        e.longitude,
        e.product_id,
        e.search_query,
        e.order_id,
        e.revenue,
        e.currency,
        item.partition,
        item.offset,
    )


def _event_row(item: PositionedEvent) -> dict[str, Any]:
    """The ``events`` row of ``item`` as a mapping (statements that bind by column name)."""
    return dict(zip(_EVENT_COPY_COLUMNS, _event_values(item), strict=True))


def _copy_insert(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    suffix: str,
) -> list[Any]:
    """PostgreSQL: COPY the rows into a temporary twin of ``table``, then one INSERT ... SELECT.

    ``rows`` hold the values of ``columns``, in that order. COPY is the fastest way into
    PostgreSQL; the INSERT adds what COPY cannot (``ON CONFLICT``, ``RETURNING``). The twin is
    emptied at commit. Returns the rows of ``RETURNING``, if any.
    """
    quote = conn.dialect.identifier_preparer.quote
    names = ", ".join(quote(c) for c in columns)
    twin = quote(f"incoming_{table.name}")
    insert = f"INSERT INTO {quote(table.name)} ({names}) SELECT {names} FROM {twin} {suffix}"
    with _driver_errors(conn, insert) as driver, driver.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {twin} "
            f"(LIKE {quote(table.name)} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cursor.copy(f"COPY {twin} ({names}) FROM STDIN") as copy:
            write_row = copy.write_row
            for row in rows:
                write_row(row)
        cursor.execute(insert)
        return cursor.fetchall() if cursor.description else []


@contextmanager
def _driver_errors(conn: Connection, statement: str) -> Iterator[psycopg.Connection[Any]]:
    """PostgreSQL: the psycopg connection under ``conn``, for the hot paths that skip SQLAlchemy.

    Errors leave as the same SQLAlchemy exception classes (``OperationalError``,
    ``DataError``, ...) that every other statement raises.
    """
    driver = conn.connection.driver_connection
    if driver is None:  # pragma: no cover - a live connection always has one
        msg = "no DB-API connection"
        raise RuntimeError(msg)
    try:
        yield driver
    except psycopg.Error as exc:
        raise DBAPIError.instance(
            statement, None, exc, psycopg.Error, dialect=conn.dialect
        ) from exc


def _insert_events(conn: Connection, items: Iterable[PositionedEvent]) -> list[str]:
    if conn.dialect.name == "postgresql":
        returned = _copy_insert(
            conn,
            events_table,
            _EVENT_COPY_COLUMNS,
            [_event_values(item) for item in items],
            "ON CONFLICT (event_id) DO NOTHING RETURNING CAST(event_id AS text)",
        )
        return [str(row[0]) for row in returned]
    rows = [_event_row(item) for item in items]
    insert = _insert_dialect(conn)
    statement = (
        insert(events_table)
        .on_conflict_do_nothing(index_elements=[events_table.c.event_id])
        .returning(events_table.c.event_id)
    )
    result = conn.execute(statement, rows)
    return [str(event_id).lower() for event_id in result.scalars()]


def _add_traffic(conn: Connection, new_events: Sequence[ClickEvent]) -> None:
    buckets: dict[tuple[datetime, str, str], list[Any]] = {}
    for event in new_events:
        minute = event.occurred_at.replace(second=0, microsecond=0)
        key = (minute, _TEXT[event.device_type], event.country or "")
        bucket = buckets.setdefault(key, [0, 0, 0, 0, Decimal("0.00")])
        bucket[0] += 1
        if event.event_type is EventType.PAGE_VIEW:
            bucket[1] += 1
        elif event.event_type is EventType.ADD_TO_CART:
            bucket[2] += 1
        elif event.event_type is EventType.PURCHASE:
            bucket[3] += 1
            bucket[4] += event.revenue or Decimal("0.00")
    if not buckets:
        return
    rows = [
        {
            "minute": minute,
            "device_type": device,
            "country": country,
            "events": counts[0],
            "page_views": counts[1],
            "add_to_carts": counts[2],
            "purchases": counts[3],
            "revenue": counts[4],
        }
        # Sorted: concurrent batches update shared rows in the same order (no deadlock).
        for (minute, device, country), counts in sorted(buckets.items())
    ]
    table = traffic_minute_table
    measures = ("events", "page_views", "add_to_carts", "purchases", "revenue")
    if conn.dialect.name == "postgresql":
        added = ", ".join(f"{m} = traffic_minute.{m} + excluded.{m}" for m in measures)
        _copy_insert(
            conn,
            table,
            list(rows[0]),
            [tuple(row.values()) for row in rows],
            f"ON CONFLICT (minute, device_type, country) DO UPDATE SET {added}",
        )
        return
    insert = _insert_dialect(conn)(table)
    statement = insert.on_conflict_do_update(
        index_elements=[table.c.minute, table.c.device_type, table.c.country],
        set_={name: table.c[name] + insert.excluded[name] for name in measures},
    )
    conn.execute(statement, rows)


def _session_event(event: ClickEvent) -> SessionEvent:
    return SessionEvent(  # positional, in field order: the cheapest way to build it
        event.event_id,
        event.occurred_at,
        _TEXT[event.event_type],
        event.page_url,
        _TEXT[event.page_type],
        event.referrer_url,
        event.utm_source,
        _TEXT[event.device_type],
        event.os,
        event.browser,
        event.country,
        event.city,
        event.revenue,
    )


def session_row(session: Session) -> dict[str, Any]:
    """The ``sessions`` table row of a session (every column but ``updated_at``)."""
    return dict(zip(_SESSION_COPY_COLUMNS, _session_values(session), strict=True))


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start : start + _IN_CHUNK]


Windows = Mapping[str, tuple[datetime, datetime]]
"""Per visitor, an inclusive time window ``(low, high)``."""


def _window_rows(windows: Windows) -> dict[str, str]:
    # One JSON document instead of three arrays: the driver dumps long Python lists element
    # by element, while json.dumps is one C call and PostgreSQL parses JSON quickly.
    rows = [
        {"user_id": user, "low": low.isoformat(), "high": high.isoformat()}
        for user, (low, high) in windows.items()
    ]
    return {"windows": json.dumps(rows)}


_WINDOWS_SQL: Final = (
    "json_to_recordset(CAST(%(windows)s AS json))"
    " AS w(user_id text, low timestamptz, high timestamptz)"
)
# One index probe per visitor, (user_id, started_at) then the filter: LATERAL keeps that plan
# even when the planner's statistics are stale (a young table), where it would otherwise
# hash-join against a scan of the whole table.
_SESSIONS_NEAR_SQL: Final = (
    f"SELECT {', '.join(f's.{name}' for name in _SESSION_COLUMNS)} FROM {_WINDOWS_SQL}"
    " CROSS JOIN LATERAL (SELECT * FROM sessions AS s WHERE s.user_id = w.user_id"
    " AND s.started_at <= w.high AND s.ended_at >= w.low) AS s"
)
_EVENTS_IN_SQL: Final = (
    "SELECT e.user_id, "
    + ", ".join(
        "CAST(e.event_id AS text)" if name == "event_id" else f"e.{name}"
        for name in _EVENT_SESSION_COLUMNS
    )
    + f" FROM {_WINDOWS_SQL} CROSS JOIN LATERAL (SELECT * FROM events AS e"
    " WHERE e.user_id = w.user_id AND e.occurred_at BETWEEN w.low AND w.high) AS e"
)


def _sessions_near(conn: Connection, windows: Windows) -> dict[str, list[Session]]:
    """Per visitor, the stored sessions overlapping that visitor's window."""
    found: dict[str, list[Session]] = defaultdict(list)
    if conn.dialect.name == "postgresql":
        with _driver_errors(conn, _SESSIONS_NEAR_SQL) as driver, driver.cursor() as cursor:
            cursor.execute(_SESSIONS_NEAR_SQL, _window_rows(windows))
            make = Session._make
            for row in cursor:
                found[row[1]].append(make(row))
        return found
    table = sessions_table
    low = min(lo for lo, _ in windows.values())
    high = max(hi for _, hi in windows.values())
    for chunk in _chunks(sorted(windows)):
        statement = select(*(table.c[name] for name in _SESSION_COLUMNS)).where(
            table.c.user_id.in_(chunk), table.c.ended_at >= low, table.c.started_at <= high
        )
        for row in conn.execute(statement):
            session = Session(*row)
            lo, hi = windows[session.user_id]
            if session.ended_at >= lo and session.started_at <= hi:
                found[session.user_id].append(session)
    return found


def _events_in(conn: Connection, windows: Windows) -> dict[str, list[SessionEvent]]:
    """Per visitor, the stored events inside that visitor's window."""
    found: dict[str, list[SessionEvent]] = defaultdict(list)
    if conn.dialect.name == "postgresql":
        with _driver_errors(conn, _EVENTS_IN_SQL) as driver, driver.cursor() as cursor:
            cursor.execute(_EVENTS_IN_SQL, _window_rows(windows))
            for row in cursor:
                found[row[0]].append(SessionEvent._make(row[1:]))
        return found
    table = events_table
    low = min(lo for lo, _ in windows.values())
    high = max(hi for _, hi in windows.values())
    selected = [table.c.user_id, *(table.c[name] for name in _EVENT_SESSION_COLUMNS)]
    for chunk in _chunks(sorted(windows)):
        statement = select(*selected).where(
            table.c.user_id.in_(chunk), table.c.occurred_at.between(low, high)
        )
        for row in conn.execute(statement):
            lo, hi = windows[row[0]]
            if lo <= row[2] <= hi:
                event = SessionEvent(*row[1:])
                found[row[0]].append(event)
    return found


def _overlapping(sessions: Iterable[Session], low: datetime, high: datetime) -> list[Session]:
    return [s for s in sessions if s.ended_at >= low and s.started_at <= high]


def _resessionize(
    conn: Connection, new_events: Sequence[ClickEvent], rules: SessionRules
) -> tuple[SessionChanges, int]:
    changes = SessionChanges()
    if not new_events:
        return changes, 0
    by_user: dict[str, list[SessionEvent]] = defaultdict(list)
    for event in new_events:  # already in contract order
        by_user[event.user_id].append(_session_event(event))
    gap = rules.gap
    nearby = _sessions_near(
        conn,
        {
            user: (fresh[0].occurred_at - gap, fresh[-1].occurred_at + gap)
            for user, fresh in by_user.items()
        },
    )

    slow: dict[str, tuple[datetime, datetime]] = {}
    for user, fresh in by_user.items():
        first, last = fresh[0].occurred_at, fresh[-1].occurred_at
        touched = _overlapping(nearby.get(user, ()), first - gap, last + gap)
        if not touched:
            changes.upserted.extend(
                build_sessions(user, fresh, gap=gap, max_length=rules.max_length)
            )
            continue
        if len(touched) == 1 and first > touched[0].ended_at:
            extended = extend_session(touched[0], fresh, gap=gap, max_length=rules.max_length)
            if extended is not None:
                changes.upserted.extend(extended)
                continue
        # A late, tied or converting event: recompute the whole runs it touches.
        slow[user] = (
            min(first, *(s.started_at for s in touched)),
            max(last, *(s.ended_at for s in touched)),
        )
    if slow:
        _recompute(conn, slow, rules, changes)
    _write_sessions(conn, changes)
    return changes, len(slow)


def _recompute(
    conn: Connection,
    windows: dict[str, tuple[datetime, datetime]],
    rules: SessionRules,
    changes: SessionChanges,
) -> None:
    gap = rules.gap
    old: dict[str, list[Session]] = {}
    pending = dict(windows)
    # Grow each window until no stored session lies within `gap` of it: then the window holds
    # whole runs of activity, whose sessions depend on nothing outside it.
    while pending:
        nearby = _sessions_near(
            conn, {user: (lo - gap, hi + gap) for user, (lo, hi) in pending.items()}
        )
        grown: dict[str, tuple[datetime, datetime]] = {}
        for user, (lo, hi) in pending.items():
            touched = _overlapping(nearby.get(user, ()), lo - gap, hi + gap)
            old[user] = touched
            new_lo = min(lo, *(s.started_at for s in touched)) if touched else lo
            new_hi = max(hi, *(s.ended_at for s in touched)) if touched else hi
            if (new_lo, new_hi) != (lo, hi):
                grown[user] = (new_lo, new_hi)
            windows[user] = (new_lo, new_hi)
        pending = grown
    stored = _events_in(conn, windows)
    for user in windows:
        events = stored.get(user, [])
        fresh = build_sessions(user, events, gap=gap, max_length=rules.max_length)
        fresh_ids = {s.session_id for s in fresh}
        previous = {s.session_id: s for s in old.get(user, ())}
        changes.deleted.extend(sid for sid in previous if sid not in fresh_ids)
        changes.upserted.extend(s for s in fresh if previous.get(s.session_id) != s)


def _session_values(s: Session) -> tuple[Any, ...]:
    """The ``sessions`` row of ``s`` in :data:`_SESSION_COPY_COLUMNS` order (the COPY hot path)."""
    # A Session's fields are the first columns, in order (a unit test pins it).
    return (*s, s.duration_seconds, s.converted, s.bounced)


def _write_sessions(conn: Connection, changes: SessionChanges) -> None:
    table = sessions_table
    for chunk in _chunks(sorted(changes.deleted)):
        conn.execute(delete(table).where(table.c.session_id.in_(chunk)))
    if not changes.upserted:
        return
    replaced = [c.name for c in table.columns if c.name not in ("session_id", "updated_at")]
    if conn.dialect.name == "postgresql":
        assignments = ", ".join(f"{name} = excluded.{name}" for name in replaced)
        # Sorted by id: concurrent batches lock shared rows in the same order (no deadlock).
        ordered = sorted(changes.upserted, key=lambda s: s.session_id)
        _copy_insert(
            conn,
            table,
            _SESSION_COPY_COLUMNS,
            [_session_values(s) for s in ordered],
            f"ON CONFLICT (session_id) DO UPDATE SET {assignments}, updated_at = now()",
        )
        return
    rows = sorted((session_row(s) for s in changes.upserted), key=lambda r: r["session_id"])
    insert = _insert_dialect(conn)(table)
    statement = insert.on_conflict_do_update(
        index_elements=[table.c.session_id],
        set_={
            **{name: insert.excluded[name] for name in replaced},
            "updated_at": func.now(),
        },
    )
    conn.execute(statement, rows)

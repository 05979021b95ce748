"""Transactional outbox for session documents in OpenSearch.

Session rows change (and disappear) inside the consumer's SQL transaction; their OpenSearch
documents must follow exactly, even when OpenSearch is down, the process dies, or a retried
batch is not the same as the failed one. So the batch's transaction also *enqueues* the ids of
every session it wrote or deleted, and after the commit :func:`drain` makes each queued id's
document equal to the ``sessions`` row — indexed when the row exists, deleted when it does not —
and removes the id from the queue. What OpenSearch shows is always derived from committed SQL
state; a document of a transaction that rolled back can never linger.

Draining is idempotent and safe with several consumers. Each queued row carries a ``version``
that every re-enqueue increments, and a drain removes a row only at the version it read, so an
id re-enqueued meanwhile stays queued and its newer state is synchronised by the next drain.
Drainers exclude each other, and each drain writes with a version that OpenSearch compares
with the one it holds (higher than every earlier drain's: the greater of the database clock's
microseconds and the last version plus one, kept in ``search_sync_state``), so an older state
can never overwrite a newer one in OpenSearch, not even a write that lands late (a request the
client gave up on and OpenSearch executed later):

* on PostgreSQL, one drain transaction at a time holds a transaction-scoped advisory lock (the
  two-key space, apart from the store's per-visitor locks); a drain that does not get it returns
  at once, since another drainer is at work. The drainer does not lock queued rows while it
  writes to OpenSearch, so a consumer's batch that re-enqueues a session never waits for it;
  the removal skips rows such a batch has locked (they are about to get a new version anyway).
* on other databases (SQLite, for tests) drainers do not exclude each other: run one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final, Protocol

from sqlalchemy import Connection, Engine, delete, select, text, tuple_
from sqlalchemy.dialects import sqlite

from clickstream.db.models import search_outbox_table, sessions_table
from clickstream.search.documents import session_json_sql

__all__ = ["Document", "drain", "enqueue", "pending"]

_DRAIN_BATCH: Final = 2000


class UpsertDocuments(Protocol):
    """Writes session documents and deletes others, as of ``version`` (see :func:`drain`)."""

    def __call__(
        self, documents: Mapping[str, Document], deleted: Sequence[str], /, *, version: int
    ) -> Sequence[Any]: ...


def _clock_us() -> int:
    # Other databases (SQLite, for tests): one drainer, this process's clock.
    return time.time_ns() // 1000


Document = str | dict[str, Any]
"""A session's document as the drain hands it over: JSON text (PostgreSQL renders it) or the
``sessions`` row (other databases) for the sink to convert."""

# Ids travel as one JSON array parameter: encoded in C, where a text[] parameter of a few
# thousand ids costs psycopg a Python-level quoting pass per element.
_PG_ENQUEUE: Final = text(
    "INSERT INTO search_outbox (session_id)"
    " SELECT session_id FROM json_array_elements_text(CAST(:ids AS json))"
    " WITH ORDINALITY AS q(session_id, n) ORDER BY n"
    " ON CONFLICT (session_id) DO UPDATE"
    " SET version = search_outbox.version + 1, enqueued_at = excluded.enqueued_at"
)
_PG_DRAIN_LOCK: Final = text("SELECT pg_try_advisory_xact_lock(:space, :key)")
_DRAIN_LOCK_KEYS: Final = {"space": 0x636C6B73, "key": 0x6F757462}  # "clks", "outb"
_LOCK_POLL_S: Final = 0.1
_PG_DRAIN_VERSION: Final = text(
    "UPDATE search_sync_state SET version = GREATEST(version + 1,"
    " CAST(floor(extract(epoch FROM clock_timestamp()) * 1000000) AS bigint))"
    " WHERE id = 1 RETURNING version"
)
"""The drain's version, taken under the drain lock: above every earlier drain's, and at least
the database clock's microseconds (so it also stays above versions written before a restore
from an older backup)."""
_PG_DOCUMENTS: Final = text(
    f"SELECT s.session_id, {session_json_sql([c.name for c in sessions_table.columns], alias='s')}"
    " FROM sessions s"
    " WHERE s.session_id IN (SELECT json_array_elements_text(CAST(:ids AS json)))"
)
_PG_REMOVE: Final = text(
    "DELETE FROM search_outbox WHERE session_id IN ("
    " SELECT o.session_id FROM search_outbox o"
    " JOIN ROWS FROM (json_array_elements_text(CAST(:ids AS json)),"
    " json_array_elements_text(CAST(:versions AS json))) AS d(session_id, version)"
    " ON o.session_id = d.session_id AND o.version = d.version::bigint"
    " FOR UPDATE OF o SKIP LOCKED)"
)


def enqueue(conn: Connection, session_ids: Collection[str]) -> None:
    """Queue session ids for synchronisation, inside the caller's transaction."""
    if not session_ids:
        return
    # Sorted: concurrent transactions touch shared rows in the same order (no deadlock).
    ids = sorted(set(session_ids))
    if conn.dialect.name == "postgresql":
        conn.execute(_PG_ENQUEUE, {"ids": json.dumps(ids)})
        return
    table = search_outbox_table
    insert = sqlite.insert(table)
    statement = insert.on_conflict_do_update(
        index_elements=[table.c.session_id],
        set_={"version": table.c.version + 1, "enqueued_at": insert.excluded.enqueued_at},
    )
    conn.execute(statement, [{"session_id": sid} for sid in ids])


def pending(conn: Connection) -> int:
    """How many session ids wait for synchronisation."""
    return len(conn.execute(select(search_outbox_table.c.session_id)).all())


def drain(
    engine: Engine,
    upsert_documents: UpsertDocuments,
    *,
    on_rejected: Callable[[Sequence[Any], Mapping[str, Document]], None],
    batch_size: int = _DRAIN_BATCH,
    wait: bool = False,
) -> int:
    """Synchronise queued sessions with OpenSearch; returns how many ids were drained.

    When another drainer is at work, return at once; with ``wait``, wait for it and then drain
    what it left (ids queued after its last claim), so that everything committed before the
    call is synchronised on return.

    ``upsert_documents(documents, deleted_ids, version=...)`` writes the documents (by
    ``session_id``) to OpenSearch, deletes the others, with ``version`` as their external
    version (higher for every drain), and returns the rejections (objects with ``doc_id``,
    ``reason``, ``detail``); ``on_rejected`` receives them with the documents before their ids
    leave the queue (to dead-letter them). A document is the committed row's JSON text on
    PostgreSQL and the row itself elsewhere (see :data:`Document`).

    Raises:
        TransientError: from the sink; the ids stay queued for the next drain.
    """
    total = 0
    while True:
        with engine.begin() as conn:
            drained = _drain_batch(conn, upsert_documents, on_rejected, batch_size)
        if drained is None:  # another drainer is at work, and drains what is queued
            if not wait:
                return total
            time.sleep(_LOCK_POLL_S)  # poll: never leave a statement blocked on the lock
            continue
        total += drained
        if drained < batch_size:
            return total


def _drain_batch(
    conn: Connection,
    upsert_documents: UpsertDocuments,
    on_rejected: Callable[[Sequence[Any], Mapping[str, Document]], None],
    batch_size: int,
) -> int | None:
    """One drain transaction: claim, write, remove; ``None`` if another drainer holds the lock."""
    postgres = conn.dialect.name == "postgresql"
    if postgres and not conn.execute(_PG_DRAIN_LOCK, _DRAIN_LOCK_KEYS).scalar():
        return None
    version = int(conn.execute(_PG_DRAIN_VERSION).scalar_one()) if postgres else _clock_us()
    queued = _claim(conn, batch_size, lock_rows=not postgres)
    if not queued:
        return 0
    ids = [session_id for session_id, _ in queued]
    # A statement after the claim (read committed: a newer snapshot): each session
    # row is at least as new as the version claimed for it.
    documents = _pg_documents(conn, ids) if postgres else _rows(conn, ids)
    gone = [sid for sid in ids if sid not in documents]
    rejected = upsert_documents(documents, gone, version=version)
    if rejected:
        on_rejected(rejected, documents)
    _remove(conn, queued, postgres=postgres)
    return len(queued)


def _claim(conn: Connection, limit: int, *, lock_rows: bool) -> list[tuple[str, int]]:
    table = search_outbox_table
    statement = (
        select(table.c.session_id, table.c.version)
        .order_by(table.c.enqueued_at, table.c.session_id)
        .limit(limit)
    )
    if lock_rows:
        statement = statement.with_for_update(skip_locked=True)
    return [(row[0], int(row[1])) for row in conn.execute(statement).all()]


def _pg_documents(conn: Connection, ids: Sequence[str]) -> dict[str, Document]:
    rows = conn.execute(_PG_DOCUMENTS, {"ids": json.dumps(ids)}).all()
    return {row[0]: row[1] for row in rows}


def _rows(conn: Connection, ids: Sequence[str]) -> dict[str, Document]:
    statement = select(sessions_table).where(sessions_table.c.session_id.in_(ids))
    return {row["session_id"]: dict(row) for row in conn.execute(statement).mappings()}


def _remove(conn: Connection, queued: Sequence[tuple[str, int]], *, postgres: bool) -> None:
    # Only the versions this drain synchronised: an id re-enqueued meanwhile stays queued.
    # On PostgreSQL a row that a batch is re-enqueueing right now is locked by it: skipped,
    # not waited for, so a drain never waits for a batch (nor the other way round, but for
    # the moment between this statement and the commit). It gets a new version, or, if the
    # batch rolls back, is synchronised once more by the next drain.
    if postgres:
        ids = json.dumps([session_id for session_id, _ in queued])
        versions = json.dumps([version for _, version in queued])
        conn.execute(_PG_REMOVE, {"ids": ids, "versions": versions})
        return
    table = search_outbox_table
    conn.execute(delete(table).where(tuple_(table.c.session_id, table.c.version).in_(queued)))

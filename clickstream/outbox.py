"""Transactional outbox for session documents in OpenSearch.

Session rows change (and disappear) inside the consumer's SQL transaction; their OpenSearch
documents must follow exactly, even when OpenSearch is down, the process dies, or a retried
batch is not the same as the failed one. So the batch's transaction also *enqueues* the ids of
every session it wrote or deleted, and after the commit :func:`drain` makes each queued id's
document equal to the ``sessions`` row — indexed when the row exists, deleted when it does not —
and removes the id from the queue. What OpenSearch shows is always derived from committed SQL
state; a document of a transaction that rolled back can never linger.

Draining is idempotent and safe with several consumers: PostgreSQL hands each queued row to one
drainer at a time (``FOR UPDATE SKIP LOCKED``), and a row re-enqueued meanwhile keeps its place
(its ``version`` moved on), so the newer state is synchronised by the next drain.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Final

from sqlalchemy import Connection, Engine, delete, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from clickstream.db.models import search_outbox_table, sessions_table

__all__ = ["drain", "enqueue", "pending"]

_DRAIN_BATCH: Final = 2000


def enqueue(conn: Connection, session_ids: Collection[str]) -> None:
    """Queue session ids for synchronisation, inside the caller's transaction."""
    if not session_ids:
        return
    table = search_outbox_table
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)
    statement = insert.on_conflict_do_update(
        index_elements=[table.c.session_id],
        set_={"version": table.c.version + 1, "enqueued_at": insert.excluded.enqueued_at},
    )
    # Sorted: concurrent transactions touch shared rows in the same order (no deadlock).
    conn.execute(statement, [{"session_id": sid} for sid in sorted(set(session_ids))])


def pending(conn: Connection) -> int:
    """How many session ids wait for synchronisation."""
    return len(conn.execute(select(search_outbox_table.c.session_id)).all())


def drain(
    engine: Engine,
    upsert_sessions: Callable[[Sequence[dict[str, Any]], Sequence[str]], Sequence[Any]],
    *,
    row_to_document: Callable[[dict[str, Any]], dict[str, Any]],
    on_rejected: Callable[[Sequence[Any], dict[str, dict[str, Any]]], None],
    batch_size: int = _DRAIN_BATCH,
) -> int:
    """Synchronise queued sessions with OpenSearch; returns how many ids were drained.

    ``upsert_sessions(documents, deleted_ids)`` writes to OpenSearch and returns the
    rejections (objects with ``doc_id``, ``reason``, ``detail``); ``on_rejected`` receives
    them with the documents by id before their ids leave the queue (to dead-letter them).

    Raises:
        TransientError: from the sink; the ids stay queued for the next drain.
    """
    total = 0
    while True:
        with engine.begin() as conn:
            queued = _claim(conn, batch_size)
            if not queued:
                return total
            ids = [session_id for session_id, _ in queued]
            rows = {
                row["session_id"]: row
                for row in (
                    dict(r._mapping)
                    for r in conn.execute(
                        select(sessions_table).where(sessions_table.c.session_id.in_(ids))
                    )
                )
            }
            documents = {sid: row_to_document(row) for sid, row in rows.items()}
            gone = [sid for sid in ids if sid not in rows]
            rejected = upsert_sessions(list(documents.values()), gone)
            if rejected:
                on_rejected(rejected, documents)
            table = search_outbox_table
            conn.execute(
                delete(table).where(tuple_(table.c.session_id, table.c.version).in_(queued))
            )
            total += len(queued)
            if len(queued) < batch_size:
                return total


def _claim(conn: Connection, limit: int) -> list[tuple[str, int]]:
    table = search_outbox_table
    statement = (
        select(table.c.session_id, table.c.version)
        .order_by(table.c.enqueued_at, table.c.session_id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [(row[0], int(row[1])) for row in conn.execute(statement)]

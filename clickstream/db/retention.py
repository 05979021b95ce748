"""Retention: delete stored data older than a cutoff, in bounded batches.

``events`` grows without bound; this module deletes by time, on PostgreSQL and SQLite alike:

* ``events`` with ``occurred_at`` before the cutoff, together with the ``traffic_minute`` rows of
  the same minutes, batch by batch;
* ``traffic_minute`` rows before the cutoff that have no events left (normally none);
* ``sessions`` that *ended* before the cutoff.

Every batch is its own short transaction, so the purge never holds long locks, can be
interrupted at any point and simply run again. The cutoff is rounded down to a whole UTC
minute, and a batch always ends on a minute boundary and deletes a minute's events and its
``traffic_minute`` rows in the same transaction: at every moment the ``traffic_minute`` totals
still equal the same aggregates over ``events``. A batch deletes at most ``batch_size`` events,
except when a single minute holds more; that minute is then deleted as one batch.

Trade-offs of deleting history:

* Deduplication is by ``event_id`` against what is stored. A duplicate (a redelivery or a
  replayed topic) of an event older than the retention window is therefore stored again and
  counted again, as if it were new, and it re-creates a session from that single event.
  Keep the Kafka topic's retention shorter than the database's to rule this out.
* A session that started before the cutoff but ended after it keeps its row (its measures
  describe all of its events) while its oldest events are gone. Sessions are recomputed from the
  stored events only when a late event for that user and time arrives; such a recomputation sees
  the remaining events only.
"""

from __future__ import annotations

import argparse
import logging
import re
import sqlite3
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import Column, Connection, Engine, delete, func, select
from sqlalchemy.exc import DBAPIError, OperationalError

from clickstream.cli import INTERRUPTED, Stopped, WaitWatch, add_log_level, stop_on_signals
from clickstream.db import make_engine
from clickstream.db.models import events_table, sessions_table, traffic_minute_table
from clickstream.errors import ClickstreamError, TerminalError, TransientError
from clickstream.settings import SETTING_FLAGS, load_settings

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "PurgeCounts",
    "count_before",
    "floor_minute",
    "main",
    "parse_age",
    "purge_before",
    "purge_events_before",
]

logger = logging.getLogger("clickstream.db.retention")  # also when run as __main__

DEFAULT_BATCH_SIZE: Final = 10_000
_MINUTE: Final = timedelta(minutes=1)
_AGE_RE: Final = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_AGE_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True, slots=True)
class PurgeCounts:
    """How many rows a purge deleted (or, for a dry run, would delete), per table."""

    events: int = 0
    traffic_minute: int = 0
    sessions: int = 0

    @property
    def total(self) -> int:
        """Rows over all tables."""
        return self.events + self.traffic_minute + self.sessions


def floor_minute(moment: datetime) -> datetime:
    """The start of the UTC minute containing ``moment`` (an aware datetime)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        msg = f"naive datetime {moment.isoformat()}: pass a timezone-aware datetime"
        raise ValueError(msg)
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def _upper_bound(
    conn: Connection, column: Column[datetime], cutoff: datetime, batch_size: int
) -> datetime | None:
    """End (exclusive, on a minute boundary) of the next batch below ``cutoff``; None if done."""
    oldest = conn.execute(select(func.min(column)).where(column < cutoff)).scalar_one_or_none()
    if oldest is None:
        return None
    # The (batch_size + 1)-th oldest value: everything in earlier minutes fits in one batch.
    beyond = conn.execute(
        select(column).where(column < cutoff).order_by(column).offset(batch_size).limit(1)
    ).scalar_one_or_none()
    if beyond is None:
        return cutoff
    upper = floor_minute(beyond)
    # The oldest minute alone holds more than a batch: take that whole minute.
    return max(upper, floor_minute(oldest) + _MINUTE)


def _purge_events_batch(conn: Connection, cutoff: datetime, batch_size: int) -> PurgeCounts | None:
    events_at = events_table.c.occurred_at
    upper = _upper_bound(conn, events_at, cutoff, batch_size)
    if upper is None:
        return None
    events = conn.execute(delete(events_table).where(events_at < upper)).rowcount
    minutes = conn.execute(
        delete(traffic_minute_table).where(traffic_minute_table.c.minute < upper)
    ).rowcount
    logger.info(
        "deleted %d events and %d traffic_minute rows before %s",
        events,
        minutes,
        upper.isoformat(),
    )
    return PurgeCounts(events=events, traffic_minute=minutes)


def _purge_minutes_batch(conn: Connection, cutoff: datetime, batch_size: int) -> int | None:
    minute = traffic_minute_table.c.minute
    upper = _upper_bound(conn, minute, cutoff, batch_size)
    if upper is None:
        return None
    deleted = conn.execute(delete(traffic_minute_table).where(minute < upper)).rowcount
    logger.info(
        "deleted %d traffic_minute rows without events before %s", deleted, upper.isoformat()
    )
    return deleted


def _purge_sessions_batch(conn: Connection, cutoff: datetime, batch_size: int) -> int | None:
    sessions = sessions_table.c
    # ended_at >= started_at, so the started_at condition only lets its index narrow the scan.
    doomed = (
        select(sessions.session_id)
        .where(sessions.started_at < cutoff, sessions.ended_at < cutoff)
        .limit(batch_size)
    )
    deleted = conn.execute(
        delete(sessions_table).where(sessions.session_id.in_(doomed.scalar_subquery()))
    ).rowcount
    if deleted == 0:
        return None
    logger.info("deleted %d sessions that ended before %s", deleted, cutoff.isoformat())
    return deleted


def _is_transient(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError):
        return False
    # sqlite3 reports nearly everything (even "no such table") as OperationalError;
    # only a lock held by another writer is worth retrying there.
    if isinstance(exc.orig, sqlite3.Error):
        return "locked" in str(exc.orig) or "busy" in str(exc.orig)
    return True


def _checked_cutoff(cutoff: datetime, batch_size: int) -> datetime:
    if batch_size < 1:
        msg = f"batch_size must be at least 1, got {batch_size}"
        raise ValueError(msg)
    return floor_minute(cutoff)


def _waiting(watch: WaitWatch | None, what: str) -> AbstractContextManager[None]:
    if watch is None:
        return nullcontext()
    return watch.waiting(
        f"the database to answer ({what})",
        hint="Is another session holding a lock, or the server hung or cut off? Ctrl-C or "
        "SIGTERM stops safely: deleted batches stay deleted, the one in progress is rolled back",
    )


def purge_before(
    engine: Engine,
    *,
    cutoff: datetime,
    batch_size: int = DEFAULT_BATCH_SIZE,
    watch: WaitWatch | None = None,
) -> PurgeCounts:
    """Delete events, their traffic_minute rows and ended sessions older than ``cutoff``.

    ``cutoff`` (timezone-aware) is rounded down to a whole UTC minute; rows at or after it are
    kept. Each batch commits on its own (see the module documentation for the guarantees), so
    an interrupted purge leaves consistent data and can be re-run. Running it again with the
    same cutoff deletes nothing more. With ``watch``, a batch the database takes long to
    answer is reported while it waits.

    Raises:
        ValueError: ``cutoff`` is naive or ``batch_size`` is below 1.
        TransientError: the database is unreachable or a lock timed out; re-run later.
        TerminalError: the database rejected a statement (e.g. the schema is missing).
    """
    effective = _checked_cutoff(cutoff, batch_size)
    logger.info("purging data older than %s in batches of %d", effective.isoformat(), batch_size)
    events = minutes = sessions = 0
    try:
        while True:
            with _waiting(watch, "a batch of events"), engine.begin() as conn:
                batch = _purge_events_batch(conn, effective, batch_size)
            if batch is None:
                break
            events += batch.events
            minutes += batch.traffic_minute
        while True:
            with _waiting(watch, "a batch of traffic_minute rows"), engine.begin() as conn:
                orphans = _purge_minutes_batch(conn, effective, batch_size)
            if orphans is None:
                break
            minutes += orphans
        while True:
            with _waiting(watch, "a batch of sessions"), engine.begin() as conn:
                ended = _purge_sessions_batch(conn, effective, batch_size)
            if ended is None:
                break
            sessions += ended
    except DBAPIError as exc:
        if _is_transient(exc):
            msg = f"retention purge interrupted (deleted batches stay deleted): {exc}"
            raise TransientError(msg) from exc
        msg = f"retention purge failed: {exc}"
        raise TerminalError(msg) from exc
    counts = PurgeCounts(events=events, traffic_minute=minutes, sessions=sessions)
    logger.info(
        "purged %d events, %d traffic_minute rows and %d sessions older than %s",
        counts.events,
        counts.traffic_minute,
        counts.sessions,
        effective.isoformat(),
    )
    return counts


def purge_events_before(
    engine: Engine, *, cutoff: datetime, batch_size: int = DEFAULT_BATCH_SIZE
) -> int:
    """Apply retention like :func:`purge_before` and return the number of events deleted."""
    return purge_before(engine, cutoff=cutoff, batch_size=batch_size).events


def count_before(
    engine: Engine, *, cutoff: datetime, watch: WaitWatch | None = None
) -> PurgeCounts:
    """Count what :func:`purge_before` would delete for ``cutoff``, deleting nothing.

    With ``watch``, counts the database takes long to answer are reported while it waits.
    """
    effective = _checked_cutoff(cutoff, 1)
    sessions = sessions_table.c
    with _waiting(watch, "the counts of a dry run"), engine.connect() as conn:
        events = conn.execute(
            select(func.count()).where(events_table.c.occurred_at < effective)
        ).scalar_one()
        minutes = conn.execute(
            select(func.count()).where(traffic_minute_table.c.minute < effective)
        ).scalar_one()
        ended = conn.execute(
            select(func.count()).where(
                sessions.started_at < effective, sessions.ended_at < effective
            )
        ).scalar_one()
    return PurgeCounts(events=events, traffic_minute=minutes, sessions=ended)


def parse_age(text: str) -> timedelta:
    """Parse an age such as ``90d``, ``12h``, ``2w``, ``30m`` or ``45s`` (a positive whole number).

    Raises:
        ValueError: the text is not such an age, or it is zero.
    """
    match = _AGE_RE.match(text)
    if match is None:
        msg = f"expected an age like 90d, 12h, 2w, 30m or 45s, got {text!r}"
        raise ValueError(msg)
    amount, unit = int(match.group(1)), match.group(2)
    if amount == 0:
        msg = "the age must be greater than zero"
        raise ValueError(msg)
    return timedelta(**{_AGE_UNITS[unit]: amount})


def _age_argument(text: str) -> timedelta:
    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"expected a positive whole number, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clickstream.db.retention",
        description=(
            "Delete stored clickstream data older than an age: events, their per-minute\n"
            "traffic rows, and sessions that ended before the cutoff (now minus the age,\n"
            "rounded down to a whole UTC minute).\n\n"
            "Deletes in bounded batches, each committed on its own: safe to interrupt and\n"
            "re-run while the consumer is writing. Trade-off: a duplicate of an event older\n"
            "than the cutoff that arrives later is stored and counted again as new."
        ),
        epilog=(
            "examples:\n"
            "  python -m clickstream.db.retention --older-than 90d\n"
            "  python -m clickstream.db.retention --older-than 2w --dry-run\n"
            "  python -m clickstream.db.retention --older-than 36h --batch-size 5000 \\\n"
            "      --database-url postgresql+psycopg://user:pw@host:5432/clickstream\n\n"
            "The database comes from --database-url, else CLICKSTREAM_DATABASE_URL, else the "
            "Pulumi stack outputs (admin credentials).\n\n"
            "What deleting history costs:\n"
            "  - an event older than the cutoff that arrives again later (a redelivery, a\n"
            "    replayed topic) is stored and counted as new: keep the Kafka topic's\n"
            "    retention shorter than this age;\n"
            "  - a session that started before the cutoff and ended after it keeps its row\n"
            "    while its oldest events are deleted; a late event for it makes the consumer\n"
            "    rebuild it from the events that remain.\n\n"
            "Exit status: 0 done, 1 the purge failed (batches already deleted stay deleted: run\n"
            "it again), 2 bad arguments, 130 stopped by SIGINT/SIGTERM (the same: run it again).\n"
            "While the database does not answer a batch (a lock held elsewhere, a hung server),\n"
            "a line says so every half minute."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--older-than",
        required=True,
        type=_age_argument,
        metavar="AGE",
        help="delete data older than this: a whole number with s, m, h, d or w (e.g. 90d)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"at most this many events per transaction (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        metavar="URL",
        help="SQLAlchemy URL of the database (default: from the settings)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="only count what would be deleted",
    )
    add_log_level(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m clickstream.db.retention``; returns the exit status."""
    args = _parser().parse_args(argv)
    # Progress is this command's output: plain lines on stdout (--log-level WARNING: quiet).
    logging.basicConfig(level=args.log_level, format="%(message)s", stream=sys.stdout)
    cutoff = datetime.now(UTC) - args.older_than
    watch = WaitWatch(logger)
    try:
        with stop_on_signals():
            return _main(args, cutoff=cutoff, watch=watch)
    except Stopped as exc:
        logger.error(
            "retention %s: batches already deleted stay deleted, the one in progress is rolled "
            "back; run it again to finish",
            exc,
        )
        return INTERRUPTED
    finally:
        watch.close()


def _main(args: argparse.Namespace, *, cutoff: datetime, watch: WaitWatch) -> int:
    try:
        settings = load_settings(
            role="admin",
            overrides={"database_url": args.database_url},
            uses=frozenset({"database_url"}),
            command="clickstream.db.retention",
            flags=SETTING_FLAGS,
        )
        engine = make_engine(settings.database_url.get_secret_value(), must_exist=True)
        try:
            if args.dry_run:
                counts = count_before(engine, cutoff=cutoff, watch=watch)
                logger.info(
                    "dry run: would delete %d events, %d traffic_minute rows and %d sessions "
                    "older than %s",
                    counts.events,
                    counts.traffic_minute,
                    counts.sessions,
                    floor_minute(cutoff).isoformat(),
                )
            else:
                counts = purge_before(
                    engine, cutoff=cutoff, batch_size=args.batch_size, watch=watch
                )
                logger.info("total: %d rows deleted", counts.total)
        finally:
            engine.dispose()
    except (ClickstreamError, DBAPIError) as exc:
        logger.error("retention failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

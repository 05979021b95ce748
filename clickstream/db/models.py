"""The storage schema: tables ``events``, ``sessions`` and ``traffic_minute``.

Table and column names are the data contract (see the domain documentation) and must not be
renamed. The schema is portable: the same models and the same Alembic migrations run on
PostgreSQL (production) and SQLite (the embedded default).

Portability choices:

* Every timestamp is a :class:`UtcDateTime`: ``timestamptz`` on PostgreSQL. Values are written in
  UTC, naive datetimes are refused, and reads always return aware UTC datetimes (SQLite has no
  time zone type, so without this it would return naive values).
* ``events.event_id`` is a :class:`~sqlalchemy.Uuid` handled as canonical (lower-case) text in
  Python: native ``uuid`` on PostgreSQL, ``CHAR(32)`` on SQLite.
* Closed vocabularies (``event_type``, ``page_type``, ``device_type``) are short strings guarded by
  named CHECK constraints rather than database enum types, so adding a value needs no type
  migration and works the same on both databases.
* ``sessions.duration_seconds`` is a double: ``occurred_at`` has microsecond precision, so a
  duration may be fractional. The exact value is always ``ended_at - started_at``.
* Money is ``NUMERIC``. SQLite stores it as a floating point number; SQLAlchemy rounds it back to
  two decimals on read. Use PostgreSQL when exact sums over many rows matter.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    Uuid,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from clickstream.events import DeviceType, EventType, PageType

__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "EventRow",
    "SearchOutboxRow",
    "SearchSyncStateRow",
    "SessionRow",
    "TrafficMinuteRow",
    "UtcDateTime",
    "events_table",
    "search_outbox_table",
    "search_sync_state_table",
    "sessions_table",
    "traffic_minute_table",
]

NAMING_CONVENTION: Final[dict[str, str]] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Deterministic constraint and index names, so migrations can address them on every database."""


class UtcDateTime(TypeDecorator[datetime]):
    """``timestamptz`` that accepts only aware datetimes and always returns aware UTC ones."""

    impl = DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC; refuse naive datetimes, whose meaning would depend on the server."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            msg = f"naive datetime {value.isoformat()} refused: pass a timezone-aware datetime"
            raise ValueError(msg)
        utc = value.astimezone(UTC)
        # SQLite stores text without an offset: store UTC wall time, read it back as UTC.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Return an aware datetime in UTC."""
        if value is None:
            return None
        if not isinstance(value, datetime):  # pragma: no cover - drivers return datetimes
            msg = f"expected a datetime from the database, got {type(value).__name__}"
            raise TypeError(msg)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _one_of(column: str, values: type[EventType] | type[PageType] | type[DeviceType]) -> str:
    listed = ", ".join(f"'{value.value}'" for value in values)
    return f"{column} IN ({listed})"


class Base(DeclarativeBase):
    """Declarative base; its ``metadata`` is what Alembic compares the migrations with."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class EventRow(Base):
    """One distinct valid event (table ``events``): the first stored copy of an id wins."""

    __tablename__ = "events"

    event_id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(16))
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime())
    user_id: Mapped[str] = mapped_column(String(128))
    session_id: Mapped[str | None] = mapped_column(Text, comment="The tracker's own session id.")
    page_url: Mapped[str] = mapped_column(String(2048))
    page_type: Mapped[str] = mapped_column(String(16))
    referrer_url: Mapped[str | None] = mapped_column(Text)
    utm_source: Mapped[str | None] = mapped_column(Text)
    utm_medium: Mapped[str | None] = mapped_column(Text)
    utm_campaign: Mapped[str | None] = mapped_column(Text)
    device_type: Mapped[str] = mapped_column(String(8))
    os: Mapped[str | None] = mapped_column(Text)
    browser: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(String(2))
    city: Mapped[str | None] = mapped_column(Text)
    latitude: Mapped[float | None] = mapped_column(Double)
    longitude: Mapped[float | None] = mapped_column(Double)
    product_id: Mapped[str | None] = mapped_column(Text)
    search_query: Mapped[str | None] = mapped_column(Text)
    order_id: Mapped[str | None] = mapped_column(Text)
    revenue: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    currency: Mapped[str | None] = mapped_column(String(3))
    ingested_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    kafka_partition: Mapped[int | None] = mapped_column(
        Integer, comment="Kafka partition of the first stored copy (for tracing)."
    )
    kafka_offset: Mapped[int | None] = mapped_column(
        BigInteger, comment="Kafka offset of the first stored copy (for tracing)."
    )

    __table_args__ = (
        CheckConstraint(_one_of("event_type", EventType), name="event_type"),
        CheckConstraint(_one_of("page_type", PageType), name="page_type"),
        CheckConstraint(_one_of("device_type", DeviceType), name="device_type"),
        CheckConstraint("(latitude IS NULL) = (longitude IS NULL)", name="coordinates"),
        CheckConstraint("latitude BETWEEN -90 AND 90", name="latitude"),
        CheckConstraint("longitude BETWEEN -180 AND 180", name="longitude"),
        CheckConstraint("revenue >= 0", name="revenue"),
        CheckConstraint(
            "event_type <> 'purchase' OR "
            "(order_id IS NOT NULL AND revenue IS NOT NULL AND currency IS NOT NULL)",
            name="purchase",
        ),
        # A user's events in a time window: re-sessionizing and per-user reads.
        Index(None, "user_id", "occurred_at"),
        # Time ranges on the read side, and retention.
        Index(None, "occurred_at"),
    )


class SessionRow(Base):
    """One server-side session (table ``sessions``), a function of the set of its events.

    Rows are replaced as a whole when late events extend, merge or split sessions; writers
    set ``updated_at`` on every upsert (its server default only covers plain inserts).
    """

    __tablename__ = "sessions"

    session_id: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime] = mapped_column(UtcDateTime())
    duration_seconds: Mapped[float] = mapped_column(Double)
    event_count: Mapped[int] = mapped_column(Integer)
    page_views: Mapped[int] = mapped_column(Integer)
    purchases: Mapped[int] = mapped_column(Integer)
    revenue: Mapped[Decimal] = mapped_column(Numeric(18, 2), server_default="0")
    converted: Mapped[bool]
    bounced: Mapped[bool]
    entry_page: Mapped[str] = mapped_column(String(2048))
    exit_page: Mapped[str] = mapped_column(String(2048))
    conversion_path: Mapped[str | None] = mapped_column(Text)
    traffic_source: Mapped[str] = mapped_column(Text)
    device_type: Mapped[str] = mapped_column(String(8))
    os: Mapped[str | None] = mapped_column(Text)
    browser: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(String(2))
    city: Mapped[str | None] = mapped_column(Text)
    funnel_step: Mapped[int] = mapped_column(
        SmallInteger,
        server_default="0",
        comment="Funnel steps reached in order (page view, product view, add to cart, "
        "checkout, purchase): 0..5.",
    )
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())

    __table_args__ = (
        CheckConstraint("ended_at >= started_at", name="ended_after_started"),
        CheckConstraint("duration_seconds >= 0", name="duration_seconds"),
        CheckConstraint("event_count >= 1", name="event_count"),
        CheckConstraint("page_views BETWEEN 0 AND event_count", name="page_views"),
        CheckConstraint("purchases BETWEEN 0 AND event_count", name="purchases"),
        CheckConstraint("revenue >= 0", name="revenue"),
        CheckConstraint("converted = (purchases > 0)", name="converted"),
        CheckConstraint("bounced = (event_count = 1)", name="bounced"),
        CheckConstraint("(conversion_path IS NOT NULL) = converted", name="conversion_path"),
        CheckConstraint(_one_of("device_type", DeviceType), name="device_type"),
        CheckConstraint("funnel_step BETWEEN 0 AND 5", name="funnel_step"),
        # Read side: sessions in a time range. Retention: ended_at < cutoff implies
        # started_at < cutoff, so this index also drives the purge.
        Index(None, "started_at"),
        # Consumer: a user's sessions around a window of (late) events.
        Index(None, "user_id", "started_at"),
    )


class TrafficMinuteRow(Base):
    """Additive per-minute measures (table ``traffic_minute``), by UTC minute of ``occurred_at``.

    ``country`` is ``''`` when unknown, so it can be part of the primary key. Totals equal the
    same aggregates over ``events``; ``revenue`` is that of ``purchase`` events only, as for
    sessions (revenue on another kind of event is stored with it but is not revenue earned).
    """

    __tablename__ = "traffic_minute"

    minute: Mapped[datetime] = mapped_column(UtcDateTime(), primary_key=True)
    device_type: Mapped[str] = mapped_column(String(8), primary_key=True)
    country: Mapped[str] = mapped_column(String(2), primary_key=True, server_default="")
    events: Mapped[int] = mapped_column(BigInteger, server_default="0")
    page_views: Mapped[int] = mapped_column(BigInteger, server_default="0")
    add_to_carts: Mapped[int] = mapped_column(BigInteger, server_default="0")
    purchases: Mapped[int] = mapped_column(BigInteger, server_default="0")
    revenue: Mapped[Decimal] = mapped_column(Numeric(20, 2), server_default="0")

    __table_args__ = (
        CheckConstraint(_one_of("device_type", DeviceType), name="device_type"),
        CheckConstraint("events >= 0", name="events"),
        CheckConstraint("page_views BETWEEN 0 AND events", name="page_views"),
        CheckConstraint("add_to_carts BETWEEN 0 AND events", name="add_to_carts"),
        CheckConstraint("purchases BETWEEN 0 AND events", name="purchases"),
        CheckConstraint("revenue >= 0", name="revenue"),
    )


class SearchOutboxRow(Base):
    """Sessions whose OpenSearch document must be brought in line with ``sessions``.

    Written in the same transaction as the session rows; drained after the commit (the id's
    row in ``sessions`` is indexed, or its document deleted when the row is gone). ``version``
    grows on every re-enqueue, so a drain only removes what it actually synchronised.
    """

    __tablename__ = "search_outbox"

    session_id: Mapped[str] = mapped_column(Text, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, server_default="1")
    enqueued_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class SearchSyncStateRow(Base):
    """One row: the highest version any outbox drain has written to OpenSearch.

    Each drain takes the next version from it, at least the database clock's microseconds, so
    versions only grow, even if that clock steps back (see :mod:`clickstream.outbox`).
    """

    __tablename__ = "search_sync_state"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, server_default="0")


def _table(model: type[Base]) -> Table:
    table = model.__table__
    if not isinstance(table, Table):  # pragma: no cover - declarative always builds a Table
        msg = f"{model.__name__} is not mapped to a Table"
        raise TypeError(msg)
    return table


events_table: Final = _table(EventRow)
"""Core ``Table`` of ``events``, for bulk statements (``insert(...).on_conflict_do_nothing()``)."""
sessions_table: Final = _table(SessionRow)
"""Core ``Table`` of ``sessions``."""
traffic_minute_table: Final = _table(TrafficMinuteRow)
"""Core ``Table`` of ``traffic_minute``."""
search_outbox_table: Final = _table(SearchOutboxRow)
search_sync_state_table: Final = _table(SearchSyncStateRow)
"""Core ``Table`` of ``search_outbox``."""

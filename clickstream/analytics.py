"""The read side: web-analytics figures from ``events``, ``sessions`` and ``traffic_minute``.

Every function takes an open SQLAlchemy :class:`~sqlalchemy.Connection` and a half-open UTC
time range ``[start, end)``, runs SQLAlchemy Core statements that work unchanged on PostgreSQL
and SQLite, and returns frozen dataclasses. The definitions (see ``docs/analytics.md``):

* **Sessions in a range** are the sessions whose ``started_at`` lies in the range; every
  per-session figure (visitors, bounce and conversion rates, durations, views per visit,
  sources, countries, devices, the funnel, conversion paths) is computed over exactly those
  sessions, so a session counts once, in the range where it started.
* **Events in a range** are the events whose ``occurred_at`` lies in the range: page views,
  revenue, top pages and map points.
* **Rates are never added up.** Bounce rate, conversion rate, average visit duration and views
  per visit are ratios over the sessions of the whole range (not averages of bucket ratios).
  With no session in the range they are ``None`` ("no data"), never 0.
* The traffic chart reads the additive per-minute table ``traffic_minute`` for event measures
  and counts sessions started per bucket; its buckets are the whole minutes (or hours) whose
  start lies in the range, so for a minute-aligned range (as :meth:`TimeRange.last_minutes`
  makes) the buckets add up exactly to the range's totals.

Nothing here writes; every statement is a plain ``SELECT``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Numeric,
    and_,
    case,
    cast,
    distinct,
    func,
    literal_column,
    select,
    type_coerce,
)
from sqlalchemy.exc import DBAPIError

from clickstream.cli import (
    INTERRUPTED,
    Stopped,
    WaitWatch,
    add_log_level,
    configure_logging,
    stop_on_signals,
    whole_number,
)
from clickstream.db import make_engine, refusal_error
from clickstream.db.models import (
    UtcDateTime,
    events_table,
    sessions_table,
    traffic_minute_table,
)
from clickstream.errors import ClickstreamError
from clickstream.settings import SETTING_FLAGS, load_settings

__all__ = [
    "CURRENT_VISITORS_WINDOW",
    "FUNNEL_STEPS",
    "MAP_PRECISION",
    "Bucket",
    "ConversionPaths",
    "CountryRow",
    "Dashboard",
    "Devices",
    "Funnel",
    "FunnelStep",
    "Kpis",
    "MapPoint",
    "PageRow",
    "PathRow",
    "SegmentRow",
    "SourceRow",
    "TimeRange",
    "Traffic",
    "TrafficPoint",
    "choose_bucket",
    "conversion_paths",
    "countries",
    "current_visitors",
    "dashboard",
    "devices",
    "funnel",
    "kpis",
    "main",
    "map_points",
    "parse_moment",
    "render_report",
    "snapshot",
    "sources",
    "top_pages",
    "traffic",
]

_log = logging.getLogger("clickstream.analytics")

CURRENT_VISITORS_WINDOW: Final = timedelta(minutes=5)
"""A visitor is "current" with an event in the last five minutes (Plausible's definition)."""
MAP_PRECISION: Final = 1
"""Map coordinates are rounded to this many decimals (0.1 degree, about 11 km)."""
_CENT: Final = Decimal("0.01")
_ZERO: Final = Decimal("0.00")


class Bucket(StrEnum):
    """Width of a traffic-chart bucket."""

    MINUTE = "minute"
    HOUR = "hour"

    @property
    def width(self) -> timedelta:
        """The bucket's length."""
        return timedelta(minutes=1) if self is Bucket.MINUTE else timedelta(hours=1)

    def floor(self, moment: datetime) -> datetime:
        """The start of the bucket that contains ``moment`` (UTC)."""
        utc = moment.astimezone(UTC).replace(second=0, microsecond=0)
        return utc if self is Bucket.MINUTE else utc.replace(minute=0)


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A half-open UTC interval ``[start, end)``.

    Raises:
        ValueError: a bound is naive, or ``start`` is not before ``end``.
    """

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value: datetime = getattr(self, name)
            if value.tzinfo is None or value.utcoffset() is None:
                msg = f"TimeRange.{name} must be timezone-aware, got {value.isoformat()}"
                raise ValueError(msg)
            object.__setattr__(self, name, value.astimezone(UTC))
        if not self.start < self.end:
            msg = f"TimeRange.start ({self.start}) must be before its end ({self.end})"
            raise ValueError(msg)

    @classmethod
    def last_minutes(cls, minutes: int, *, now: datetime) -> TimeRange:
        """The ``minutes`` whole minutes up to and including the one that contains ``now``.

        ``end`` is the start of the minute after ``now``, so the range is minute-aligned and the
        current, still filling minute is part of it.
        """
        if minutes < 1:
            msg = f"minutes must be at least 1, got {minutes}"
            raise ValueError(msg)
        end = Bucket.MINUTE.floor(now) + timedelta(minutes=1)
        return cls(end - timedelta(minutes=minutes), end)

    @property
    def seconds(self) -> float:
        """The range's length in seconds."""
        return (self.end - self.start).total_seconds()


def choose_bucket(time_range: TimeRange) -> Bucket:
    """Minutes for ranges up to three hours, hours beyond (at most a few hundred points)."""
    return Bucket.MINUTE if time_range.seconds <= 3 * 3600 else Bucket.HOUR


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kpis:
    """The headline figures of a range.

    Session figures cover the sessions that started in the range; ``events``, ``page_views``
    and ``revenue`` cover the events that occurred in it. Ratios are ``None`` without sessions.
    """

    sessions: int
    visitors: int
    """Distinct ``user_id`` among the range's sessions."""
    events: int
    page_views: int
    """``page_view`` events that occurred in the range."""
    bounced_sessions: int
    converted_sessions: int
    bounce_rate: float | None
    """Bounced sessions / sessions (a bounced session has exactly one event)."""
    conversion_rate: float | None
    """Converted sessions / sessions (a converted session has a purchase)."""
    average_duration_seconds: float | None
    """Mean ``duration_seconds`` of the sessions (0 for single-event sessions)."""
    views_per_visit: float | None
    """Page views of the range's sessions / sessions."""
    purchases: int
    revenue: Decimal
    """Sum of ``revenue`` of the purchases that occurred in the range."""
    currency: str | None
    """The purchases' currency when they all share one, else ``None``."""


@dataclass(frozen=True, slots=True)
class TrafficPoint:
    """One bucket of the traffic chart; every measure is additive."""

    start: datetime
    events: int
    page_views: int
    add_to_carts: int
    purchases: int
    revenue: Decimal
    sessions: int
    """Sessions that started in the bucket."""


@dataclass(frozen=True, slots=True)
class Traffic:
    """The traffic chart: one point per bucket of the range, empty buckets included."""

    bucket: Bucket
    points: tuple[TrafficPoint, ...]


@dataclass(frozen=True, slots=True)
class PageRow:
    """Page views of one URL."""

    page_url: str
    page_views: int
    visitors: int


@dataclass(frozen=True, slots=True)
class SourceRow:
    """Sessions by ``traffic_source``; ``share`` is of all the range's sessions."""

    source: str
    sessions: int
    visitors: int
    converted_sessions: int
    share: float


@dataclass(frozen=True, slots=True)
class CountryRow:
    """Sessions and visitors by the session's country (``None`` when unknown)."""

    country: str | None
    sessions: int
    visitors: int
    share: float


@dataclass(frozen=True, slots=True)
class MapPoint:
    """Events at rounded coordinates (see :data:`MAP_PRECISION`)."""

    latitude: float
    longitude: float
    events: int
    visitors: int


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """Sessions of one device type, operating system or browser (``None`` when unknown)."""

    name: str | None
    sessions: int
    share: float


@dataclass(frozen=True, slots=True)
class Devices:
    """Sessions by device type, operating system and browser."""

    device_types: tuple[SegmentRow, ...]
    operating_systems: tuple[SegmentRow, ...]
    browsers: tuple[SegmentRow, ...]


@dataclass(frozen=True, slots=True)
class FunnelStep:
    """Sessions that reached a step after reaching every previous one, in order."""

    name: str
    label: str
    sessions: int
    drop_off: float | None
    """``1 - sessions / previous step's sessions``; ``None`` for the first step or after 0."""
    share_of_first: float | None
    """``sessions / first step's sessions``; ``None`` when the first step has none."""


@dataclass(frozen=True, slots=True)
class Funnel:
    """The purchase funnel over the range's sessions."""

    sessions: int
    """All sessions of the range, including those that never reached the first step."""
    steps: tuple[FunnelStep, ...]


@dataclass(frozen=True, slots=True)
class PathRow:
    """One conversion path and how many converted sessions followed it."""

    path: str
    sessions: int
    share: float
    """Of all converted sessions of the range."""


@dataclass(frozen=True, slots=True)
class ConversionPaths:
    """The most frequent conversion paths."""

    converted_sessions: int
    paths: tuple[PathRow, ...]


@dataclass(frozen=True, slots=True)
class Dashboard:
    """Every figure of the dashboard for one range, read in one go."""

    time_range: TimeRange
    now: datetime
    kpis: Kpis
    current_visitors: int
    traffic: Traffic
    pages: tuple[PageRow, ...]
    sources: tuple[SourceRow, ...]
    countries: tuple[CountryRow, ...]
    map_points: tuple[MapPoint, ...]
    devices: Devices
    funnel: Funnel
    conversion_paths: ConversionPaths


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A read-only connection whose statements all see one snapshot of the database.

    While the consumer writes, figures read through it still agree with each other (the
    funnel's sessions equal the KPI's). PostgreSQL: a ``REPEATABLE READ READ ONLY``
    transaction. SQLite: an explicit read transaction, which under WAL journaling keeps the
    snapshot of its first read and never blocks the writer. The transaction is rolled back at
    the end.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        elif conn.dialect.name == "sqlite":
            # pysqlite opens transactions only before writes; a read transaction needs BEGIN.
            conn.exec_driver_sql("BEGIN")
        try:
            yield conn
        finally:
            conn.rollback()


# -- portable SQL helpers ------------------------------------------------------------------------


def _sessions_in(time_range: TimeRange) -> ColumnElement[bool]:
    started = sessions_table.c.started_at
    return and_(started >= time_range.start, started < time_range.end)


def _events_in(time_range: TimeRange) -> ColumnElement[bool]:
    occurred = events_table.c.occurred_at
    return and_(occurred >= time_range.start, occurred < time_range.end)


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _floor(conn: Connection, column: ColumnElement[datetime], bucket: Bucket) -> Any:
    """The bucket start of a stored UTC timestamp, as an aware datetime."""
    if conn.dialect.name == "postgresql":
        # With the time zone argument the truncation happens in UTC, whatever the session's
        # TimeZone. Literals (not bind parameters): GROUP BY must repeat the same expression.
        unit: ColumnElement[str] = literal_column(f"'{bucket.value}'")
        return func.date_trunc(unit, column, literal_column("'UTC'"), type_=UtcDateTime())
    # SQLite stores UTC wall time as text; rebuild the same text format truncated.
    fmt = "%Y-%m-%d %H:%M:00.000000" if bucket is Bucket.MINUTE else "%Y-%m-%d %H:00:00.000000"
    return type_coerce(func.strftime(literal_column(f"'{fmt}'"), column), UtcDateTime())


def _rounded(conn: Connection, column: ColumnElement[float]) -> Any:
    digits: ColumnElement[int] = literal_column(str(MAP_PRECISION))
    if conn.dialect.name == "postgresql":
        return func.round(cast(column, Numeric), digits)
    return func.round(column, digits)


def _bytewise(conn: Connection, column: ColumnElement[str]) -> ColumnElement[str]:
    """Order text by code point on both databases (SQLite's default; PostgreSQL's "C")."""
    return column.collate("C") if conn.dialect.name == "postgresql" else column


def _ratio(part: int | float, whole: int) -> float | None:
    return part / whole if whole else None


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _money(value: Any) -> Decimal:
    if value is None:
        return _ZERO
    return Decimal(str(value)).quantize(_CENT)


def _count_sessions(conn: Connection, time_range: TimeRange) -> int:
    statement = select(func.count()).select_from(sessions_table).where(_sessions_in(time_range))
    return int(conn.execute(statement).scalar_one())


# -- figures -------------------------------------------------------------------------------------


def kpis(conn: Connection, *, time_range: TimeRange) -> Kpis:
    """The headline figures of ``time_range`` (see :class:`Kpis` for each definition)."""
    s = sessions_table.c
    row = conn.execute(
        select(
            func.count(),
            func.count(distinct(s.user_id)),
            _count_if(s.bounced),
            _count_if(s.converted),
            func.avg(s.duration_seconds),
            func.coalesce(func.sum(s.page_views), 0),
        ).where(_sessions_in(time_range))
    ).one()
    sessions, visitors, bounced, converted = (int(v) for v in row[:4])
    average_duration = float(row[4]) if row[4] is not None else None
    session_page_views = int(row[5])

    e = events_table.c
    is_purchase = e.event_type == "purchase"
    events_row = conn.execute(
        select(
            func.count(),
            _count_if(e.event_type == "page_view"),
            _count_if(is_purchase),
            func.sum(case((is_purchase, e.revenue), else_=None)),
        ).where(_events_in(time_range))
    ).one()
    currencies = (
        conn.execute(
            select(e.currency)
            .distinct()
            .where(_events_in(time_range), is_purchase)
            .order_by(e.currency)
            .limit(2)
        )
        .scalars()
        .all()
    )
    return Kpis(
        sessions=sessions,
        visitors=visitors,
        events=int(events_row[0]),
        page_views=int(events_row[1]),
        bounced_sessions=bounced,
        converted_sessions=converted,
        bounce_rate=_ratio(bounced, sessions),
        conversion_rate=_ratio(converted, sessions),
        average_duration_seconds=average_duration if sessions else None,
        views_per_visit=_ratio(session_page_views, sessions),
        purchases=int(events_row[2]),
        revenue=_money(events_row[3]),
        currency=currencies[0] if len(currencies) == 1 else None,
    )


def _bucket_starts(time_range: TimeRange, bucket: Bucket) -> Iterator[datetime]:
    moment = bucket.floor(time_range.start)
    while moment < time_range.end:
        yield moment
        moment += bucket.width


def traffic(conn: Connection, *, time_range: TimeRange, bucket: Bucket | None = None) -> Traffic:
    """Per-bucket traffic: event measures, and the sessions that started per bucket.

    The event measures come from ``traffic_minute`` for the whole minutes inside the range,
    and from ``events`` for the parts of a minute at either end of a range that does not start
    or end on a minute, so that the points always add up to the range's totals. A bucket holds
    the sessions that started inside it and inside the range; every bucket from the one
    containing ``start`` to the one containing the range's last instant is present, with zeros
    when empty. ``bucket`` defaults to :func:`choose_bucket`.
    """
    bucket = bucket or choose_bucket(time_range)
    measures: dict[datetime, tuple[int, int, int, int, Decimal]] = {}
    whole_start = _ceil_minute(time_range.start)
    whole_end = max(time_range.end.replace(second=0, microsecond=0), whole_start)
    t = traffic_minute_table.c
    t_start = _floor(conn, t.minute, bucket).label("bucket")
    if whole_start < whole_end:
        for row in conn.execute(
            select(
                t_start,
                func.sum(t.events),
                func.sum(t.page_views),
                func.sum(t.add_to_carts),
                func.sum(t.purchases),
                func.sum(t.revenue),
            )
            .where(t.minute >= whole_start, t.minute < whole_end)
            .group_by(t_start)
        ):
            _add_measures(measures, row)
    # The parts of a minute at the ends (the whole range, if it holds no whole minute).
    parts = [(time_range.start, min(whole_start, time_range.end)), (whole_end, time_range.end)]
    e = events_table.c
    e_start = _floor(conn, e.occurred_at, bucket).label("bucket")
    purchase = e.event_type == "purchase"
    for low, high in parts:
        if low >= high:
            continue
        for row in conn.execute(
            select(
                e_start,
                func.count(),
                func.count(case((e.event_type == "page_view", 1))),
                func.count(case((e.event_type == "add_to_cart", 1))),
                func.count(case((purchase, 1))),
                func.sum(case((purchase, e.revenue))),
            )
            .where(e.occurred_at >= low, e.occurred_at < high)
            .group_by(e_start)
        ):
            _add_measures(measures, row)
    s = sessions_table.c
    s_start = _floor(conn, s.started_at, bucket).label("bucket")
    started: dict[datetime, int] = {
        row[0]: int(row[1])
        for row in conn.execute(
            select(s_start, func.count()).where(_sessions_in(time_range)).group_by(s_start)
        )
    }
    points = []
    for moment in _bucket_starts(time_range, bucket):
        events, page_views, carts, purchases, revenue = measures.get(moment, (0, 0, 0, 0, _ZERO))
        points.append(
            TrafficPoint(
                start=moment,
                events=events,
                page_views=page_views,
                add_to_carts=carts,
                purchases=purchases,
                revenue=revenue,
                sessions=started.get(moment, 0),
            )
        )
    return Traffic(bucket=bucket, points=tuple(points))


def _ceil_minute(moment: datetime) -> datetime:
    floor = moment.replace(second=0, microsecond=0)
    return floor if floor == moment else floor + timedelta(minutes=1)


def _add_measures(measures: dict[datetime, tuple[int, int, int, int, Decimal]], row: Any) -> None:
    old = measures.get(row[0], (0, 0, 0, 0, _ZERO))
    measures[row[0]] = (
        old[0] + int(row[1]),
        old[1] + int(row[2]),
        old[2] + int(row[3]),
        old[3] + int(row[4]),
        old[4] + _money(row[5]),
    )


def top_pages(conn: Connection, *, time_range: TimeRange, limit: int = 10) -> tuple[PageRow, ...]:
    """The ``limit`` URLs with the most page views in the range (ties: URL in code-point order)."""
    e = events_table.c
    views = func.count().label("views")
    rows = conn.execute(
        select(e.page_url, views, func.count(distinct(e.user_id)))
        .where(_events_in(time_range), e.event_type == "page_view")
        .group_by(e.page_url)
        .order_by(views.desc(), _bytewise(conn, e.page_url))
        .limit(limit)
    )
    return tuple(PageRow(str(r[0]), int(r[1]), int(r[2])) for r in rows)


def sources(conn: Connection, *, time_range: TimeRange, limit: int = 10) -> tuple[SourceRow, ...]:
    """Sessions by traffic source, most sessions first (ties: source in code-point order)."""
    s = sessions_table.c
    total = _count_sessions(conn, time_range)
    count = func.count().label("sessions")
    rows = conn.execute(
        select(s.traffic_source, count, func.count(distinct(s.user_id)), _count_if(s.converted))
        .where(_sessions_in(time_range))
        .group_by(s.traffic_source)
        .order_by(count.desc(), _bytewise(conn, s.traffic_source))
        .limit(limit)
    )
    return tuple(
        SourceRow(str(r[0]), int(r[1]), int(r[2]), int(r[3]), _share(int(r[1]), total))
        for r in rows
    )


def countries(
    conn: Connection, *, time_range: TimeRange, limit: int = 10
) -> tuple[CountryRow, ...]:
    """Sessions and visitors by the session's country; unknown (``None``) sorts last on ties."""
    s = sessions_table.c
    total = _count_sessions(conn, time_range)
    count = func.count().label("sessions")
    rows = conn.execute(
        select(s.country, count, func.count(distinct(s.user_id)))
        .where(_sessions_in(time_range))
        .group_by(s.country)
        .order_by(count.desc(), s.country.is_(None), _bytewise(conn, s.country))
        .limit(limit)
    )
    return tuple(CountryRow(r[0], int(r[1]), int(r[2]), _share(int(r[1]), total)) for r in rows)


def map_points(
    conn: Connection, *, time_range: TimeRange, limit: int = 500
) -> tuple[MapPoint, ...]:
    """Events with coordinates, grouped by coordinates rounded to :data:`MAP_PRECISION` decimals.

    The ``limit`` busiest points, most events first.
    """
    e = events_table.c
    lat = _rounded(conn, e.latitude).label("lat")
    lon = _rounded(conn, e.longitude).label("lon")
    count = func.count().label("events")
    rows = conn.execute(
        select(lat, lon, count, func.count(distinct(e.user_id)))
        .where(_events_in(time_range), e.latitude.is_not(None))
        .group_by(lat, lon)
        .order_by(count.desc(), lat, lon)
        .limit(limit)
    )
    return tuple(
        MapPoint(
            round(float(r[0]), MAP_PRECISION),
            round(float(r[1]), MAP_PRECISION),
            int(r[2]),
            int(r[3]),
        )
        for r in rows
    )


def _segments(
    conn: Connection, time_range: TimeRange, column: ColumnElement[Any], total: int, limit: int
) -> tuple[SegmentRow, ...]:
    count = func.count().label("sessions")
    rows = conn.execute(
        select(column, count)
        .where(_sessions_in(time_range))
        .group_by(column)
        .order_by(count.desc(), column.is_(None), _bytewise(conn, column))
        .limit(limit)
    )
    return tuple(SegmentRow(r[0], int(r[1]), _share(int(r[1]), total)) for r in rows)


def devices(conn: Connection, *, time_range: TimeRange, limit: int = 10) -> Devices:
    """Sessions by device type, operating system and browser (of each session's first event)."""
    s = sessions_table.c
    total = _count_sessions(conn, time_range)
    return Devices(
        device_types=_segments(conn, time_range, s.device_type, total, limit),
        operating_systems=_segments(conn, time_range, s.os, total, limit),
        browsers=_segments(conn, time_range, s.browser, total, limit),
    )


@dataclass(frozen=True, slots=True)
class _StepRule:
    name: str
    label: str
    event_type: str
    page_type: str | None = None

    def matches(self, event_type: str, page_type: str) -> bool:
        return event_type == self.event_type and (
            self.page_type is None or page_type == self.page_type
        )


_FUNNEL: Final = (
    _StepRule("visit", "Visited a page", "page_view"),
    _StepRule("product", "Viewed a product", "page_view", "product"),
    _StepRule("add_to_cart", "Added to cart", "add_to_cart"),
    _StepRule("begin_checkout", "Began checkout", "begin_checkout"),
    _StepRule("purchase", "Purchased", "purchase"),
)
FUNNEL_STEPS: Final = tuple(step.name for step in _FUNNEL)
"""The funnel's step names, in order."""


def _furthest_step(events: Iterable[tuple[str, str]]) -> int:
    """How many funnel steps a session's events (in contract order) complete, in order.

    One event may complete several consecutive steps: a landing on a product page is both the
    first page view and the product view.
    """
    reached = 0
    for event_type, page_type in events:
        while reached < len(_FUNNEL) and _FUNNEL[reached].matches(event_type, page_type):
            reached += 1
        if reached == len(_FUNNEL):
            break
    return reached


def funnel(conn: Connection, *, time_range: TimeRange) -> Funnel:
    """The purchase funnel over the sessions that started in the range.

    A session's events are its visitor's events between ``started_at`` and ``ended_at``
    (inclusive), walked in the contract's order (``occurred_at``, then ``event_id``). Step *n*
    counts the sessions that reached it after reaching steps 1..n-1 in that order.
    """
    s, e = sessions_table.c, events_table.c
    relevant = sorted({step.event_type for step in _FUNNEL})
    rows = conn.execute(
        select(s.session_id, e.occurred_at, e.event_id, e.event_type, e.page_type)
        .select_from(sessions_table)
        .join(
            events_table,
            and_(
                e.user_id == s.user_id,
                e.occurred_at >= s.started_at,
                e.occurred_at <= s.ended_at,
            ),
        )
        .where(_sessions_in(time_range), e.event_type.in_(relevant))
        .order_by(s.session_id)
    )
    reached_counts = [0] * (len(_FUNNEL) + 1)
    for events in _per_session(rows):
        events.sort(key=lambda item: (item[0], item[1]))
        reached_counts[_furthest_step((kind, page) for _, _, kind, page in events)] += 1
    total = _count_sessions(conn, time_range)
    steps: list[FunnelStep] = []
    first = 0
    for index, rule in enumerate(_FUNNEL):
        count = sum(reached_counts[index + 1 :])
        if index == 0:
            first = count
            drop_off = None
        else:
            previous = steps[-1].sessions
            drop_off = 1 - count / previous if previous else None
        steps.append(FunnelStep(rule.name, rule.label, count, drop_off, _ratio(count, first)))
    return Funnel(sessions=total, steps=tuple(steps))


def _per_session(rows: Iterable[Sequence[Any]]) -> Iterator[list[tuple[datetime, str, str, str]]]:
    """Group rows ordered by session id into each session's ``(time, id, type, page)`` list."""
    current_id: str | None = None
    events: list[tuple[datetime, str, str, str]] = []
    for session_id, occurred_at, event_id, event_type, page_type in rows:
        if session_id != current_id:
            if events:
                yield events
            current_id, events = session_id, []
        events.append((occurred_at, str(event_id).lower(), event_type, page_type))
    if events:
        yield events


def conversion_paths(
    conn: Connection, *, time_range: TimeRange, limit: int = 10
) -> ConversionPaths:
    """The most frequent ``conversion_path`` values among the range's converted sessions.

    Most sessions first, ties in code-point order; ``share`` is of all converted sessions.
    """
    s = sessions_table.c
    converted = int(
        conn.execute(
            select(func.count()).where(_sessions_in(time_range), s.conversion_path.is_not(None))
        ).scalar_one()
    )
    count = func.count().label("sessions")
    rows = conn.execute(
        select(s.conversion_path, count)
        .where(_sessions_in(time_range), s.conversion_path.is_not(None))
        .group_by(s.conversion_path)
        .order_by(count.desc(), _bytewise(conn, s.conversion_path))
        .limit(limit)
    )
    paths = tuple(PathRow(str(r[0]), int(r[1]), _share(int(r[1]), converted)) for r in rows)
    return ConversionPaths(converted_sessions=converted, paths=paths)


def current_visitors(
    conn: Connection, *, now: datetime, window: timedelta = CURRENT_VISITORS_WINDOW
) -> int:
    """Distinct visitors with an event in ``[now - window, now]`` (both ends included).

    Events stamped after ``now`` (a client clock running ahead) count once ``now`` reaches them.
    """
    e = events_table.c
    statement = select(func.count(distinct(e.user_id))).where(
        e.occurred_at >= now - window, e.occurred_at <= now
    )
    return int(conn.execute(statement).scalar_one())


def dashboard(
    conn: Connection,
    *,
    time_range: TimeRange,
    now: datetime,
    bucket: Bucket | None = None,
    limit: int = 10,
) -> Dashboard:
    """Every figure of the dashboard for ``time_range``, current visitors relative to ``now``.

    Pass a :func:`snapshot` connection when the figures must agree with each other while the
    consumer writes.
    """
    return Dashboard(
        time_range=time_range,
        now=now.astimezone(UTC),
        kpis=kpis(conn, time_range=time_range),
        current_visitors=current_visitors(conn, now=now),
        traffic=traffic(conn, time_range=time_range, bucket=bucket),
        pages=top_pages(conn, time_range=time_range, limit=limit),
        sources=sources(conn, time_range=time_range, limit=limit),
        countries=countries(conn, time_range=time_range, limit=limit),
        map_points=map_points(conn, time_range=time_range),
        devices=devices(conn, time_range=time_range, limit=limit),
        funnel=funnel(conn, time_range=time_range),
        conversion_paths=conversion_paths(conn, time_range=time_range, limit=limit),
    )


# -- command line ---------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def render_report(board: Dashboard) -> str:
    """The figures of ``board`` as a plain-text report (what ``python -m clickstream.analytics``
    prints): KPIs, funnel, conversion paths, sources, pages and devices."""
    k = board.kpis
    span = board.time_range
    duration = "-" if k.average_duration_seconds is None else f"{k.average_duration_seconds:.1f} s"
    views = "-" if k.views_per_visit is None else f"{k.views_per_visit:.2f}"
    revenue = f"{k.revenue:,.2f}" + (f" {k.currency}" if k.currency else "")
    as_of = board.now.isoformat(timespec="seconds")
    lines = [
        f"clickstream analytics, {span.start.isoformat()} to {span.end.isoformat()} "
        f"(sessions that started in the range; current visitors as of {as_of})",
        "",
        f"  sessions            {k.sessions:>12,}    visitors        {k.visitors:>12,}",
        f"  events              {k.events:>12,}    page views      {k.page_views:>12,}",
        f"  bounce rate         {_percent(k.bounce_rate):>12}    conversion rate "
        f"{_percent(k.conversion_rate):>12}",
        f"  avg visit duration  {duration:>12}    views per visit {views:>12}",
        f"  purchases           {k.purchases:>12,}    revenue         {revenue:>12}",
        f"  current visitors    {board.current_visitors:>12,}    (an event in the last "
        f"{int(CURRENT_VISITORS_WINDOW.total_seconds() // 60)} minutes)",
        "",
        "funnel (sessions reaching each step after the previous ones)",
    ]
    for step in board.funnel.steps:
        lines.append(
            f"  {step.label:<28} {step.sessions:>10,}   drop-off {_percent(step.drop_off):>8}"
        )
    lines += ["", f"conversion paths ({board.conversion_paths.converted_sessions:,} converted)"]
    lines += [
        f"  {row.sessions:>8,}  {_percent(row.share):>8}  {row.path}"
        for row in board.conversion_paths.paths
    ] or ["  (none)"]
    lines += ["", "traffic sources (sessions, share, converted)"]
    lines += [
        f"  {row.source:<32} {row.sessions:>8,}  {_percent(row.share):>8}  "
        f"{row.converted_sessions:>6,}"
        for row in board.sources
    ] or ["  (none)"]
    lines += ["", "top pages (page views, visitors)"]
    lines += [
        f"  {row.page_views:>8,}  {row.visitors:>8,}  {row.page_url}" for row in board.pages
    ] or ["  (none)"]
    lines += ["", "devices (sessions, share)"]
    lines += [
        f"  {row.name or 'unknown':<32} {row.sessions:>8,}  {_percent(row.share):>8}"
        for row in board.devices.device_types
    ] or ["  (none)"]
    return "\n".join(lines)


def parse_moment(text: str) -> datetime:
    """An RFC 3339 date-time with an offset (``Z`` or ``+hh:mm``), as a range bound.

    Raises:
        ValueError: not such a date-time; the message says what is expected.
    """
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        msg = "must be an RFC 3339 date-time with an offset (e.g. 2026-11-30T12:00:00Z)"
        raise ValueError(msg) from None
    if value.utcoffset() is None:
        msg = "needs an offset (e.g. Z or +02:00)"
        raise ValueError(msg)
    return value


def _moment(text: str) -> datetime:
    try:
        return parse_moment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, got {text!r}") from None


_moment.__name__ = "date-time"


_MAX_REPORT_MINUTES: Final = 366 * 24 * 60


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clickstream.analytics",
        description=(
            "Print the web-analytics figures of a time range from the clickstream database: "
            "KPIs (sessions, visitors, bounce and conversion rates, visit duration, views per "
            "visit, revenue, current visitors), the purchase funnel, conversion paths, traffic "
            "sources, top pages and devices. The same figures as the dashboard, for a terminal "
            "or a script (--json). Reads only."
        ),
        epilog=(
            "examples:\n"
            "  python -m clickstream.analytics                      # the last 60 minutes\n"
            "  python -m clickstream.analytics --minutes 1440 --limit 10\n"
            "  python -m clickstream.analytics --start 2026-11-30T00:00:00Z "
            "--end 2026-12-01T00:00:00Z --json\n\n"
            "The database comes from --database-url, else CLICKSTREAM_DATABASE_URL (or the "
            "Pulumi stack outputs, reader credentials), else sqlite:///clickstream.db.\n"
            "Definitions: docs/analytics.md. Exit status: 0 done, 2 bad arguments or settings, "
            "3 the database could not be read, 130 stopped by SIGINT/SIGTERM."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--minutes",
        type=whole_number(1, _MAX_REPORT_MINUTES),
        default=60,
        help="the last N whole minutes, the current one included (default 60)",
    )
    parser.add_argument("--start", type=_moment, help="start of the range (with --end)")
    parser.add_argument("--end", type=_moment, help="end of the range, excluded (with --start)")
    parser.add_argument(
        "--limit",
        type=whole_number(1, 100),
        default=5,
        help="rows per table (default 5)",
        metavar="N",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document, as /api/dashboard")
    parser.add_argument("--database-url", help="SQLAlchemy URL of the database to read")
    add_log_level(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m clickstream.analytics``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.start is None) != (args.end is None):
        parser.error("give both --start and --end, or neither (then --minutes applies)")
    configure_logging(args.log_level)
    now = datetime.now(UTC)
    try:
        time_range = (
            TimeRange(args.start, args.end)
            if args.start is not None
            else TimeRange.last_minutes(args.minutes, now=now)
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        settings = load_settings(
            role="reader",
            overrides={"database_url": args.database_url},
            uses=frozenset({"database_url"}),
            command="clickstream.analytics",
            flags=SETTING_FLAGS,
        )
        engine = make_engine(
            settings.database_url.get_secret_value(), application_name="report", must_exist=True
        )
    except ClickstreamError as exc:
        _log.error("%s", exc)
        return 2
    watch = WaitWatch(_log)
    try:
        with (
            stop_on_signals(),
            watch.waiting(
                f"the database ({engine.url.render_as_string(hide_password=True)}) to answer "
                "the report's queries",
                hint="Is the server hung or cut off? Ctrl-C or SIGTERM stops",
            ),
            snapshot(engine) as conn,
        ):
            board = dashboard(conn, time_range=time_range, now=now, limit=args.limit)
    except Stopped as exc:
        _log.error("report %s before the database answered", exc)
        return INTERRUPTED
    except DBAPIError as exc:
        refused = refusal_error(exc)
        if refused is not None:
            _log.error("%s", refused)
            return 2
        _log.error(
            "cannot read the database (%s): %s (is the schema there? `alembic upgrade head`)",
            engine.url.render_as_string(hide_password=True),
            " ".join(str(exc.orig).split()),
        )
        return 3
    finally:
        watch.close()
        engine.dispose()
    if args.json:
        from clickstream.dashboard.server import to_json  # noqa: PLC0415 - it imports this module

        sys.stdout.write(to_json(board).decode() + "\n")
    else:
        sys.stdout.write(render_report(board) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Server-side sessions as a pure function of a visitor's set of events.

Definition (the data contract): take a visitor's distinct events ordered by
(``occurred_at``, ``event_id`` as lower-case text). An event starts a new session when it is
the visitor's first, when it comes more than ``gap`` after the previous event, or more than
``max_length`` after the current session's first event; otherwise it joins the current session.

Two consequences drive the incremental design in :mod:`clickstream.store`:

* Events separated by more than ``gap`` never influence each other. A visitor's timeline splits
  into *runs* (maximal sequences whose consecutive events are at most ``gap`` apart); the sessions
  of a run depend on that run's events only. A late event can join runs together (bridging).
* Appending events strictly after a session's last event never changes that session's start,
  so sessions can be extended in place (:func:`extend_session`) without re-reading history.

Session ids are derived from the first event's id, so the same set of events always yields the
same id, and a session keeps its id while it grows.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final, NamedTuple
from urllib.parse import urlsplit

__all__ = [
    "FUNNEL_STEPS",
    "PATH_SEPARATOR",
    "Session",
    "SessionEvent",
    "build_sessions",
    "extend_session",
    "funnel_advance",
    "session_id_for",
    "traffic_source",
]

PATH_SEPARATOR: Final = " > "
FUNNEL_STEPS: Final = ("page_view", "product_view", "add_to_cart", "begin_checkout", "purchase")
"""The conversion funnel, in order. A session's ``funnel_step`` is how many it reached."""
_SESSION_NAMESPACE: Final = uuid.UUID("5b0a7a52-3f6c-4c1e-9a47-0d3c2f1e8b61")
_NAMESPACE_BYTES: Final = _SESSION_NAMESPACE.bytes


class SessionEvent(NamedTuple):
    """The fields of a stored event that sessions are computed from.

    A named tuple: the consumer makes one per event, and tuples are the cheapest immutable
    records to build.
    """

    event_id: str
    occurred_at: datetime
    event_type: str
    page_url: str
    page_type: str
    referrer_url: str | None
    utm_source: str | None
    device_type: str
    os: str | None
    browser: str | None
    country: str | None
    city: str | None
    revenue: Decimal | None

    @property
    def order_key(self) -> tuple[datetime, str]:
        """The contract's total order within a visitor: time, then lower-case event id."""
        return (self.occurred_at, self.event_id.lower())


class Session(NamedTuple):
    """One row of the ``sessions`` table (``converted``, ``bounced`` and the duration derived).

    Its fields are the table's columns in order, up to ``funnel_step``. A named tuple: the
    consumer builds about one per event (see :class:`SessionEvent`).
    """

    session_id: str
    user_id: str
    started_at: datetime
    ended_at: datetime
    event_count: int
    page_views: int
    purchases: int
    revenue: Decimal
    entry_page: str
    exit_page: str
    conversion_path: str | None
    traffic_source: str
    device_type: str
    os: str | None
    browser: str | None
    country: str | None
    city: str | None
    funnel_step: int = 0

    @property
    def duration_seconds(self) -> float:
        """``ended_at - started_at`` in seconds (0 for a single event)."""
        return (self.ended_at - self.started_at).total_seconds()

    @property
    def converted(self) -> bool:
        """Whether the session contains a purchase."""
        return self.purchases > 0

    @property
    def bounced(self) -> bool:
        """Whether the session has exactly one event."""
        return self.event_count == 1


def session_id_for(first_event_id: str) -> str:
    """Deterministic session id: a UUIDv5 of the session's first event id (lower case)."""
    # RFC 4122 section 4.3, as uuid.uuid5 computes it, without building UUID objects: the
    # first 16 bytes of SHA-1(namespace + name) with the version (5) and variant bits set.
    digest = bytearray(
        hashlib.sha1(
            _NAMESPACE_BYTES + first_event_id.lower().encode(), usedforsecurity=False
        ).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def traffic_source(utm_source: str | None, referrer_url: str | None) -> str:
    """The first event's source: ``utm_source`` if set; else the referrer's host, lower case,
    without a leading ``www.``; else ``direct``."""
    if utm_source:
        return utm_source
    if referrer_url:
        host = _referrer_host(referrer_url)
        if host:
            return host
    return "direct"


@functools.lru_cache(maxsize=4096)  # referrers repeat: a few search engines and sites
def _referrer_host(referrer_url: str) -> str:
    host = (urlsplit(referrer_url).hostname or "").lower()
    return host.removeprefix("www.")


def funnel_advance(step: int, event_type: str, page_type: str) -> int:
    """The funnel step reached after one more event, given the step reached before it.

    Steps must be reached in order. One event can complete consecutive steps at once: a
    visit that lands on a product page has both viewed a page and viewed a product.
    """
    if event_type == "page_view":
        if step == 0:
            step = 1
        if step == 1 and page_type == "product":
            step = 2
    elif (
        (step == 2 and event_type == "add_to_cart")
        or (step == 3 and event_type == "begin_checkout")
        or (step == 4 and event_type == "purchase")
    ):
        step += 1
    return step


def _collapse(path: list[str], page_type: str) -> None:
    if not path or path[-1] != page_type:
        path.append(page_type)


class _Builder:
    """Accumulates one session; events must be added in contract order."""

    __slots__ = (
        "done",
        "events",
        "first",
        "funnel",
        "last",
        "page_views",
        "path",
        "purchases",
        "revenue",
    )

    def __init__(self, first: SessionEvent) -> None:
        self.first = first
        self.last = first
        self.events = 0
        self.page_views = 0
        self.purchases = 0
        self.revenue = Decimal("0.00")
        self.path: list[str] = []
        self.done = False  # the conversion path ends at the first purchase
        self.funnel = 0
        self.add(first)

    def add(self, event: SessionEvent) -> None:
        self.last = event
        self.events += 1
        self.funnel = funnel_advance(self.funnel, event.event_type, event.page_type)
        if event.event_type == "page_view":
            self.page_views += 1
        if not self.done:
            _collapse(self.path, event.page_type)
        if event.event_type == "purchase":
            self.purchases += 1
            self.revenue += event.revenue or Decimal("0.00")
            self.done = True

    def build(self, user_id: str) -> Session:
        first = self.first
        return Session(
            session_id=session_id_for(first.event_id),
            user_id=user_id,
            started_at=first.occurred_at,
            ended_at=self.last.occurred_at,
            event_count=self.events,
            page_views=self.page_views,
            purchases=self.purchases,
            revenue=self.revenue,
            entry_page=first.page_url,
            exit_page=self.last.page_url,
            conversion_path=PATH_SEPARATOR.join(self.path) if self.purchases else None,
            traffic_source=traffic_source(first.utm_source, first.referrer_url),
            device_type=first.device_type,
            os=first.os,
            browser=first.browser,
            country=first.country,
            city=first.city,
            funnel_step=self.funnel,
        )


def build_sessions(
    user_id: str,
    events: Iterable[SessionEvent],
    *,
    gap: timedelta,
    max_length: timedelta,
) -> list[Session]:
    """All sessions of one visitor's events, in time order.

    Duplicates (same ``event_id``, compared case-insensitively) count once; input order does
    not matter. The boundaries are inclusive: an event exactly ``gap`` after the previous one,
    or exactly ``max_length`` after the session's first, still joins the session.
    """
    distinct = {event.event_id.lower(): event for event in events}
    ordered = sorted(distinct.values(), key=lambda event: event.order_key)
    sessions: list[Session] = []
    current: _Builder | None = None
    for event in ordered:
        if current is not None and _joins(current.first, current.last, event, gap, max_length):
            current.add(event)
            continue
        if current is not None:
            sessions.append(current.build(user_id))
        current = _Builder(event)
    if current is not None:
        sessions.append(current.build(user_id))
    return sessions


def _joins(
    first: SessionEvent,
    last: SessionEvent,
    event: SessionEvent,
    gap: timedelta,
    max_length: timedelta,
) -> bool:
    return (
        event.occurred_at - last.occurred_at <= gap
        and event.occurred_at - first.occurred_at <= max_length
    )


def extend_session(
    session: Session,
    later: Sequence[SessionEvent],
    *,
    gap: timedelta,
    max_length: timedelta,
) -> list[Session] | None:
    """Append events that all come strictly after ``session.ended_at``.

    Returns the updated session followed by any sessions the new events start, or ``None``
    when the fast path cannot decide without the session's events: an unconverted session
    that a purchase would convert needs its page types for the conversion path.
    ``later`` must be distinct, in contract order, and all later than ``session.ended_at``.
    """
    updated = session
    index = 0
    while index < len(later):
        event = later[index]
        joins = (
            event.occurred_at - updated.ended_at <= gap
            and event.occurred_at - updated.started_at <= max_length
        )
        if not joins:
            break
        if event.event_type == "purchase" and not updated.converted:
            return None
        is_purchase = event.event_type == "purchase"
        updated = Session(
            session_id=updated.session_id,
            user_id=updated.user_id,
            started_at=updated.started_at,
            ended_at=event.occurred_at,
            event_count=updated.event_count + 1,
            page_views=updated.page_views + (event.event_type == "page_view"),
            purchases=updated.purchases + is_purchase,
            revenue=updated.revenue + (event.revenue or Decimal("0.00"))
            if is_purchase
            else updated.revenue,
            entry_page=updated.entry_page,
            exit_page=event.page_url,
            conversion_path=updated.conversion_path,
            traffic_source=updated.traffic_source,
            device_type=updated.device_type,
            os=updated.os,
            browser=updated.browser,
            country=updated.country,
            city=updated.city,
            funnel_step=funnel_advance(updated.funnel_step, event.event_type, event.page_type),
        )
        index += 1
    return [
        updated,
        *build_sessions(session.user_id, later[index:], gap=gap, max_length=max_length),
    ]

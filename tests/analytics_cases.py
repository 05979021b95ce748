"""A hand-written shop data set and the read-side figures worked out for it on paper.

Shared by the SQLite unit tests and the PostgreSQL integration tests: each subclasses
:class:`AnalyticsCases` and provides a ``conn`` fixture over a migrated database loaded with
:func:`load`. Every expected number below was derived by hand from the events listed here,
never by running the code under test.

The range under test is 12:00 (inclusive) to 13:00 (exclusive) on 2024-06-01 UTC.

Visitors and their sessions (times are 2024-06-01 UTC):

====  =====================================================  ==============================
user  events                                                 sessions
====  =====================================================  ==============================
alice 12:00 pv home, 12:01 pv product /p/1, 12:02 cart,      A1 12:00-12:05 (6 events,
      12:03 pv cart, 12:04 checkout, 12:05 purchase 100.00   converted, from google.com)
      12:50 pv home (utm_source=newsletter)                  A2 12:50 bounce (newsletter)
bob   12:10 pv product /p/2, 12:10:30 cart, 12:12 pv cart    B1 12:10-12:12 (direct)
carol 12:20 search, 12:21 pv product /p/1, 12:22 cart,       C1 12:20-12:23 converted,
      12:23 purchase 50.50                                   no checkout step (t.co)
dave  11:50 pv home, 12:05 pv /p/3, 12:06 pv home            D0 11:50-12:06 (starts before
                                                             the range: not counted)
      12:40 pv home, 12:41 pv /p/1, 12:42 checkout,          D1 12:40-12:43 converted,
      12:43 purchase 20.00                                   no cart step (direct)
erin  12:59:59 pv home, 13:00:00 pv /c/shoes (no device      E1 12:59:59-13:00:00, 2 events
      details, no country)                                   (direct)
frank 12:30:00 cart (lower id), 12:30:00 pv product /p/2     F1 duration 0, 2 events; the
                                                             tie orders cart first
heidi 12:35 search                                           H1 bounce, no page view (bing)
ivan  12:15 pv home, 12:16 pv /p/3, 12:17 checkout,          I1 12:15-12:18 converted
      12:18 purchase 29.50                                   (google.com)
judy  12:55 pv home                                          J1 bounce (instagram.com)
====  =====================================================  ==============================
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, select

from clickstream import analytics
from clickstream.analytics import Bucket, TimeRange
from clickstream.db import make_engine
from clickstream.db.migrate import upgrade
from clickstream.db.models import sessions_table
from clickstream.events import ClickEvent
from clickstream.store import PositionedEvent, SessionRules, write_batch

SITE = "https://shop.example.com"
DAY = datetime(2024, 6, 1, tzinfo=UTC)
RANGE = TimeRange(DAY.replace(hour=12), DAY.replace(hour=13))


def at(hour: int, minute: int, second: int = 0) -> datetime:
    return DAY.replace(hour=hour, minute=minute, second=second)


_VISITORS: dict[str, dict[str, Any]] = {
    "alice": {"device_type": "desktop", "os": "Windows", "browser": "Chrome", "country": "DE",
              "city": "Berlin", "latitude": 52.52, "longitude": 13.405},
    "bob": {"device_type": "mobile", "os": "iOS", "browser": "Safari", "country": "US",
            "city": "Boston", "latitude": 42.36, "longitude": -71.06},
    "carol": {"device_type": "tablet", "os": "Android", "browser": "Chrome", "country": "FR",
              "city": "Paris", "latitude": 48.857, "longitude": 2.352},
    "dave": {"device_type": "desktop", "os": "Linux", "browser": "Firefox", "country": "DE",
             "city": "Munich", "latitude": 48.137, "longitude": 11.575},
    "erin": {"device_type": "mobile"},
    "frank": {"device_type": "desktop", "os": "macOS", "browser": "Safari", "country": "GB",
              "city": "London", "latitude": 51.507, "longitude": -0.128},
    "heidi": {"device_type": "mobile", "os": "Android", "browser": "Chrome", "country": "US",
              "city": "New York", "latitude": 40.713, "longitude": -74.006},
    "ivan": {"device_type": "desktop", "os": "Windows", "browser": "Edge", "country": "NL",
             "city": "Amsterdam", "latitude": 52.37, "longitude": 4.895},
    "judy": {"device_type": "mobile", "os": "iOS", "browser": "Safari", "country": "US",
             "city": "Boston", "latitude": 42.36, "longitude": -71.06},
}  # fmt: skip

# (user, time, event_type, page_type, path, extra fields)
_EVENTS: list[tuple[str, datetime, str, str, str, dict[str, Any]]] = [
    ("alice", at(12, 0), "page_view", "home", "/",
     {"referrer_url": "https://www.google.com/search?q=shoes"}),
    ("alice", at(12, 1), "page_view", "product", "/p/1", {}),
    ("alice", at(12, 2), "add_to_cart", "product", "/p/1", {"product_id": "p1"}),
    ("alice", at(12, 3), "page_view", "cart", "/cart", {}),
    ("alice", at(12, 4), "begin_checkout", "checkout", "/checkout", {}),
    ("alice", at(12, 5), "purchase", "confirmation", "/checkout/done",
     {"order_id": "o-1", "revenue": Decimal("100.00"), "currency": "EUR"}),
    ("alice", at(12, 50), "page_view", "home", "/?utm_source=newsletter",
     {"utm_source": "newsletter", "utm_medium": "email"}),
    ("bob", at(12, 10), "page_view", "product", "/p/2", {}),
    ("bob", at(12, 10, 30), "add_to_cart", "product", "/p/2", {"product_id": "p2"}),
    ("bob", at(12, 12), "page_view", "cart", "/cart", {}),
    ("carol", at(12, 20), "search", "search", "/search?q=shoes",
     {"referrer_url": "https://t.co/abc", "search_query": "shoes"}),
    ("carol", at(12, 21), "page_view", "product", "/p/1", {}),
    ("carol", at(12, 22), "add_to_cart", "product", "/p/1", {"product_id": "p1"}),
    ("carol", at(12, 23), "purchase", "confirmation", "/checkout/done",
     {"order_id": "o-2", "revenue": Decimal("50.50"), "currency": "EUR"}),
    ("dave", at(11, 50), "page_view", "home", "/", {}),
    ("dave", at(12, 5), "page_view", "product", "/p/3", {}),
    ("dave", at(12, 6), "page_view", "home", "/", {}),
    ("dave", at(12, 40), "page_view", "home", "/", {}),
    ("dave", at(12, 41), "page_view", "product", "/p/1", {}),
    ("dave", at(12, 42), "begin_checkout", "checkout", "/checkout", {}),
    ("dave", at(12, 43), "purchase", "confirmation", "/checkout/done",
     {"order_id": "o-3", "revenue": Decimal("20.00"), "currency": "EUR"}),
    ("erin", at(12, 59, 59), "page_view", "home", "/", {}),
    ("erin", at(13, 0), "page_view", "category", "/c/shoes", {}),
    # Same instant: the contract orders by event id, and the cart event's id is the lower one.
    ("frank", at(12, 30), "add_to_cart", "product", "/p/2", {"product_id": "p2"}),
    ("frank", at(12, 30), "page_view", "product", "/p/2", {}),
    ("heidi", at(12, 35), "search", "search", "/search?q=boots",
     {"referrer_url": "https://www.bing.com/", "search_query": "boots"}),
    ("ivan", at(12, 15), "page_view", "home", "/", {"referrer_url": "https://www.google.com/"}),
    ("ivan", at(12, 16), "page_view", "product", "/p/3", {}),
    ("ivan", at(12, 17), "begin_checkout", "checkout", "/checkout", {}),
    ("ivan", at(12, 18), "purchase", "confirmation", "/checkout/done",
     {"order_id": "o-4", "revenue": Decimal("29.50"), "currency": "EUR"}),
    ("judy", at(12, 55), "page_view", "home", "/",
     {"referrer_url": "https://www.instagram.com/"}),
]  # fmt: skip


def event_id(number: int) -> str:
    """Increasing ids in list order (so frank's cart event has the lower id)."""
    return f"00000000-0000-4000-8000-{number:012d}"


def click_events() -> list[ClickEvent]:
    """The data set as validated events (in list order)."""
    out = []
    for number, (user, when, kind, page_type, path, extra) in enumerate(_EVENTS, start=1):
        fields = {
            "event_id": event_id(number),
            "event_type": kind,
            "occurred_at": when.isoformat(),
            "user_id": user,
            "page_url": SITE + path,
            "page_type": page_type,
            **_VISITORS[user],
            **extra,
        }
        # Through JSON, as the consumer sees events (the model is strict about Python types).
        out.append(ClickEvent.model_validate_json(json.dumps(fields, default=float)))
    return out


def store(engine: Engine, events: list[ClickEvent]) -> None:
    """Write events through the real SQL sink, in one committed batch."""
    with engine.begin() as conn:
        write_batch(
            conn,
            events=[PositionedEvent(e, 0, n) for n, e in enumerate(events)],
            rules=SessionRules(),
        )


def load(engine: Engine) -> None:
    """Store the data set through the real SQL sink, in two batches in reverse order.

    Reverse arrival exercises the late-event path; the sessions must not depend on it.
    """
    events = list(reversed(click_events()))
    store(engine, events[:15])
    store(engine, events[15:])


def sqlite_database(directory: Path) -> str:
    """The URL of a SQLite database in ``directory``, migrated and loaded with the data set."""
    url = f"sqlite:///{directory / 'analytics.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        load(engine)
    finally:
        engine.dispose()
    return url


# Sessions by hand: (user, started, ended, events, page views, purchases, revenue, bounced,
# entry path, exit path, conversion path, source, device, os, browser, country)
_SESSIONS = [
    ("alice", at(12, 0), at(12, 5), 6, 3, 1, Decimal("100.00"), False, "/",
     "/checkout/done", "home > product > cart > checkout > confirmation", "google.com",
     "desktop", "Windows", "Chrome", "DE"),
    ("alice", at(12, 50), at(12, 50), 1, 1, 0, Decimal("0.00"), True,
     "/?utm_source=newsletter", "/?utm_source=newsletter", None, "newsletter",
     "desktop", "Windows", "Chrome", "DE"),
    ("bob", at(12, 10), at(12, 12), 3, 2, 0, Decimal("0.00"), False, "/p/2", "/cart",
     None, "direct", "mobile", "iOS", "Safari", "US"),
    ("carol", at(12, 20), at(12, 23), 4, 1, 1, Decimal("50.50"), False, "/search?q=shoes",
     "/checkout/done", "search > product > confirmation", "t.co",
     "tablet", "Android", "Chrome", "FR"),
    ("dave", at(11, 50), at(12, 6), 3, 3, 0, Decimal("0.00"), False, "/", "/", None,
     "direct", "desktop", "Linux", "Firefox", "DE"),
    ("dave", at(12, 40), at(12, 43), 4, 2, 1, Decimal("20.00"), False, "/",
     "/checkout/done", "home > product > checkout > confirmation", "direct",
     "desktop", "Linux", "Firefox", "DE"),
    ("erin", at(12, 59, 59), at(13, 0), 2, 2, 0, Decimal("0.00"), False, "/", "/c/shoes",
     None, "direct", "mobile", None, None, None),
    ("frank", at(12, 30), at(12, 30), 2, 1, 0, Decimal("0.00"), False, "/p/2", "/p/2",
     None, "direct", "desktop", "macOS", "Safari", "GB"),
    ("heidi", at(12, 35), at(12, 35), 1, 0, 0, Decimal("0.00"), True, "/search?q=boots",
     "/search?q=boots", None, "bing.com", "mobile", "Android", "Chrome", "US"),
    ("ivan", at(12, 15), at(12, 18), 4, 2, 1, Decimal("29.50"), False, "/",
     "/checkout/done", "home > product > checkout > confirmation", "google.com",
     "desktop", "Windows", "Edge", "NL"),
    ("judy", at(12, 55), at(12, 55), 1, 1, 0, Decimal("0.00"), True, "/", "/", None,
     "instagram.com", "mobile", "iOS", "Safari", "US"),
]  # fmt: skip
EXPECTED_SESSIONS = sorted(_SESSIONS)


class AnalyticsCases:
    """The expectations; subclasses provide fixtures ``conn`` (a connection to a migrated
    database holding the data set) and ``empty_engine`` (a migrated, empty database)."""

    def test_a_snapshot_keeps_reading_the_data_of_its_first_query(
        self, empty_engine: Engine
    ) -> None:
        events = click_events()
        store(empty_engine, events[:10])  # alice and bob: A1, A2, B1
        with analytics.snapshot(empty_engine) as conn:
            assert analytics.kpis(conn, time_range=RANGE).sessions == 3
            store(empty_engine, events[10:])  # committed by another connection meanwhile
            assert analytics.kpis(conn, time_range=RANGE).sessions == 3
            assert analytics.funnel(conn, time_range=RANGE).sessions == 3
        with analytics.snapshot(empty_engine) as conn:
            assert analytics.kpis(conn, time_range=RANGE).sessions == 10

    def test_the_sessions_table_holds_the_sessions_worked_out_by_hand(
        self, conn: Connection
    ) -> None:
        s = sessions_table.c
        rows = conn.execute(
            select(
                s.user_id, s.started_at, s.ended_at, s.event_count, s.page_views, s.purchases,
                s.revenue, s.bounced, s.entry_page, s.exit_page, s.conversion_path,
                s.traffic_source, s.device_type, s.os, s.browser, s.country,
                s.duration_seconds, s.converted,
            )
        ).all()  # fmt: skip
        observed = sorted(
            (
                *row[:8],
                row[8].removeprefix(SITE),
                row[9].removeprefix(SITE),
                *row[10:16],
            )
            for row in rows
        )
        assert observed == EXPECTED_SESSIONS
        for row in rows:
            assert row[16] == (row[2] - row[1]).total_seconds()
            assert row[17] == (row[5] > 0)

    def test_kpis(self, conn: Connection) -> None:
        k = analytics.kpis(conn, time_range=RANGE)
        assert k.sessions == 10  # A1 A2 B1 C1 D1 E1 F1 H1 I1 J1 (D0 started at 11:50)
        assert k.visitors == 9  # alice has two sessions
        assert k.events == 29  # 31 events minus dave's 11:50 and erin's 13:00:00
        assert k.page_views == 16
        assert k.bounced_sessions == 3  # A2, H1, J1
        assert k.bounce_rate == pytest.approx(0.3)
        assert k.converted_sessions == 4  # A1, C1, D1, I1
        assert k.conversion_rate == pytest.approx(0.4)
        # 300 + 0 + 120 + 180 + 180 + 1 + 0 + 0 + 180 + 0 = 961 seconds over 10 sessions
        assert k.average_duration_seconds == pytest.approx(96.1)
        # session page views 3+1+2+1+2+2+1+0+2+1 = 15 (erin's 13:00 view counts, dave's D0 not)
        assert k.views_per_visit == pytest.approx(1.5)
        assert k.purchases == 4
        assert k.revenue == Decimal("200.00")
        assert k.currency == "EUR"

    def test_kpis_of_a_part_of_the_hour(self, conn: Connection) -> None:
        k = analytics.kpis(conn, time_range=TimeRange(at(12, 30), at(12, 45)))
        assert (k.sessions, k.visitors) == (3, 3)  # F1 12:30, H1 12:35, D1 12:40
        assert k.bounce_rate == pytest.approx(1 / 3)  # H1
        assert k.conversion_rate == pytest.approx(1 / 3)  # D1
        assert k.average_duration_seconds == pytest.approx(60.0)  # (0 + 0 + 180) / 3
        assert k.views_per_visit == pytest.approx(1.0)  # (1 + 0 + 2) / 3
        assert (k.events, k.page_views) == (7, 3)  # f1 f2 h1 d4 d5 d6 d7
        assert (k.purchases, k.revenue) == (1, Decimal("20.00"))

    def test_an_empty_range_has_no_rates_rather_than_zero_rates(self, conn: Connection) -> None:
        empty = TimeRange(at(14, 0), at(15, 0))
        k = analytics.kpis(conn, time_range=empty)
        assert (k.sessions, k.visitors, k.events, k.page_views, k.purchases) == (0, 0, 0, 0, 0)
        assert k.bounce_rate is None
        assert k.conversion_rate is None
        assert k.average_duration_seconds is None
        assert k.views_per_visit is None
        assert k.revenue == Decimal("0.00")
        assert k.currency is None
        f = analytics.funnel(conn, time_range=empty)
        assert [step.sessions for step in f.steps] == [0, 0, 0, 0, 0]
        assert [step.drop_off for step in f.steps] == [None] * 5
        assert analytics.conversion_paths(conn, time_range=empty).paths == ()
        assert analytics.sources(conn, time_range=empty) == ()

    def test_traffic_by_hour(self, conn: Connection) -> None:
        t = analytics.traffic(conn, time_range=TimeRange(at(11, 0), at(14, 0)), bucket=Bucket.HOUR)
        assert t.bucket is Bucket.HOUR
        measures = [
            (p.start, p.events, p.page_views, p.add_to_carts, p.purchases, p.revenue, p.sessions)
            for p in t.points
        ]
        assert measures == [
            (at(11, 0), 1, 1, 0, 0, Decimal("0.00"), 1),  # dave 11:50, D0
            (at(12, 0), 29, 16, 4, 4, Decimal("200.00"), 10),
            (at(13, 0), 1, 1, 0, 0, Decimal("0.00"), 0),  # erin 13:00:00
        ]

    def test_traffic_by_minute(self, conn: Connection) -> None:
        t = analytics.traffic(conn, time_range=RANGE, bucket=Bucket.MINUTE)
        assert [p.start for p in t.points] == [at(12, m) for m in range(60)]
        by_minute = {
            p.start.minute: (p.events, p.page_views, p.add_to_carts, p.purchases, p.revenue,
                             p.sessions)
            for p in t.points
        }  # fmt: skip
        assert by_minute[0] == (1, 1, 0, 0, Decimal("0.00"), 1)
        assert by_minute[5] == (2, 1, 0, 1, Decimal("100.00"), 0)  # alice buys, dave views
        assert by_minute[10] == (2, 1, 1, 0, Decimal("0.00"), 1)  # 12:10:00 and 12:10:30
        assert by_minute[18] == (1, 0, 0, 1, Decimal("29.50"), 0)
        assert by_minute[30] == (2, 1, 1, 0, Decimal("0.00"), 1)
        assert by_minute[59] == (1, 1, 0, 0, Decimal("0.00"), 1)
        assert by_minute[1] == (1, 1, 0, 0, Decimal("0.00"), 0)
        assert by_minute[7] == (0, 0, 0, 0, Decimal("0.00"), 0)  # an empty minute is present
        # Additive measures add up to the range's totals; the rates are not in the chart.
        assert sum(p.events for p in t.points) == 29
        assert sum(p.page_views for p in t.points) == 16
        assert sum(p.sessions for p in t.points) == 10

    def test_traffic_of_a_range_not_on_minutes_adds_up_to_its_kpis(self, conn: Connection) -> None:
        # 12:10:15 to 12:59:30: bob's 12:10:00 view and erin's 12:59:59 view fall outside, in
        # minutes that the range cuts. Inside: alice 1, bob 2, carol 4, dave 4, frank 2,
        # heidi 1, ivan 4, judy 1 = 19 events, 9 of them page views, 3 purchases.
        cut = TimeRange(at(12, 10, 15), at(12, 59, 30))
        t = analytics.traffic(conn, time_range=cut, bucket=Bucket.MINUTE)
        assert [p.start for p in t.points] == [at(12, m) for m in range(10, 60)]
        by_minute = {
            p.start.minute: (p.events, p.page_views, p.add_to_carts, p.purchases, p.revenue,
                             p.sessions)
            for p in t.points
        }  # fmt: skip
        # bob's 12:10:30 cart event only; his session started at 12:10:00, before the range.
        assert by_minute[10] == (1, 0, 1, 0, Decimal("0.00"), 0)
        assert by_minute[59] == (0, 0, 0, 0, Decimal("0.00"), 0)
        totals = (
            sum(p.events for p in t.points),
            sum(p.page_views for p in t.points),
            sum(p.purchases for p in t.points),
            sum((p.revenue for p in t.points), Decimal("0.00")),
        )
        assert totals == (19, 9, 3, Decimal("100.00"))  # 50.50 + 20.00 + 29.50
        k = analytics.kpis(conn, time_range=cut)
        assert (k.events, k.page_views, k.purchases, k.revenue) == totals

    def test_traffic_of_a_range_inside_one_or_two_minutes(self, conn: Connection) -> None:
        inside = analytics.traffic(
            conn, time_range=TimeRange(at(12, 10, 15), at(12, 10, 45)), bucket=Bucket.MINUTE
        )
        assert [(p.start, p.events, p.add_to_carts) for p in inside.points] == [
            (at(12, 10), 1, 1)  # bob's 12:10:30
        ]
        across = analytics.traffic(
            conn, time_range=TimeRange(at(12, 9, 30), at(12, 10, 20)), bucket=Bucket.MINUTE
        )
        assert [(p.start, p.events, p.page_views) for p in across.points] == [
            (at(12, 9), 0, 0),
            (at(12, 10), 1, 1),  # bob's 12:10:00
        ]

    def test_top_pages(self, conn: Connection) -> None:
        pages = analytics.top_pages(conn, time_range=RANGE)
        assert [(p.page_url.removeprefix(SITE), p.page_views, p.visitors) for p in pages] == [
            ("/", 6, 5),  # alice, dave x2, erin, ivan, judy
            ("/p/1", 3, 3),
            ("/cart", 2, 2),  # ties by URL in code-point order
            ("/p/2", 2, 2),
            ("/p/3", 2, 2),  # dave at 12:05 (session D0, but the view is in range) and ivan
            ("/?utm_source=newsletter", 1, 1),
        ]
        assert len(analytics.top_pages(conn, time_range=RANGE, limit=2)) == 2

    def test_sources(self, conn: Connection) -> None:
        rows = analytics.sources(conn, time_range=RANGE)
        assert [(r.source, r.sessions, r.visitors, r.converted_sessions) for r in rows] == [
            ("direct", 4, 4, 1),  # B1 D1 E1 F1
            ("google.com", 2, 2, 2),  # A1 I1 ("www." removed)
            ("bing.com", 1, 1, 0),
            ("instagram.com", 1, 1, 0),
            ("newsletter", 1, 1, 0),  # utm_source wins over the referrer
            ("t.co", 1, 1, 1),
        ]
        assert [r.share for r in rows] == pytest.approx([0.4, 0.2, 0.1, 0.1, 0.1, 0.1])

    def test_countries(self, conn: Connection) -> None:
        rows = analytics.countries(conn, time_range=RANGE)
        assert [(r.country, r.sessions, r.visitors) for r in rows] == [
            ("DE", 3, 2),  # alice twice, dave once
            ("US", 3, 3),  # bob, heidi, judy
            ("FR", 1, 1),
            ("GB", 1, 1),
            ("NL", 1, 1),
            (None, 1, 1),  # erin: unknown sorts last among equals
        ]
        assert [r.share for r in rows] == pytest.approx([0.3, 0.3, 0.1, 0.1, 0.1, 0.1])

    def test_map_points(self, conn: Connection) -> None:
        points = analytics.map_points(conn, time_range=RANGE)
        assert [(p.latitude, p.longitude, p.events, p.visitors) for p in points] == [
            (52.5, 13.4, 7, 1),  # alice, Berlin
            (48.1, 11.6, 6, 1),  # dave, Munich (his 11:50 event is out of range)
            (42.4, -71.1, 4, 2),  # bob and judy, Boston
            (48.9, 2.4, 4, 1),  # carol, Paris
            (52.4, 4.9, 4, 1),  # ivan, Amsterdam
            (51.5, -0.1, 2, 1),  # frank, London
            (40.7, -74.0, 1, 1),  # heidi, New York
        ]

    def test_devices(self, conn: Connection) -> None:
        d = analytics.devices(conn, time_range=RANGE)
        assert [(r.name, r.sessions) for r in d.device_types] == [
            ("desktop", 5),
            ("mobile", 4),
            ("tablet", 1),
        ]
        assert [r.share for r in d.device_types] == pytest.approx([0.5, 0.4, 0.1])
        assert [(r.name, r.sessions) for r in d.operating_systems] == [
            ("Windows", 3),
            ("Android", 2),
            ("iOS", 2),
            ("Linux", 1),
            ("macOS", 1),
            (None, 1),
        ]
        assert [(r.name, r.sessions) for r in d.browsers] == [
            ("Chrome", 4),
            ("Safari", 3),
            ("Edge", 1),
            ("Firefox", 1),
            (None, 1),
        ]

    def test_funnel(self, conn: Connection) -> None:
        f = analytics.funnel(conn, time_range=RANGE)
        assert f.sessions == 10
        assert [(s.name, s.sessions) for s in f.steps] == [
            ("visit", 9),  # all but H1 (a search only)
            ("product", 6),  # A1 B1 C1 D1 F1 I1; bob lands on a product page
            ("add_to_cart", 3),  # A1 B1 C1; frank's cart event comes before his product view
            ("begin_checkout", 1),  # A1 (carol buys without a checkout step)
            ("purchase", 1),  # A1 (D1 and I1 skipped the cart)
        ]
        assert [s.drop_off for s in f.steps] == [
            None,
            pytest.approx(1 / 3),
            pytest.approx(0.5),
            pytest.approx(2 / 3),
            pytest.approx(0.0),
        ]
        assert [s.share_of_first for s in f.steps] == pytest.approx(
            [1.0, 6 / 9, 3 / 9, 1 / 9, 1 / 9]
        )

    def test_conversion_paths(self, conn: Connection) -> None:
        p = analytics.conversion_paths(conn, time_range=RANGE)
        assert p.converted_sessions == 4
        assert [(r.path, r.sessions) for r in p.paths] == [
            ("home > product > checkout > confirmation", 2),  # D1, I1
            ("home > product > cart > checkout > confirmation", 1),  # A1
            ("search > product > confirmation", 1),  # C1
        ]
        assert [r.share for r in p.paths] == pytest.approx([0.5, 0.25, 0.25])
        top = analytics.conversion_paths(conn, time_range=RANGE, limit=1)
        assert top.converted_sessions == 4
        assert [r.sessions for r in top.paths] == [2]

    def test_current_visitors(self, conn: Connection) -> None:
        def current(hour: int, minute: int, second: int = 0) -> int:
            return analytics.current_visitors(conn, now=at(hour, minute, second))

        assert current(12, 59, 59) == 2  # judy 12:55, erin 12:59:59
        assert current(13, 0) == 2  # judy exactly 5 minutes ago still counts; erin
        assert current(13, 0, 1) == 1  # erin only
        assert current(12, 54, 59) == 1  # alice 12:50
        assert current(11, 0) == 0
        assert analytics.current_visitors(conn, now=at(12, 12), window=timedelta(minutes=15)) == 3

    def test_dashboard_bundles_every_figure(self, conn: Connection) -> None:
        d = analytics.dashboard(conn, time_range=RANGE, now=at(12, 59, 59))
        assert d.kpis == analytics.kpis(conn, time_range=RANGE)
        assert d.current_visitors == 2
        assert d.traffic.bucket is Bucket.MINUTE
        assert d.funnel.steps[1].sessions == 6
        assert d.conversion_paths.converted_sessions == 4
        assert len(d.map_points) == 7

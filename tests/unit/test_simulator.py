"""The traffic simulator: valid events, consistent visitors, realistic sessions, determinism."""

from __future__ import annotations

import json
import math
import random
import re
import uuid
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import islice, pairwise
from urllib.parse import urlsplit

import pytest
from faker import Faker

from clickstream.errors import ConfigError
from clickstream.events import ClickEvent, DeviceType, EventType, PageType, decode_event
from clickstream.simulator import (
    CITIES,
    Campaign,
    Channel,
    SimulatedEvent,
    SimulatorConfig,
    TrafficSimulator,
    event_details,
    page_visit,
    visitor,
)
from clickstream.simulator import _dwell_table as dwell_table
from clickstream.simulator import _format_uuid4 as format_uuid4
from clickstream.simulator import _format_uuid4_batch as format_uuid4_batch

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
T0_MS = 1796025600000  # 2026-11-30T08:00:00Z, computed by hand: 20787 days * 86400 + 8 h
HOUR_MS = 3_600_000
RATE = 8.0
"""Events per second of the long sample: low, so that it spans hours of event time."""
SAMPLE_HOURS = 3.5
STARTED_BEFORE_HOURS = 2.5
"""Sessions counted for conversion started this early, so every one of them has ended."""


def fixed_clock() -> datetime:
    return T0


def simulate(
    count: int, *, seed: int = 42, config: SimulatorConfig | None = None
) -> list[SimulatedEvent]:
    simulator = TrafficSimulator(config, seed=seed, clock=fixed_clock)
    return list(islice(simulator, count))


@pytest.fixture(scope="module")
def long_sample() -> list[SimulatedEvent]:
    """Hours of traffic at a low rate: enough sessions, returns and purchases to count."""
    simulator = TrafficSimulator(
        SimulatorConfig(events_per_second=RATE), seed=2026, clock=fixed_clock
    )
    end = T0_MS + int(SAMPLE_HOURS * HOUR_MS)
    events = []
    for event in simulator:
        if event.occurred_ms > end:
            break
        events.append(event)
    return events


def sessions_of(events: list[SimulatedEvent]) -> dict[str, list[SimulatedEvent]]:
    sessions: dict[str, list[SimulatedEvent]] = defaultdict(list)
    for event in events:
        assert event.session_id is not None
        sessions[event.session_id].append(event)
    return sessions


# -- the contract ---------------------------------------------------------------------------------


def test_first_event_starts_at_the_clock() -> None:
    first = simulate(1)[0]
    assert first.occurred_ms == T0_MS
    assert first.occurred_at == T0


def test_every_event_satisfies_the_contract(long_sample: list[SimulatedEvent]) -> None:
    # Every purchase and checkout, and a long run of everything else.
    chosen = long_sample[:15_000] + [
        e for e in long_sample if e.event_type in {EventType.PURCHASE, EventType.BEGIN_CHECKOUT}
    ]
    for event in chosen:
        now = event.occurred_at
        decoded = decode_event(event.to_json(), now=now, future_tolerance=timedelta(0))
        assert decoded == event.to_click_event()
        assert decoded.user_id == event.user_id
        assert decoded.occurred_at == event.occurred_at


def test_fast_serializer_is_byte_identical_to_the_model(
    long_sample: list[SimulatedEvent],
) -> None:
    for event in long_sample[:20_000]:
        assert event.to_json() == event.to_click_event().to_json()


def test_fast_serializer_escapes_like_the_model() -> None:
    tricky = 'quote " backslash \\ tab \t newline \n nul \x00 esc \x1b del \x7f é 😀 \u2028 /'
    someone = visitor(
        user_id=tricky[:128],
        device_type=DeviceType.TABLET,
        os=tricky,
        browser="Samsung Internet",
        country="SE",
        city="Malmö",
        latitude=0.00001,  # Python writes 1e-05, pydantic 0.00001
        longitude=-0.00009,
        channel=Channel.DIRECT,
    )
    page = page_visit(
        someone,
        session_id=tricky,
        page_url="https://shop.example.com/search?q=%22x%22",
        page_type=PageType.SEARCH,
        # URLs may hold no control characters (the contract); the rest is escaped alike.
        referrer_url="https://ex.example/" + re.sub(r"[\x00-\x1f\x7f]", "", tricky),
        campaign=Campaign('news"letter', "e\\mail", tricky),
    )
    details = [
        event_details(search_query=tricky),
        event_details(product_id=tricky),
        event_details(order_id="ORD-1", revenue=Decimal("0.10"), currency="EUR"),
        event_details(order_id="ORD-2", revenue=Decimal("1234567890.12"), currency="USD"),
        event_details(order_id="ORD-3", revenue=Decimal("0.00"), currency="JPY"),
    ]
    for detail in details:
        event_type = EventType.PURCHASE if detail.order_id else EventType.SEARCH
        event = SimulatedEvent(
            "3f2b8c1e-9d4a-4c6b-8e2f-1a7d5c9b0e44", event_type, T0_MS + 7, someone, page, detail
        )
        assert event.to_json() == event.to_click_event().to_json()


@pytest.mark.parametrize(
    ("offset_ms", "expected"),
    [
        (0, '"occurred_at":"2026-11-30T08:00:00Z"'),
        (1, '"occurred_at":"2026-11-30T08:00:00.001000Z"'),
        (59_999, '"occurred_at":"2026-11-30T08:00:59.999000Z"'),
        (16 * HOUR_MS, '"occurred_at":"2026-12-01T00:00:00Z"'),
    ],
)
def test_times_are_written_as_the_model_writes_them(offset_ms: int, expected: str) -> None:
    event = simulate(1)[0]._replace(occurred_ms=T0_MS + offset_ms)
    assert expected.encode() in event.to_json()
    assert event.to_json() == event.to_click_event().to_json()


@pytest.mark.parametrize("clamp", [False, True])
def test_wire_path_yields_the_same_keys_bytes_and_times_as_the_records(clamp: bool) -> None:
    def records() -> list[tuple[bytes, bytes, int]]:
        simulator = TrafficSimulator(seed=21, clock=fixed_clock, clamp_to_clock=clamp)
        return [(e.visitor.key, e.to_json(), e.occurred_ms) for e in islice(simulator, 6000)]

    simulator = TrafficSimulator(seed=21, clock=fixed_clock, clamp_to_clock=clamp)
    wire = [tuple(message) for message in islice(simulator.messages(), 6000)]
    assert wire == records()


def test_wire_path_of_a_backfill_ends_where_the_records_end() -> None:
    def make() -> TrafficSimulator:
        return TrafficSimulator.backfill(
            seed=4, clock=fixed_clock, window=timedelta(minutes=10), count=3000
        )

    expected = [(e.visitor.key, e.to_json(), e.occurred_ms) for e in make()]
    assert [tuple(message) for message in make().messages()] == expected
    assert all(ms <= T0_MS for _, _, ms in expected)


def test_visitor_fragments_are_what_the_public_helper_renders(
    long_sample: list[SimulatedEvent],
) -> None:
    # The simulator renders a visitor's JSON from pieces and repr(); visitor() uses pydantic.
    seen = {event.visitor for event in long_sample[:20_000]}
    assert len(seen) > 1000
    for someone in seen:
        assert someone == visitor(
            user_id=someone.user_id,
            device_type=someone.device_type,
            os=someone.os,
            browser=someone.browser,
            country=someone.country,
            city=someone.city,
            latitude=someone.latitude,
            longitude=someone.longitude,
            channel=someone.channel,
        )


def test_dwell_table_follows_the_log_normal_law() -> None:
    # Median 40 s, sigma 0.9: the 90th percentile is 40 * exp(0.9 * 1.28155) = 126.76 s, the
    # 10th 40 / exp(0.9 * 1.28155) = 12.62 s; the table is clamped to [1 s, 900 s].
    table = dwell_table(40.0, 0.9, 900.0)

    def quantile(p: float) -> float:
        step = p * len(table)
        start, slope = table[int(step)]
        return start + (step - int(step)) * slope

    assert quantile(0.5) == pytest.approx(40_000, rel=1e-9)
    assert quantile(0.9) == pytest.approx(126_760, rel=1e-3)
    assert quantile(0.1) == pytest.approx(12_622, rel=1e-3)
    # The outer knots, at a quarter step (z = -3.84 and 3.84): 40 * exp(0.9 * -3.84) = 1.26 s
    # and 40 * exp(0.9 * 3.84) = 1269 s, cut to 900 s.
    assert 1000.0 < table[0][0] < 2000.0
    assert table[-1][0] + table[-1][1] == 900_000.0
    assert dwell_table(2.0, 0.9, 900.0)[0][0] == 1000.0, "never under a second"
    assert all(slope >= 0 for _, slope in table)


def test_ids_drawn_in_batches_are_those_drawn_one_by_one() -> None:
    # A batch popped from its end gives the ids of consecutive getrandbits(128) draws.
    batch = format_uuid4_batch(random.Random(77).getrandbits(128 * 1024))
    one_by_one = random.Random(77)
    assert batch[::-1] == [format_uuid4(one_by_one.getrandbits(128)) for _ in range(1024)]
    assert all(str(uuid.UUID(i)) == i and uuid.UUID(i).version == 4 for i in batch)


def test_click_events_yields_validated_models() -> None:
    simulator = TrafficSimulator(seed=5, clock=fixed_clock)
    models = list(islice(simulator.click_events(), 50))
    assert all(isinstance(model, ClickEvent) for model in models)
    assert [m.to_json() for m in models] == [e.to_json() for e in simulate(50, seed=5)]


# -- determinism and order ------------------------------------------------------------------------


def test_same_seed_gives_the_same_events() -> None:
    first = [event.to_json() for event in simulate(3000, seed=7)]
    second = [event.to_json() for event in simulate(3000, seed=7)]
    assert first == second


def test_another_seed_gives_other_events() -> None:
    first = {event.user_id for event in simulate(500, seed=7)}
    second = {event.user_id for event in simulate(500, seed=8)}
    assert not first & second


def test_events_are_in_time_order_overall_and_per_user(
    long_sample: list[SimulatedEvent],
) -> None:
    times = [event.occurred_ms for event in long_sample]
    assert times == sorted(times)
    per_user: dict[str, list[int]] = defaultdict(list)
    for event in long_sample:
        per_user[event.user_id].append(event.occurred_ms)
    assert all(ms == sorted(ms) for ms in per_user.values())


@pytest.mark.parametrize("bits", [0, 2**128 - 1, 0x0123456789ABCDEF0123456789ABCDEF, 12345])
def test_ids_are_formatted_as_the_uuid_module_formats_version_4(bits: int) -> None:
    assert format_uuid4(bits) == str(uuid.UUID(int=bits, version=4))


def test_visitor_ids_are_fakers_uuid4_from_the_same_generator() -> None:
    fake = Faker()
    fake.seed_instance(5)
    expected = [fake.uuid4() for _ in range(3)]
    fake.seed_instance(5)
    assert [format_uuid4(fake.random.getrandbits(128)) for _ in range(3)] == expected


def test_event_ids_are_unique_random_uuids(long_sample: list[SimulatedEvent]) -> None:
    ids = [event.event_id for event in long_sample]
    assert len(set(ids)) == len(ids)
    # Version 4, RFC 4122 variant.
    assert all(i[14] == "4" and i[19] in "89ab" for i in ids)


def test_many_visitors_are_active_at_once(long_sample: list[SimulatedEvent]) -> None:
    spans = {
        session_id: (events[0].occurred_ms, events[-1].occurred_ms)
        for session_id, events in sessions_of(long_sample).items()
    }
    moment = T0_MS + 2 * HOUR_MS
    active = sum(1 for first, last in spans.values() if first <= moment <= last)
    # Steady state: (8 events/s / about 4 events per session) * about 2 minutes per session.
    assert active >= 100


def test_the_configured_rate_is_kept_on_average(long_sample: list[SimulatedEvent]) -> None:
    # The third hour: the shop has been busy for two hours by then.
    hour = [e for e in long_sample if T0_MS + 2 * HOUR_MS <= e.occurred_ms < T0_MS + 3 * HOUR_MS]
    assert abs(len(hour) - RATE * 3600) < 0.1 * RATE * 3600


# -- visitors: device and location ----------------------------------------------------------------

# Which browsers ship on which system, and on which kind of device (written out by hand).
ALLOWED_BROWSERS = {
    "Windows": {"Chrome", "Edge", "Firefox"},
    "macOS": {"Safari", "Chrome", "Firefox"},
    "Linux": {"Chrome", "Firefox"},
    "ChromeOS": {"Chrome"},
    "iOS": {"Safari", "Chrome"},
    "Android": {"Chrome", "Samsung Internet", "Firefox"},
}
ALLOWED_DEVICES = {
    "Windows": {"desktop"},
    "macOS": {"desktop"},
    "Linux": {"desktop"},
    "ChromeOS": {"desktop"},
    "iOS": {"mobile", "tablet"},
    "Android": {"mobile", "tablet"},
}


def test_device_type_os_and_browser_belong_together(long_sample: list[SimulatedEvent]) -> None:
    seen = set()
    for event in long_sample:
        visitor = event.visitor
        assert visitor.device_type in ALLOWED_DEVICES[visitor.os], visitor
        assert visitor.browser in ALLOWED_BROWSERS[visitor.os], visitor
        seen.add(visitor.device_type)
    assert seen == {"desktop", "mobile", "tablet"}


def test_a_visitor_keeps_device_and_location_in_every_event(
    long_sample: list[SimulatedEvent],
) -> None:
    first_seen: dict[str, tuple[object, ...]] = {}
    for event in long_sample:
        wire = json.loads(event.to_json())
        identity = tuple(
            wire[name]
            for name in ("device_type", "os", "browser", "country", "city", "latitude", "longitude")
        )
        assert first_seen.setdefault(wire["user_id"], identity) == identity


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    # Haversine on a 6371 km sphere.
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371 * math.asin(math.sqrt(a))


# A few real cities, written out independently of the simulator's table.
KNOWN_CITIES = {
    "Berlin": ("DE", 52.52, 13.405),
    "London": ("GB", 51.507, -0.128),
    "Paris": ("FR", 48.857, 2.352),
    "New York": ("US", 40.713, -74.006),
    "São Paulo": ("BR", -23.551, -46.633),
    "Tokyo": ("JP", 35.676, 139.650),
    "Sydney": ("AU", -33.869, 151.209),
    "Kraków": ("PL", 50.065, 19.945),
}


def test_city_table_has_real_places() -> None:
    table = {city.name: city for city in CITIES}
    for name, (country, latitude, longitude) in KNOWN_CITIES.items():
        assert table[name].country == country
        assert _km(table[name].latitude, table[name].longitude, latitude, longitude) < 5
    assert len(table) == len(CITIES), "city names are unique"
    assert all(len(c.country) == 2 and c.country.isupper() for c in CITIES)


def test_visitors_are_near_a_city_of_their_country(long_sample: list[SimulatedEvent]) -> None:
    table = {city.name: city for city in CITIES}
    checked_known = 0
    for someone in {event.visitor for event in long_sample}:
        city = table[someone.city]
        assert someone.country == city.country
        # Jitter is at most 5 km (+ rounding to 4 decimals).
        assert _km(someone.latitude, someone.longitude, city.latitude, city.longitude) <= 5.05
        if someone.city in KNOWN_CITIES:
            country, latitude, longitude = KNOWN_CITIES[someone.city]
            assert someone.country == country
            assert _km(someone.latitude, someone.longitude, latitude, longitude) < 10
            checked_known += 1
    assert checked_known > 100


# -- sessions -------------------------------------------------------------------------------------


def test_conversion_rate_is_about_three_percent(long_sample: list[SimulatedEvent]) -> None:
    cutoff = T0_MS + int(STARTED_BEFORE_HOURS * HOUR_MS)
    sessions = [s for s in sessions_of(long_sample).values() if s[0].occurred_ms < cutoff]
    converted = sum(any(e.event_type is EventType.PURCHASE for e in s) for s in sessions)
    n, p = len(sessions), 0.03
    assert n > 12_000
    # Binomial: 4.5 standard deviations either side (about 1 in 150,000 by chance).
    tolerance = 4.5 * math.sqrt(p * (1 - p) / n)
    assert abs(converted / n - p) < tolerance, (converted, n)


def test_conversion_rate_is_configurable() -> None:
    config = SimulatorConfig(events_per_second=20.0, conversion_rate=0.25)
    simulator = TrafficSimulator(config, seed=11, clock=fixed_clock)
    cutoff, end = T0_MS + HOUR_MS // 4, T0_MS + HOUR_MS
    events = []
    for event in simulator:
        if event.occurred_ms > end:
            break
        events.append(event)
    sessions = [s for s in sessions_of(events).values() if s[0].occurred_ms < cutoff]
    converted = sum(any(e.event_type is EventType.PURCHASE for e in s) for s in sessions)
    n, p = len(sessions), 0.25
    assert n > 2000
    assert abs(converted / n - p) < 4.5 * math.sqrt(p * (1 - p) / n), (converted, n)


def test_returning_visitors_come_back_after_more_than_30_minutes(
    long_sample: list[SimulatedEvent],
) -> None:
    per_user: dict[str, list[SimulatedEvent]] = defaultdict(list)
    for event in long_sample:
        per_user[event.user_id].append(event)
    returns = 0
    for events in per_user.values():
        for before, after in pairwise(events):
            gap = after.occurred_ms - before.occurred_ms
            if before.session_id == after.session_id:
                assert gap <= 30 * 60 * 1000, "a session never pauses for 30 minutes"
            else:
                assert gap > 30 * 60 * 1000, "a new session only after 30 minutes"
                returns += 1
    assert returns > 500, "returning visitors are common"


def test_a_session_belongs_to_one_visitor_and_lasts_under_24_hours(
    long_sample: list[SimulatedEvent],
) -> None:
    for events in sessions_of(long_sample).values():
        assert len({e.user_id for e in events}) == 1
        assert events[-1].occurred_ms - events[0].occurred_ms < 24 * HOUR_MS


def test_only_the_landing_page_carries_campaign_tags_and_external_referrer(
    long_sample: list[SimulatedEvent],
) -> None:
    site = "https://shop.example.com"
    tagged = 0
    for events in sessions_of(long_sample).values():
        landing_url = events[0].page.page_url
        previous_url = landing_url
        for event in events:
            page = event.page
            if page.page_url == landing_url and event is not None and page.campaign:
                assert "utm_source=" in page.page_url
                tagged += 1
            if page.page_url != previous_url and event.event_type is EventType.PAGE_VIEW:
                # Every later page view was reached from the previous page.
                assert page.referrer_url == previous_url
                assert page.campaign is None
                previous_url = page.page_url
            assert page.page_url.startswith(site + "/")
    assert tagged > 1000


def test_acquisition_channels_look_like_their_sources(long_sample: list[SimulatedEvent]) -> None:
    landings = [events[0] for events in sessions_of(long_sample).values()]
    media = Counter(e.page.campaign.medium if e.page.campaign else None for e in landings)
    hosts = Counter(urlsplit(e.page.referrer_url).hostname for e in landings if e.page.referrer_url)
    assert {"cpc", "email", "social"} <= set(media)
    assert hosts["www.google.com"] > hosts["www.bing.com"] > 0
    for event in landings:
        campaign = event.page.campaign
        if campaign is not None and campaign.medium == "email":
            assert event.page.referrer_url is None, "mail clients send no referrer"
            assert campaign.source == "newsletter"
        if campaign is not None and campaign.medium == "cpc":
            assert urlsplit(event.page.referrer_url or "").hostname in {
                "www.google.com",
                "www.bing.com",
                "duckduckgo.com",
                "search.yahoo.com",
                "www.ecosia.org",
            }
    # Some sessions bounce: one page view and nothing else.
    bounced = sum(1 for s in sessions_of(long_sample).values() if len(s) == 1)
    assert 0.15 < bounced / len(landings) < 0.6


def test_purchases_follow_the_funnel(long_sample: list[SimulatedEvent]) -> None:
    purchases = 0
    for events in sessions_of(long_sample).values():
        types = [e.event_type for e in events]
        if EventType.PURCHASE not in types:
            continue
        purchases += 1
        at = types.index(EventType.PURCHASE)
        before = events[:at]
        assert any(e.page.page_type is PageType.PRODUCT for e in before)
        assert EventType.ADD_TO_CART in types[:at]
        assert EventType.BEGIN_CHECKOUT in types[:at]
        purchase = events[at]
        assert purchase.page.page_type is PageType.CONFIRMATION
        details = purchase.details
        assert details.order_id is not None and details.order_id.startswith("ORD-")
        assert details.currency == "EUR"
        assert details.revenue is not None
        assert details.revenue > 0
        assert details.revenue == details.revenue.quantize(Decimal("0.01"))
    assert purchases > 300


def test_cart_events_name_a_product(long_sample: list[SimulatedEvent]) -> None:
    kinds = Counter(e.event_type for e in long_sample)
    assert set(kinds) == set(EventType), "every event type occurs"
    pages = Counter(e.page.page_type for e in long_sample)
    assert set(pages) == set(PageType), "every page type occurs"
    for event in long_sample:
        if event.event_type in {EventType.ADD_TO_CART, EventType.REMOVE_FROM_CART}:
            assert event.details.product_id is not None
            assert event.page.page_type in {PageType.PRODUCT, PageType.CART}
        if event.event_type is EventType.SEARCH:
            assert event.details.search_query
            assert event.page.page_type is PageType.SEARCH
        if event.page.page_type is PageType.PRODUCT:
            assert event.details.product_id is not None


# -- backfill and clock ---------------------------------------------------------------------------


def test_backfill_spreads_the_events_over_the_past_window() -> None:
    end = T0
    simulator = TrafficSimulator.backfill(
        seed=3, clock=lambda: end, window=timedelta(hours=2), count=20_000
    )
    events = list(islice(simulator, 20_000))
    assert len(events) == 20_000
    first, last = events[0].occurred_at, events[-1].occurred_at
    # Shifted so that the last event falls within a second of the clock; the margin of a
    # denser timeline leaves the start of the window empty instead: a few minutes of two hours.
    assert end - timedelta(seconds=1) < last <= end
    assert end - timedelta(hours=2) < first < end - timedelta(hours=2) + timedelta(minutes=20)
    in_first_hour = sum(1 for e in events if e.occurred_at < end - timedelta(hours=1))
    assert 0.3 < in_first_hour / len(events) < 0.6


@pytest.mark.parametrize(("count", "window"), [(10, timedelta(hours=1)), (1000, timedelta(days=1))])
def test_a_small_backfill_ends_at_the_clock_and_is_the_same_events_shifted(
    count: int, window: timedelta
) -> None:
    # Up to BACKFILL_ALIGN_MAX events the simulation is shifted by whole seconds: the same
    # events (ids, fields, gaps between them) as the unshifted timeline, moved later.
    end = T0
    shifted = list(
        islice(
            TrafficSimulator.backfill(seed=4, clock=lambda: end, window=window, count=count), count
        )
    )
    assert end - timedelta(seconds=1) < shifted[-1].occurred_at <= end
    assert shifted[0].occurred_at >= end - window
    dense = TrafficSimulator.backfill(seed=4, clock=lambda: end, window=window, count=count)
    unshifted = list(
        islice(
            TrafficSimulator(dense.config, seed=4, clock=lambda: end, start=end - window, end=end),
            count,
        )
    )
    offsets = {b.occurred_ms - a.occurred_ms for a, b in zip(unshifted, shifted, strict=True)}
    (offset,) = offsets
    assert offset > 0 and offset % 1000 == 0

    def without_time(event: SimulatedEvent) -> dict[str, object]:
        return {**json.loads(event.to_json()), "occurred_at": None}

    assert [without_time(a) for a in unshifted] == [without_time(b) for b in shifted]


@pytest.mark.parametrize(
    ("window", "count"),
    [
        # Shorter than the mean session (about two minutes): most sessions are cut at the end.
        (timedelta(seconds=10), 5_000),
        (timedelta(seconds=100), 30_000),
        (timedelta(minutes=3), 2_000),
        (timedelta(minutes=10), 300),
        (timedelta(hours=6), 40_000),
        (timedelta(days=30), 1_000),
    ],
)
def test_backfill_holds_the_count_inside_the_window(window: timedelta, count: int) -> None:
    # The whole count, every event inside the window: none before it, none after the clock.
    end = T0
    events = list(
        islice(
            TrafficSimulator.backfill(seed=8, clock=lambda: end, window=window, count=count),
            count + 1,
        )
    )
    assert len(events) >= count
    inside = events[:count]
    assert inside[0].occurred_at >= end - window
    assert inside[-1].occurred_at <= end
    assert all(a.occurred_ms <= b.occurred_ms for a, b in pairwise(inside))


def test_backfill_needs_a_window_and_a_count() -> None:
    with pytest.raises(ConfigError):
        TrafficSimulator.backfill(seed=1, clock=fixed_clock, window=timedelta(0), count=5)
    with pytest.raises(ConfigError):
        TrafficSimulator.backfill(seed=1, clock=fixed_clock, window=timedelta(hours=1), count=0)


def test_clamped_events_are_never_in_the_future_of_the_clock() -> None:
    ticks = iter(range(10**9))

    def slow_clock() -> datetime:
        # Each reading is 1 ms later than the last: far slower than simulated time.
        return T0 + timedelta(milliseconds=next(ticks))

    simulator = TrafficSimulator(seed=9, clock=slow_clock, clamp_to_clock=True)
    events = list(islice(simulator, 5000))
    times = [e.occurred_ms for e in events]
    assert times == sorted(times)
    readings = next(ticks)
    assert times[-1] <= T0_MS + readings
    assert times[-1] - times[0] < 60_000, "simulated minutes were squeezed into readings"


def test_a_naive_clock_is_refused() -> None:
    with pytest.raises(ConfigError, match="timezone-aware"):
        TrafficSimulator(seed=1, clock=lambda: datetime(2026, 11, 30, 8))


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"conversion_rate": 1.5},
        {"conversion_rate": -0.1},
        {"events_per_second": 0.0},
        {"return_after_min_seconds": 1800.0},
        {"max_dwell_seconds": 1800.0},
        {"currency": "eur"},
        {"events_per_second": 1e20},  # the arrival clock would stop advancing (float ulp)
        {"events_per_second": 1e-310},
        {"site_url": "shop.example.com"},
        {"site_url": "https://shop.example.com/"},
        # Every page URL built on these would break the contract, or not be a page of the site.
        {"site_url": "https://a b.com"},
        {"site_url": "https://shop.example.com\n"},
        {"site_url": "https://shop.example.com?x=1"},
        {"site_url": "https://shop.example.com#top"},
        {"site_url": "https://shop.example.com:99999"},
        {"site_url": "https://" + "a" * 1020 + ".com"},
        {"device_weights": {DeviceType.DESKTOP: 0.0}},
        {"browse_transitions": {PageType.HOME: {PageType.CONFIRMATION: 1.0}}},
    ],
)
def test_invalid_configuration_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        replace(SimulatorConfig(), **changes)


@pytest.mark.parametrize(
    "url",
    ["http://localhost:8080", "https://shop.example.com/de", "https://b\u00fccher.example"],
)
def test_every_page_url_on_an_allowed_site_url_passes_the_contract(url: str) -> None:
    events = simulate(3000, config=SimulatorConfig(site_url=url))
    for event in events:
        assert event.page.page_url.startswith(url + "/")
        event.to_click_event()  # raises if a page URL breaks the contract


def test_a_backfill_too_dense_for_the_simulator_is_refused_with_what_fits() -> None:
    with pytest.raises(ConfigError, match=r"too dense: about [0-9,]+ at most fit"):
        TrafficSimulator.backfill(
            seed=1, clock=fixed_clock, window=timedelta(seconds=1), count=10**12
        )


def test_a_dense_backfill_ends_when_its_window_does() -> None:
    # Sessions are made when they start; their events past the window are not kept, and the
    # stream ends once nothing inside the window is left (not after more sessions).
    simulator = TrafficSimulator.backfill(
        seed=5, clock=fixed_clock, window=timedelta(seconds=1), count=2000
    )
    events = list(islice(simulator, 10**6))
    assert 2000 <= len(events) < 10**6
    assert all(T0 - timedelta(seconds=1) <= e.occurred_at <= T0 for e in events)
    assert not simulator._buckets  # nothing from after the window was queued


def test_converting_chain_cannot_exit_before_buying() -> None:
    chain = dict(SimulatorConfig().buy_transitions)
    chain[PageType.HOME] = {PageType.CATEGORY: 0.9, "exit": 0.1}
    with pytest.raises(ConfigError, match="cannot exit before buying"):
        SimulatorConfig(buy_transitions=chain)


def test_no_session_id_when_turned_off() -> None:
    events = simulate(100, config=SimulatorConfig(emit_session_id=False))
    assert all(e.session_id is None for e in events)
    assert all(b"session_id" not in e.to_json() for e in events)

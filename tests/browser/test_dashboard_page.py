"""The dashboard page in headless Chromium shows exactly what the read side computes.

Two data sets: simulated shop traffic (realistic, many rows), where every figure on the page is
compared with :mod:`clickstream.analytics`; and the hand-written set of
:mod:`tests.analytics_cases`, where the page must show the numbers worked out on paper.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine

from clickstream import analytics
from clickstream.analytics import TimeRange
from clickstream.dashboard import DashboardApp, DashboardServer
from clickstream.db import make_engine
from clickstream.db.migrate import upgrade
from clickstream.simulator import TrafficSimulator
from clickstream.store import PositionedEvent, SessionRules, write_batch
from tests import analytics_cases

NOW = datetime(2024, 6, 1, 12, 30, 15, tzinfo=UTC)
MINUS = "\u2212"  # the page writes drop-offs with a real minus sign
NO_DATA = "\u2013"  # and a ratio without sessions as an en dash


def _engine(path: Path) -> Engine:
    url = f"sqlite:///{path}"
    upgrade(url)
    return make_engine(url)


def _store(engine: Engine, events: list) -> None:
    for start in range(0, len(events), 1000):
        chunk = events[start : start + 1000]
        with engine.begin() as conn:
            write_batch(
                conn,
                events=[PositionedEvent(e, 0, start + n) for n, e in enumerate(chunk)],
                rules=SessionRules(),
            )


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """Two hours of simulated traffic ending at NOW."""
    engine = _engine(tmp_path_factory.mktemp("simulated") / "dashboard.db")
    simulator = TrafficSimulator.backfill(
        seed=11, clock=lambda: NOW, window=timedelta(hours=2), count=6000
    )
    _store(engine, [event.to_click_event() for event in simulator])
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def hand_written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = _engine(tmp_path_factory.mktemp("hand") / "dashboard.db")
    analytics_cases.load(engine)
    yield engine
    engine.dispose()


def _serve(engine: Engine, *, now: datetime, refresh: float = 60.0) -> DashboardServer:
    server = DashboardServer(
        DashboardApp(engine, clock=lambda: now, refresh_seconds=refresh), port=0
    )
    server.start()
    return server


@pytest.fixture
def simulated_server(simulated: Engine) -> Iterator[DashboardServer]:
    with _serve(simulated, now=NOW) as server:
        yield server


def _open(page, url: str, *, renders: int = 1) -> None:
    page.goto(url)
    page.wait_for_function(
        f"() => Number(document.body.dataset.renders || 0) >= {renders}"
        " && document.querySelector('[data-testid=status]').dataset.state === 'ok'"
    )


def _kpi(page, name: str) -> tuple[str, str]:
    node = page.locator(f"[data-testid=kpi-{name}]")
    return node.get_attribute("data-value") or "", node.locator(".value").inner_text()


def _rows(page, selector: str) -> list[dict[str, str]]:
    return page.eval_on_selector_all(selector, "rows => rows.map(r => ({...r.dataset}))")


def _optional_float(raw: str) -> float | None:
    return None if raw == "" else float(raw)


def test_every_figure_on_the_page_equals_the_read_side(
    page, simulated: Engine, simulated_server: DashboardServer, screenshot
) -> None:
    _open(page, simulated_server.url + "?minutes=60")
    time_range = TimeRange.last_minutes(60, now=NOW)
    with simulated.connect() as conn:
        expected = analytics.dashboard(conn, time_range=time_range, now=NOW)
    k = expected.kpis
    assert k.sessions > 100, "the simulated hour should be busy"

    # KPIs: the raw value behind each tile, and its formatted text.
    assert _kpi(page, "sessions") == (str(k.sessions), f"{k.sessions:,}")
    assert _kpi(page, "visitors") == (str(k.visitors), f"{k.visitors:,}")
    assert _kpi(page, "page-views") == (str(k.page_views), f"{k.page_views:,}")
    raw, text = _kpi(page, "bounce-rate")
    assert (float(raw), text) == (k.bounce_rate, f"{k.bounce_rate * 100:.1f}%")
    raw, text = _kpi(page, "conversion-rate")
    assert (float(raw), text) == (k.conversion_rate, f"{k.conversion_rate * 100:.1f}%")
    raw, text = _kpi(page, "views-per-visit")
    assert (float(raw), text) == (k.views_per_visit, f"{k.views_per_visit:.2f}")
    raw, text = _kpi(page, "avg-duration")
    assert float(raw) == k.average_duration_seconds
    seconds = round(k.average_duration_seconds or 0)
    assert text == f"{seconds // 60}m {seconds % 60:02d}s"
    raw, text = _kpi(page, "revenue")
    assert Decimal(raw).quantize(Decimal("0.01")) == k.revenue
    assert text.startswith("€")
    assert page.get_attribute("[data-testid=current-visitors]", "data-value") == str(
        expected.current_visitors
    )

    # Traffic: one point per minute; its totals equal the range's (minute-aligned range).
    chart = page.locator("[data-testid=traffic-chart]")
    assert chart.get_attribute("data-bucket") == "minute"
    assert chart.get_attribute("data-buckets") == str(len(expected.traffic.points)) == "60"
    assert chart.get_attribute("data-total-page-views") == str(k.page_views)
    assert chart.get_attribute("data-total-events") == str(k.events)
    assert chart.get_attribute("data-total-sessions") == str(k.sessions)
    assert page.locator("[data-testid=traffic-chart] svg path.line-views").count() == 1

    # Map and countries.
    points = _rows(page, "[data-testid=map] [data-testid=map-point]")
    assert sorted((float(p["lat"]), float(p["lon"]), int(p["events"])) for p in points) == sorted(
        (p.latitude, p.longitude, p.events) for p in expected.map_points
    )
    assert [
        (r["country"] or None, int(r["sessions"]), int(r["visitors"]))
        for r in _rows(page, "[data-testid=countries] [data-testid=country-row]")
    ] == [(c.country, c.sessions, c.visitors) for c in expected.countries]

    # Sources, pages, conversion paths.
    assert [
        (r["source"], int(r["sessions"]), int(r["converted"]))
        for r in _rows(page, "[data-testid=sources] [data-testid=source-row]")
    ] == [(s.source, s.sessions, s.converted_sessions) for s in expected.sources]
    assert [
        (r["url"], int(r["views"]), int(r["visitors"]))
        for r in _rows(page, "[data-testid=pages] [data-testid=page-row]")
    ] == [(p.page_url, p.page_views, p.visitors) for p in expected.pages]
    assert page.get_attribute("[data-testid=paths]", "data-converted") == str(
        expected.conversion_paths.converted_sessions
    )
    assert [
        (r["path"], int(r["sessions"]), float(r["share"]))
        for r in _rows(page, "[data-testid=paths] [data-testid=path-row]")
    ] == [(p.path, p.sessions, p.share) for p in expected.conversion_paths.paths]

    # Funnel.
    assert page.get_attribute("[data-testid=funnel]", "data-sessions") == str(
        expected.funnel.sessions
    )
    assert [
        (r["step"], int(r["sessions"]), _optional_float(r["dropOff"]))
        for r in _rows(page, "[data-testid=funnel] [data-testid=funnel-step]")
    ] == [(s.name, s.sessions, s.drop_off) for s in expected.funnel.steps]

    # Devices.
    for test_id, segments in (
        ("device-types", expected.devices.device_types),
        ("operating-systems", expected.devices.operating_systems),
        ("browsers", expected.devices.browsers),
    ):
        assert [
            (r["name"] or None, int(r["sessions"]), float(r["share"]))
            for r in _rows(page, f"[data-testid={test_id}] [data-testid=segment-row]")
        ] == [(s.name, s.sessions, s.share) for s in segments]

    assert page.get_attribute("[data-testid=range]", "data-start") == "2024-06-01T11:31:00Z"
    assert page.get_attribute("[data-testid=range]", "data-end") == "2024-06-01T12:31:00Z"
    screenshot(page, "dashboard-simulated")


def test_the_hand_written_data_set_shows_the_numbers_worked_out_on_paper(
    page, hand_written: Engine, screenshot
) -> None:
    at_one = analytics_cases.at(13, 0)
    with _serve(hand_written, now=at_one) as server:
        _open(page, server.url + "?start=2024-06-01T12:00:00Z&end=2024-06-01T13:00:00Z")
        texts = {
            name: _kpi(page, name)[1]
            for name in (
                "sessions",
                "visitors",
                "page-views",
                "views-per-visit",
                "bounce-rate",
                "avg-duration",
                "conversion-rate",
                "revenue",
            )
        }
        assert texts == {
            "sessions": "10",
            "visitors": "9",
            "page-views": "16",
            "views-per-visit": "1.50",
            "bounce-rate": "30.0%",
            "avg-duration": "1m 36s",  # 96.1 s
            "conversion-rate": "40.0%",
            "revenue": "€200.00",
        }
        assert page.inner_text("[data-testid=current-visitors] .value") == "2"  # judy, erin
        steps = _rows(page, "[data-testid=funnel-step]")
        assert [int(s["sessions"]) for s in steps] == [9, 6, 3, 1, 1]
        assert page.locator("[data-testid=funnel-step] .drop").all_inner_texts() == [
            "of 10 sessions",
            f"{MINUS}33.3% drop-off",
            f"{MINUS}50.0% drop-off",
            f"{MINUS}66.7% drop-off",
            "0.0% drop-off",
        ]
        assert page.locator("[data-testid=country-row] td.name").all_inner_texts() == [
            "Germany (DE)",
            "United States (US)",
            "France (FR)",
            "United Kingdom (GB)",
            "Netherlands (NL)",
            "Unknown",
        ]
        assert page.locator("[data-testid=path-row] td.num").all_inner_texts() == [
            "2", "50.0%", "1", "25.0%", "1", "25.0%",
        ]  # fmt: skip
        assert page.locator("[data-testid=map-point]").count() == 7
        # No range button is pressed for an explicit range.
        assert page.locator(".ranges button[aria-pressed=true]").count() == 0
        screenshot(page, "dashboard-hand-written")


def test_the_range_picker_changes_the_range_and_the_address(
    page, simulated: Engine, simulated_server: DashboardServer
) -> None:
    _open(page, simulated_server.url)
    assert page.get_attribute(".ranges button[aria-pressed=true]", "data-minutes") == "60"
    page.click(".ranges button[data-minutes='15']")
    page.wait_for_function("() => Number(document.body.dataset.renders) >= 2")
    assert page.url.endswith("?minutes=15")
    with simulated.connect() as conn:
        k = analytics.kpis(conn, time_range=TimeRange.last_minutes(15, now=NOW))
    assert _kpi(page, "sessions")[0] == str(k.sessions)
    assert page.get_attribute("[data-testid=traffic-chart]", "data-buckets") == "15"
    page.click(".ranges button[data-minutes='1440']")
    page.wait_for_function("() => Number(document.body.dataset.renders) >= 3")
    assert page.get_attribute("[data-testid=traffic-chart]", "data-bucket") == "hour"


def test_the_page_refreshes_itself_when_new_events_arrive(page, tmp_path: Path) -> None:
    engine = _engine(tmp_path / "live.db")
    events = analytics_cases.click_events()
    first, later = events[:10], events[10:]  # alice and bob, then the rest
    _store(engine, first)
    try:
        with _serve(engine, now=analytics_cases.at(13, 0), refresh=0.3) as server:
            _open(page, server.url + "?start=2024-06-01T12:00:00Z&end=2024-06-01T13:00:00Z")
            assert _kpi(page, "sessions")[0] == "3"  # A1, A2, B1
            _store(engine, later)
            page.wait_for_function(
                "() => document.querySelector('[data-testid=kpi-sessions]').dataset.value === '10'"
            )
            assert _kpi(page, "conversion-rate")[1] == "40.0%"
            # Leave the page before the server stops, or its next refresh (0.3 s) would hit a
            # closed socket and log a network error.
            page.goto("about:blank")
    finally:
        engine.dispose()


def test_an_empty_database_shows_dashes_instead_of_zero_rates(
    page, tmp_path: Path, screenshot
) -> None:
    engine = _engine(tmp_path / "empty.db")
    try:
        with _serve(engine, now=NOW) as server:
            _open(page, server.url)
            assert _kpi(page, "sessions") == ("0", "0")
            for name in ("bounce-rate", "conversion-rate", "avg-duration", "views-per-visit"):
                assert _kpi(page, name) == ("", NO_DATA)
            assert page.inner_text("[data-testid=countries] tbody") == "No sessions in this range"
            assert page.locator("[data-testid=map-point]").count() == 0
            screenshot(page, "dashboard-empty")
    finally:
        engine.dispose()

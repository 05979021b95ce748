"""The dashboard's HTTP layer: routes, parameters, errors and the JSON it serves (no browser)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from clickstream.dashboard import DashboardApp, DashboardServer, to_json
from clickstream.dashboard.__main__ import main as dashboard_main
from clickstream.db import make_engine
from tests.analytics_cases import at, sqlite_database

HOUR = "start=2024-06-01T12:00:00Z&end=2024-06-01T13:00:00Z"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = make_engine(sqlite_database(tmp_path_factory.mktemp("dashboard")))
    yield engine
    engine.dispose()


@pytest.fixture
def app(engine: Engine) -> DashboardApp:
    return DashboardApp(engine, clock=lambda: at(13, 0, 30), refresh_seconds=3, banner="hello")


def _json(app: DashboardApp, target: str, status: HTTPStatus = HTTPStatus.OK) -> Any:
    response = app.respond("GET", target)
    assert response.status == status, response.body
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    return json.loads(response.body)


def test_kpis_for_an_explicit_range_are_the_hand_computed_ones(app: DashboardApp) -> None:
    assert _json(app, f"/api/kpis?{HOUR}") == {
        "sessions": 10,
        "visitors": 9,
        "events": 29,
        "page_views": 16,
        "bounced_sessions": 3,
        "converted_sessions": 4,
        "bounce_rate": 0.3,
        "conversion_rate": 0.4,
        "average_duration_seconds": 96.1,
        "views_per_visit": 1.5,
        "purchases": 4,
        "revenue": 200.0,
        "currency": "EUR",
    }


def test_the_dashboard_endpoint_bundles_every_figure_for_the_last_minutes(
    app: DashboardApp,
) -> None:
    body = _json(app, "/api/dashboard?minutes=60")
    # The clock says 13:00:30: the range is the 60 whole minutes up to and including 13:00.
    assert body["time_range"] == {
        "start": "2024-06-01T12:01:00Z",
        "end": "2024-06-01T13:01:00Z",
        "minutes": 60.0,
    }
    assert body["now"] == "2024-06-01T13:00:30Z"
    assert (body["refresh_seconds"], body["banner"]) == (3, "hello")
    assert set(body) == {
        "refresh_seconds", "banner", "time_range", "now", "kpis", "current_visitors",
        "traffic", "pages", "sources", "countries", "map_points", "devices", "funnel",
        "conversion_paths",
    }  # fmt: skip
    # 12:01-13:01 drops alice's 12:00 session start and adds nothing else (erin's 13:00 view
    # belongs to a session that started at 12:59:59).
    assert body["kpis"]["sessions"] == 9
    assert body["current_visitors"] == 1  # erin only: judy's 12:55:00 is 5.5 minutes ago
    assert body["traffic"]["bucket"] == "minute"
    assert len(body["traffic"]["points"]) == 60
    assert body["traffic"]["points"][0]["start"] == "2024-06-01T12:01:00Z"


def test_each_figure_has_its_own_endpoint(app: DashboardApp) -> None:
    assert [p["page_url"] for p in _json(app, f"/api/pages?{HOUR}&limit=2")] == [
        "https://shop.example.com/",
        "https://shop.example.com/p/1",
    ]
    assert _json(app, f"/api/sources?{HOUR}")[0] == {
        "source": "direct",
        "sessions": 4,
        "visitors": 4,
        "converted_sessions": 1,
        "share": 0.4,
    }
    assert [c["country"] for c in _json(app, f"/api/countries?{HOUR}")][-1] is None
    assert _json(app, f"/api/map?{HOUR}")[0] == {
        "latitude": 52.5,
        "longitude": 13.4,
        "events": 7,
        "visitors": 1,
    }
    assert [d["name"] for d in _json(app, f"/api/devices?{HOUR}")["device_types"]] == [
        "desktop",
        "mobile",
        "tablet",
    ]
    funnel = _json(app, f"/api/funnel?{HOUR}")
    assert [s["sessions"] for s in funnel["steps"]] == [9, 6, 3, 1, 1]
    assert funnel["steps"][0]["drop_off"] is None
    assert _json(app, f"/api/paths?{HOUR}&limit=1") == {
        "converted_sessions": 4,
        "paths": [
            {"path": "home > product > checkout > confirmation", "sessions": 2, "share": 0.5}
        ],
    }
    traffic = _json(app, f"/api/traffic?{HOUR}&bucket=hour")
    assert traffic["bucket"] == "hour"
    assert [p["page_views"] for p in traffic["points"]] == [16]
    assert _json(app, "/api/current-visitors") == {
        "now": "2024-06-01T13:00:30Z",
        "window_seconds": 300.0,
        "current_visitors": 1,
    }


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("minutes=0", "must lie in 1..44640"),
        ("minutes=abc", "must be an integer"),
        ("minutes=99999", "must lie in 1..44640"),
        ("minutes=5&minutes=6", "more than once"),
        ("start=2024-06-01T12:00:00Z", "give both"),
        ("start=2024-06-01T12:00:00&end=2024-06-01T13:00:00Z", "needs an offset"),
        ("start=yesterday&end=2024-06-01T13:00:00Z", "RFC 3339"),
        (
            "start=2024-06-01T13:00:00Z&end=2024-06-01T12:00:00Z",
            "'start' (2024-06-01T13:00:00Z) must be before 'end' (2024-06-01T12:00:00Z)",
        ),
        ("start=2024-06-01T12:00:00+0X:00&end=2024-06-01T13:00:00Z", "%2B"),
        (f"minutes=5&{HOUR}", "either 'minutes'"),
        ("start=2024-01-01T00:00:00Z&end=2024-06-01T00:00:00Z", "at most 44640 minutes"),
        ("bucket=week", "'minute' or 'hour'"),
        ("minutes=2880&bucket=minute", "at most 24 hours"),
        ("limit=0", "must lie in 1..100"),
    ],
)
def test_bad_parameters_are_answered_with_400_and_a_reason(
    app: DashboardApp, query: str, message: str
) -> None:
    body = _json(app, f"/api/kpis?{query}", HTTPStatus.BAD_REQUEST)
    assert message in body["error"]
    assert body["status"] == 400


def test_an_offset_typed_with_an_unencoded_plus_means_plus(app: DashboardApp) -> None:
    # In a query string "+" means a space: "+02:00" typed in the address arrives as " 02:00".
    typed = "start=2024-06-01T14:00:00+02:00&end=2024-06-01T15:00:00+02:00"
    encoded = "start=2024-06-01T14:00:00%2B02:00&end=2024-06-01T15:00:00%2B02:00"
    assert _json(app, f"/api/kpis?{typed}") == _json(app, f"/api/kpis?{encoded}")
    assert _json(app, f"/api/kpis?{typed}") == _json(app, f"/api/kpis?{HOUR}")


def test_the_page_and_its_assets_are_served_from_the_package(app: DashboardApp) -> None:
    page = app.respond("GET", "/")
    assert page.status == HTTPStatus.OK
    assert page.content_type == "text/html; charset=utf-8"
    assert b'data-testid="kpi-sessions"' in page.body
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for name, content_type in (
        ("app.js", "text/javascript; charset=utf-8"),
        ("styles.css", "text/css; charset=utf-8"),
        ("world.svg", "image/svg+xml"),
    ):
        asset = app.respond("GET", f"/static/{name}")
        assert (asset.status, asset.content_type) == (HTTPStatus.OK, content_type)
        assert asset.body
    # Nothing is loaded from elsewhere at run time (the SVG namespace is a name, not a fetch).
    for target in ("/", "/static/app.js", "/static/styles.css"):
        body = app.respond("GET", target).body.replace(b"http://www.w3.org/2000/svg", b"")
        assert b"http://" not in body
        assert b"https://" not in body
        assert b"//cdn" not in body


def test_unknown_paths_and_methods_are_refused(app: DashboardApp) -> None:
    assert app.respond("GET", "/static/../server.py").status == HTTPStatus.NOT_FOUND
    assert app.respond("GET", "/static/index.html").status == HTTPStatus.NOT_FOUND
    assert app.respond("GET", "/api/nothing").status == HTTPStatus.NOT_FOUND
    assert app.respond("POST", "/api/kpis").status == HTTPStatus.METHOD_NOT_ALLOWED


def test_an_unreachable_database_is_a_503_not_a_crash(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    try:
        app = DashboardApp(engine)
        assert _json(app, "/api/kpis", HTTPStatus.SERVICE_UNAVAILABLE) == {
            "error": "the database is unavailable",
            "status": 503,
        }
        assert app.respond("GET", "/healthz").status == HTTPStatus.SERVICE_UNAVAILABLE
    finally:
        engine.dispose()


def test_the_server_answers_over_http_on_loopback(app: DashboardApp) -> None:
    with DashboardServer(app, port=0) as server:
        server.start()
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url + "healthz", timeout=10) as response:  # noqa: S310
            assert json.load(response) == {"status": "ok"}
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        with urllib.request.urlopen(server.url + f"api/kpis?{HOUR}", timeout=10) as response:  # noqa: S310
            assert json.load(response)["sessions"] == 10
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(server.url + "api/kpis?minutes=0", timeout=10)  # noqa: S310
        assert error.value.code == 400


def test_json_encoding_of_read_side_types() -> None:
    encoded = to_json(
        {"when": datetime(2024, 6, 1, 12, tzinfo=UTC), "money": Decimal("10.50"), "none": None}
    )
    assert json.loads(encoded) == {"when": "2024-06-01T12:00:00Z", "money": 10.5, "none": None}


def test_the_command_explains_itself(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        dashboard_main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--host", "--port", "--database-url", "--refresh", "/api/kpis"):
        assert flag in help_text


def test_the_command_refuses_an_unusable_database_url(caplog: pytest.LogCaptureFixture) -> None:
    assert dashboard_main(["--database-url", "mysql://x/y", "--port", "0"]) == 2
    assert "unsupported database" in caplog.text


def test_the_command_refuses_a_database_without_the_schema(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "new.db").touch()  # a database, without tables
    assert dashboard_main(["--database-url", f"sqlite:///{tmp_path / 'new.db'}"]) == 2
    assert "has no table events, sessions, traffic_minute" in caplog.text
    # A path that does not exist is named as such, and not created.
    assert dashboard_main(["--database-url", f"sqlite:///{tmp_path / 'typo.db'}"]) == 2
    assert "no SQLite database at" in caplog.text
    assert not (tmp_path / "typo.db").exists()


def test_the_command_serves_until_sigterm(engine: Engine) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "clickstream.dashboard", "--port", "0",
         "--database-url", engine.url.render_as_string(hide_password=False)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        url = re.search(r"Dashboard: (http://127\.0\.0\.1:\d+/)", line)
        assert url is not None, line + process.stderr.read()
        with urllib.request.urlopen(url.group(1) + f"api/kpis?{HOUR}", timeout=10) as response:  # noqa: S310
            assert json.load(response)["sessions"] == 10
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

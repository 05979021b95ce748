"""Retention deletes old events, their traffic rows and ended sessions, in bounded batches.

The purge runs against a migrated PostgreSQL database (marked ``integration``) and against a
SQLite file; the expectations below are worked out by hand from the fixture rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select

from clickstream.db import make_engine
from clickstream.db.migrate import upgrade
from clickstream.db.models import events_table, sessions_table, traffic_minute_table
from clickstream.db.retention import (
    PurgeCounts,
    count_before,
    floor_minute,
    main,
    parse_age,
    purge_before,
    purge_events_before,
)
from clickstream.errors import TerminalError


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# Raw cutoff 12:00:30; the purge rounds it down to 12:00:00.
CUTOFF = at("2024-03-10 12:00:30")


def event_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def event(
    n: int,
    occurred_at: str,
    device_type: str,
    country: str | None,
    event_type: str = "page_view",
    *,
    revenue: str | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "event_id": event_id(n),
        "event_type": event_type,
        "occurred_at": at(occurred_at),
        "user_id": f"u-{n}",
        "page_url": "https://shop.example/",
        "page_type": "home",
        "device_type": device_type,
        "country": country,
        "order_id": None,
        "revenue": None,
        "currency": None,
    }
    if event_type == "purchase":
        row.update(order_id=f"o-{n}", revenue=Decimal(revenue or "0"), currency="EUR")
    return row


EVENTS = [
    event(0, "2024-03-09 23:00:00", "tablet", "FR"),
    event(1, "2024-03-10 11:58:10", "desktop", "US"),
    event(2, "2024-03-10 11:58:50", "desktop", "US", "add_to_cart"),
    event(3, "2024-03-10 11:58:59.999999", "mobile", None),
    event(4, "2024-03-10 11:59:00", "desktop", "US"),
    event(5, "2024-03-10 11:59:30", "desktop", "US"),
    event(6, "2024-03-10 11:59:59", "desktop", "US", "purchase", revenue="10.00"),
    # 12:00:10 is before the raw cutoff but inside the cutoff's minute: kept with its minute.
    event(7, "2024-03-10 12:00:10", "desktop", "US"),
    event(8, "2024-03-10 12:00:40", "desktop", "US"),
    event(9, "2024-03-10 12:05:00", "mobile", "DE", "purchase", revenue="5.50"),
]


def traffic(
    minute: str, device: str, country: str, *counts: int, revenue: str = "0"
) -> dict[str, Any]:
    events, page_views, add_to_carts, purchases = counts
    return {
        "minute": at(minute),
        "device_type": device,
        "country": country,
        "events": events,
        "page_views": page_views,
        "add_to_carts": add_to_carts,
        "purchases": purchases,
        "revenue": Decimal(revenue),
    }


# What the consumer would have aggregated from EVENTS (events, page views, carts, purchases).
TRAFFIC = [
    traffic("2024-03-09 23:00", "tablet", "FR", 1, 1, 0, 0),
    traffic("2024-03-10 11:58", "desktop", "US", 2, 1, 1, 0),
    traffic("2024-03-10 11:58", "mobile", "", 1, 1, 0, 0),
    traffic("2024-03-10 11:59", "desktop", "US", 3, 2, 0, 1, revenue="10.00"),
    traffic("2024-03-10 12:00", "desktop", "US", 2, 2, 0, 0),
    traffic("2024-03-10 12:05", "mobile", "DE", 1, 0, 0, 1, revenue="5.50"),
]


def session(session_id: str, started: str, ended: str) -> dict[str, Any]:
    start, end = at(started), at(ended)
    return {
        "session_id": session_id,
        "user_id": "u-" + session_id,
        "started_at": start,
        "ended_at": end,
        "duration_seconds": (end - start).total_seconds(),
        "event_count": 2,
        "page_views": 2,
        "purchases": 0,
        "revenue": Decimal(0),
        "converted": False,
        "bounced": False,
        "entry_page": "https://shop.example/",
        "exit_page": "https://shop.example/",
        "conversion_path": None,
        "traffic_source": "direct",
        "device_type": "desktop",
    }


SESSIONS = [
    session("s1", "2024-03-09 23:00:00", "2024-03-09 23:10:00"),  # ended long ago: deleted
    session("s2", "2024-03-10 11:58:10", "2024-03-10 11:59:59.5"),  # ended before 12:00: deleted
    session("s3", "2024-03-10 11:59:00", "2024-03-10 12:00:40"),  # straddles the cutoff: kept
    session("s4", "2024-03-10 12:05:00", "2024-03-10 12:06:00"),  # after: kept
    session("s5", "2024-03-10 11:50:00", "2024-03-10 12:00:00"),  # ends on the cutoff: kept
]


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.integration),
        pytest.param("sqlite"),
    ]
)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty database of each kind."""
    if request.param == "postgresql":
        url = str(request.getfixturevalue("database_url"))
    else:
        url = f"sqlite:///{tmp_path / 'retention.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def loaded(engine: Engine) -> Engine:
    with engine.begin() as conn:
        conn.execute(insert(events_table), EVENTS)
        conn.execute(insert(traffic_minute_table), TRAFFIC)
        conn.execute(insert(sessions_table), SESSIONS)
    return engine


def _contents(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            "events": set(conn.execute(select(events_table.c.event_id)).scalars()),
            "traffic": {
                tuple(row)
                for row in conn.execute(
                    select(
                        traffic_minute_table.c.minute,
                        traffic_minute_table.c.device_type,
                        traffic_minute_table.c.country,
                    )
                )
            },
            "sessions": set(conn.execute(select(sessions_table.c.session_id)).scalars()),
        }


def _traffic_totals(engine: Engine) -> tuple[Any, ...]:
    t = traffic_minute_table.c
    with engine.connect() as conn:
        return tuple(
            conn.execute(
                select(
                    func.sum(t.events),
                    func.sum(t.page_views),
                    func.sum(t.add_to_carts),
                    func.sum(t.purchases),
                    func.sum(t.revenue),
                )
            ).one()
        )


def test_purge_keeps_exactly_the_recent_rows(loaded: Engine, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="clickstream.db.retention")

    counts = purge_before(loaded, cutoff=CUTOFF, batch_size=2)

    assert counts == PurgeCounts(events=7, traffic_minute=4, sessions=2)
    assert _contents(loaded) == {
        "events": {event_id(7), event_id(8), event_id(9)},
        "traffic": {
            (at("2024-03-10 12:00"), "desktop", "US"),
            (at("2024-03-10 12:05"), "mobile", "DE"),
        },
        "sessions": {"s3", "s4", "s5"},
    }
    # traffic_minute still adds up to what is left in events: e7, e8 (page views), e9 (5.50).
    assert _traffic_totals(loaded) == (3, 2, 0, 1, Decimal("5.50"))

    # Batches of 2 on minute boundaries: [e0] (stops before 11:58, whose 3 events exceed a
    # batch), then the whole 11:58 minute [e1 e2 e3], then [e4 e5 e6] up to the cutoff.
    batches = [
        record.args[0]
        for record in caplog.records
        if isinstance(record.args, tuple)
        and record.msg == "deleted %d events and %d traffic_minute rows before %s"
    ]
    assert batches == [1, 3, 3]


def test_purge_again_deletes_nothing(loaded: Engine):
    assert purge_events_before(loaded, cutoff=CUTOFF, batch_size=2) == 7
    before = _contents(loaded)
    assert purge_before(loaded, cutoff=CUTOFF) == PurgeCounts()
    assert _contents(loaded) == before


def test_large_batches_delete_the_same_rows(loaded: Engine):
    assert purge_before(loaded, cutoff=CUTOFF) == PurgeCounts(
        events=7, traffic_minute=4, sessions=2
    )
    assert _contents(loaded)["events"] == {event_id(7), event_id(8), event_id(9)}


def test_dry_run_counts_without_deleting(loaded: Engine):
    assert count_before(loaded, cutoff=CUTOFF) == PurgeCounts(
        events=7, traffic_minute=4, sessions=2
    )
    assert len(_contents(loaded)["events"]) == 10


def test_traffic_rows_without_events_are_purged_too(engine: Engine):
    with engine.begin() as conn:
        conn.execute(
            insert(traffic_minute_table),
            [
                traffic("2024-03-10 11:00", "desktop", "US", 1, 1, 0, 0),
                traffic("2024-03-10 11:00", "mobile", "US", 1, 1, 0, 0),
                traffic("2024-03-10 11:30", "desktop", "", 1, 1, 0, 0),
                traffic("2024-03-10 12:00", "desktop", "", 1, 1, 0, 0),
            ],
        )
    assert purge_before(engine, cutoff=CUTOFF, batch_size=1) == PurgeCounts(traffic_minute=3)
    assert _contents(engine)["traffic"] == {(at("2024-03-10 12:00"), "desktop", "")}


def test_command_line_purges_by_age(engine: Engine, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="clickstream.db.retention")
    now = datetime.now(UTC)
    rows = [
        event(1, "2000-01-01 00:00:00", "desktop", "US"),
        event(2, "2000-01-01 00:00:00", "desktop", "US"),
        event(3, "2000-01-01 00:00:00", "desktop", "US"),
    ]
    rows[1]["occurred_at"] = now - timedelta(days=100)
    rows[2]["occurred_at"] = now - timedelta(days=10)
    with engine.begin() as conn:
        conn.execute(insert(events_table), rows)
    url = engine.url.render_as_string(hide_password=False)

    assert main(["--older-than", "90d", "--database-url", url, "--dry-run"]) == 0
    assert len(_contents(engine)["events"]) == 3
    assert "dry run: would delete 2 events" in caplog.text

    assert main(["--older-than", "90d", "--database-url", url, "--batch-size", "1"]) == 0
    assert _contents(engine)["events"] == {event_id(3)}
    assert "total: 2 rows deleted" in caplog.text


def test_command_line_reports_a_missing_schema(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["--older-than", "1d", "--database-url", url]) == 1
    assert "retention failed" in caplog.text


def test_missing_schema_is_a_terminal_error(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(TerminalError):
            purge_before(engine, cutoff=CUTOFF)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", timedelta(days=90)),
        ("2w", timedelta(days=14)),
        ("36h", timedelta(hours=36)),
        ("30m", timedelta(minutes=30)),
        ("45s", timedelta(seconds=45)),
        (" 7 d ", timedelta(days=7)),
    ],
)
def test_parse_age(text: str, expected: timedelta):
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["", "90", "d", "0d", "-1d", "1.5d", "3y", "90days"])
def test_parse_age_rejects(text: str):
    with pytest.raises(ValueError):
        parse_age(text)


def test_command_line_rejects_a_bad_age(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exited:
        main(["--older-than", "forever"])
    assert exited.value.code == 2
    assert "expected an age like 90d" in capsys.readouterr().err


def test_floor_minute():
    assert floor_minute(at("2024-03-10 12:00:30.5")) == at("2024-03-10 12:00")
    plus_one = datetime.fromisoformat("2024-03-10T13:00:59+01:00")
    assert floor_minute(plus_one) == at("2024-03-10 12:00")
    with pytest.raises(ValueError):
        floor_minute(datetime(2024, 3, 10, 12, 0, 30))


def test_bad_batch_size(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with pytest.raises(ValueError):
            purge_before(engine, cutoff=CUTOFF, batch_size=0)
    finally:
        engine.dispose()

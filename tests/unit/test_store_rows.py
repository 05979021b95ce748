"""The COPY hot path's hand-ordered row tuples agree with the tables and with the models."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from clickstream.db.models import events_table, sessions_table
from clickstream.events import ClickEvent
from clickstream.sessions import Session
from clickstream.store import (
    _EVENT_COPY_COLUMNS,
    _SESSION_COPY_COLUMNS,
    PositionedEvent,
    _event_values,
    _session_values,
)

PURCHASE = {
    "event_id": "0F1E2D3C-0000-4000-8000-000000000001",
    "event_type": "purchase",
    "occurred_at": "2026-05-01T14:00:00.5+02:00",
    "user_id": "u-1",
    "session_id": "tracker-9",
    "page_url": "https://shop.example/checkout/done",
    "page_type": "confirmation",
    "referrer_url": "https://www.google.com/search?q=shoes",
    "utm_source": "newsletter",
    "utm_medium": "email",
    "utm_campaign": "spring",
    "device_type": "mobile",
    "os": "iOS",
    "browser": "Safari",
    "country": "DE",
    "city": "Berlin",
    "latitude": 52.52,
    "longitude": 13.405,
    "product_id": "p-7",
    "search_query": "red shoes",
    "order_id": "o-42",
    "revenue": 129.9,
    "currency": "EUR",
}


def test_event_columns_are_the_tables_but_the_server_default() -> None:
    columns = {c.name for c in events_table.columns} - {"ingested_at"}
    assert set(_EVENT_COPY_COLUMNS) == columns
    assert len(_EVENT_COPY_COLUMNS) == len(columns)


def test_event_values_line_up_with_their_columns() -> None:
    event = ClickEvent.model_validate_json(json.dumps(PURCHASE))
    row = dict(zip(_EVENT_COPY_COLUMNS, _event_values(PositionedEvent(event, 2, 41)), strict=True))
    assert row == {
        **PURCHASE,
        "event_id": "0f1e2d3c-0000-4000-8000-000000000001",
        "occurred_at": datetime(2026, 5, 1, 12, 0, 0, 500000, tzinfo=UTC),
        "revenue": Decimal("129.9"),
        "kafka_partition": 2,
        "kafka_offset": 41,
    }


def test_session_columns_are_the_tables_but_the_update_time() -> None:
    columns = {c.name for c in sessions_table.columns} - {"updated_at"}
    assert set(_SESSION_COPY_COLUMNS) == columns
    assert len(_SESSION_COPY_COLUMNS) == len(columns)


def test_session_values_line_up_with_their_columns() -> None:
    session = Session(
        session_id="s-1",
        user_id="u-1",
        started_at=datetime(2026, 5, 1, 12, 0, tzinfo=UTC),
        ended_at=datetime(2026, 5, 1, 12, 1, 30, 250000, tzinfo=UTC),
        event_count=4,
        page_views=3,
        purchases=1,
        revenue=Decimal("129.90"),
        entry_page="https://shop.example/",
        exit_page="https://shop.example/checkout/done",
        conversion_path="home > product > checkout > confirmation",
        traffic_source="newsletter",
        device_type="mobile",
        os="iOS",
        browser="Safari",
        country="DE",
        city="Berlin",
        funnel_step=5,
    )
    row = dict(zip(_SESSION_COPY_COLUMNS, _session_values(session), strict=True))
    assert row == {
        "session_id": "s-1",
        "user_id": "u-1",
        "started_at": datetime(2026, 5, 1, 12, 0, tzinfo=UTC),
        "ended_at": datetime(2026, 5, 1, 12, 1, 30, 250000, tzinfo=UTC),
        "duration_seconds": 90.25,
        "event_count": 4,
        "page_views": 3,
        "purchases": 1,
        "revenue": Decimal("129.90"),
        "converted": True,
        "bounced": False,
        "entry_page": "https://shop.example/",
        "exit_page": "https://shop.example/checkout/done",
        "conversion_path": "home > product > checkout > confirmation",
        "traffic_source": "newsletter",
        "device_type": "mobile",
        "os": "iOS",
        "browser": "Safari",
        "country": "DE",
        "city": "Berlin",
        "funnel_step": 5,
    }

"""Rows to OpenSearch documents: projection, JSON values, location, serialisation (no network).

The PostgreSQL rendering of session documents is compared in
tests/integration/test_search_outbox.py.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from clickstream.events import ClickEvent, DeviceType, decode_event
from clickstream.search.documents import (
    DocumentError,
    click_event_json,
    dumps,
    event_document,
    json_value,
    location_of,
    session_document,
)

EVENT_ROW = {
    "event_id": "7d9f1c2e-3b4a-4c5d-8e6f-0a1b2c3d4e5f",
    "event_type": "purchase",
    "occurred_at": datetime(2024, 5, 1, 14, 30, 15, 250000, tzinfo=timezone(timedelta(hours=2))),
    "user_id": "u-1",
    "session_id": None,
    "page_url": "https://shop.example/checkout/done",
    "page_type": "confirmation",
    "device_type": "mobile",
    "country": "DE",
    "latitude": 52.52,
    "longitude": 13.405,
    "order_id": "o-9",
    "revenue": Decimal("129.90"),
    "currency": "EUR",
    "ingested_at": datetime(2024, 5, 1, 12, 31, tzinfo=UTC),
    "kafka_partition": 2,
    "kafka_offset": 41,
}


def test_event_document_converts_values_and_builds_location() -> None:
    event_id, occurred_at, doc = event_document(EVENT_ROW)
    assert event_id == "7d9f1c2e-3b4a-4c5d-8e6f-0a1b2c3d4e5f"
    assert occurred_at == EVENT_ROW["occurred_at"]
    assert doc["occurred_at"] == "2024-05-01T12:30:15.250000Z"
    assert "ingested_at" not in doc  # the contract's fields only
    assert doc["revenue"] == 129.9
    assert isinstance(doc["revenue"], float)
    assert doc["location"] == {"lat": 52.52, "lon": 13.405}
    assert doc["session_id"] is None
    # Columns the template does not map are left out (the mapping is strict).
    assert "kafka_partition" not in doc
    assert "kafka_offset" not in doc


def test_event_document_from_a_json_mode_dump() -> None:
    """Numbers and dates that arrive as text become JSON numbers and UTC dates."""
    row = {
        "event_id": "a",
        "occurred_at": "2024-05-01T14:30:00+02:00",
        "revenue": "12.50",
        "latitude": None,
        "longitude": None,
        "unknown_extra": "x",
    }
    _, occurred_at, doc = event_document(row)
    assert occurred_at == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    assert doc == {
        "event_id": "a",
        "occurred_at": "2024-05-01T12:30:00Z",
        "revenue": 12.5,
        "latitude": None,
        "longitude": None,
    }


def test_unparsable_text_is_left_for_opensearch_to_reject() -> None:
    _, _, doc = event_document(
        {"event_id": "a", "occurred_at": "2024-05-01T00:00:00Z", "revenue": "lots"}
    )
    assert doc["revenue"] == "lots"


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"occurred_at": "2024-05-01T00:00:00Z"}, "event_id"),
        ({"event_id": "a"}, "occurred_at"),
        ({"event_id": "a", "occurred_at": "yesterday"}, "occurred_at"),
        ({"event_id": "a", "occurred_at": "2024-05-01T00:00:00"}, "occurred_at"),
        (
            {
                "event_id": "a",
                "occurred_at": "2024-05-01T00:00:00Z",
                "latitude": "north",
                "longitude": 1.0,
            },
            "latitude",
        ),
    ],
)
def test_unconvertible_event_rows(row: dict, field: str) -> None:
    with pytest.raises(DocumentError, match=field):
        event_document(row)


def test_session_document() -> None:
    row = {
        "session_id": "s-1",
        "user_id": "u-1",
        "started_at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "ended_at": datetime(2024, 5, 1, 12, 5, 30, tzinfo=UTC),
        "duration_seconds": 330.0,
        "event_count": 3,
        "revenue": Decimal("0"),
        "converted": False,
        "bounced": False,
        "conversion_path": None,
        "latitude": 48.85,
        "longitude": 2.35,
        "funnel_step": 2,
    }
    session_id, doc = session_document(row)
    assert session_id == "s-1"
    assert doc == {
        "session_id": "s-1",
        "user_id": "u-1",
        "started_at": "2024-05-01T12:00:00Z",
        "ended_at": "2024-05-01T12:05:30Z",
        "duration_seconds": 330.0,
        "event_count": 3,
        "revenue": 0.0,
        "converted": False,
        "bounced": False,
        "conversion_path": None,
        "funnel_step": 2,
        "location": {"lat": 48.85, "lon": 2.35},
    }


def test_json_value() -> None:
    assert json_value(uuid.UUID("7d9f1c2e-3b4a-4c5d-8e6f-0a1b2c3d4e5f")) == (
        "7d9f1c2e-3b4a-4c5d-8e6f-0a1b2c3d4e5f"
    )
    assert json_value(True) is True
    assert json_value(Decimal("0.10")) == 0.1
    with pytest.raises(DocumentError, match="naive"):
        json_value(datetime(2024, 1, 1), field="occurred_at")
    with pytest.raises(DocumentError, match="finite"):
        json_value(Decimal("NaN"), field="revenue")
    with pytest.raises(DocumentError, match="set"):
        json_value({1, 2}, field="tags")


def test_location_needs_both_coordinates() -> None:
    assert location_of({"latitude": 1.0}) is None
    assert location_of({"latitude": None, "longitude": 2.0}) is None
    assert location_of({"latitude": 0, "longitude": 0}) == {"lat": 0.0, "lon": 0.0}


def _click_event(**fields: Any) -> ClickEvent:
    data: dict[str, Any] = {
        "event_id": "7D9F1C2E-3B4A-4C5D-8E6F-0A1B2C3D4E5F",
        "event_type": "page_view",
        "occurred_at": "2024-05-01T14:30:15.25+02:00",
        "user_id": "u-1",
        "page_url": "https://shop.example/",
        "page_type": "home",
        "device_type": "mobile",
    }
    data.update(fields)
    return decode_event(
        json.dumps(data).encode(), now=datetime(2024, 5, 2, tzinfo=UTC), future_tolerance=DAY
    )


DAY = timedelta(days=1)


def test_click_event_json_by_hand() -> None:
    event = _click_event(
        event_type="purchase",
        order_id="o-9",
        revenue=129.9,
        currency="EUR",
        latitude=52,
        longitude=13.405,
        city='Zürich "Altstadt"',
    )
    event_id, occurred_at, text = click_event_json(event)
    assert event_id == "7d9f1c2e-3b4a-4c5d-8e6f-0a1b2c3d4e5f"
    assert occurred_at == datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=UTC)
    assert text == (
        '{"event_id":"7d9f1c2e-3b4a-4c5d-8e6f-0a1b2c3d4e5f","event_type":"purchase",'
        '"occurred_at":"2024-05-01T12:30:15.250000Z","user_id":"u-1","session_id":null,'
        '"page_url":"https://shop.example/","page_type":"home","referrer_url":null,'
        '"utm_source":null,"utm_medium":null,"utm_campaign":null,"device_type":"mobile",'
        '"os":null,"browser":null,"country":null,"city":"Zürich \\"Altstadt\\"",'
        '"latitude":52.0,"longitude":13.405,"product_id":null,"search_query":null,'
        '"order_id":"o-9","revenue":129.9,"currency":"EUR",'
        '"location":{"lat":52.0,"lon":13.405}}'
    )


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"occurred_at": "2024-05-01T00:00:00Z", "referrer_url": "https://search.example/?q=a"},
        {"latitude": -33.8688, "longitude": 151.2093, "country": "AU", "city": "Sydney"},
        {"latitude": 0, "longitude": 0.00001},
        {
            "event_type": "purchase",
            "order_id": "o-1",
            "revenue": 0,
            "currency": "USD",
            "utm_source": "news\nletter",
            "search_query": "schuhe größe 42",
        },
        {"event_type": "purchase", "order_id": "o-2", "revenue": 9999999999.99, "currency": "JPY"},
    ],
)
def test_click_event_json_is_the_generic_document(fields: dict[str, Any]) -> None:
    event = _click_event(**fields)
    event_id, occurred_at, text = click_event_json(event)
    assert (event_id, occurred_at, json.loads(text)) == event_document(
        event.model_dump(mode="json")
    )
    assert list(json.loads(text)) == list(event_document(event.model_dump(mode="json"))[2])


def test_fast_conversion_keeps_the_generic_rules() -> None:
    # Enums become their values, integral mappings keep ints, booleans stay booleans, and a
    # string in a number field is still parsed.
    row = {
        "session_id": "s-1",
        "device_type": DeviceType.TABLET,
        "event_count": 4,
        "converted": True,
        "revenue": "12.50",
        "duration_seconds": 1.5,
    }
    _, doc = session_document(row)
    assert doc == {
        "session_id": "s-1",
        "device_type": "tablet",
        "event_count": 4,
        "converted": True,
        "revenue": 12.5,
        "duration_seconds": 1.5,
    }
    assert type(doc["device_type"]) is str
    with pytest.raises(DocumentError, match="duration_seconds"):
        session_document({"session_id": "s-1", "duration_seconds": float("inf")})


def test_dumps_is_compact_utf8_and_refuses_what_json_cannot_carry() -> None:
    assert dumps({"city": "Zürich", "n": 1.0, "b": None}) == '{"city":"Zürich","n":1.0,"b":null}'
    with pytest.raises(DocumentError, match="serialise"):
        dumps({"lat": float("nan")})
    with pytest.raises(DocumentError, match="serialise"):
        dumps({"tags": {1, 2}})

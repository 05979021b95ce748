"""The event contract (domain.md section 1), rule by rule, with hand-written examples.

Every rule has a valid and an invalid example, and the boundaries are tested on both sides.
Expected values are written out by hand, never computed with the code under test.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from clickstream.errors import InvalidEvent
from clickstream.events import (
    MAX_JSON_DEPTH,
    MAX_MESSAGE_BYTES,
    SCHEMA_PATH,
    ClickEvent,
    DeviceType,
    EventType,
    PageType,
    Reason,
    decode_event,
    json_schema,
)
from tests.support import MINIMAL_EVENT

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
TOLERANCE = timedelta(minutes=5)
MINIMAL: dict[str, Any] = MINIMAL_EVENT
EVENT_ID = MINIMAL["event_id"]

PURCHASE: dict[str, Any] = {
    **MINIMAL,
    "event_type": "purchase",
    "page_url": "https://shop.example.com/checkout/confirmation?order=ORD-1",
    "page_type": "confirmation",
    "order_id": "ORD-1",
    "revenue": 59.9,
    "currency": "EUR",
}


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()


def decode(payload: dict[str, Any] | bytes | None) -> ClickEvent:
    raw = encode(payload) if isinstance(payload, dict) else payload
    return decode_event(raw, now=NOW, future_tolerance=TOLERANCE)


def rejection(payload: dict[str, Any] | bytes | None) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        decode(payload)
    return caught.value


def with_(**changes: Any) -> dict[str, Any]:
    return {**MINIMAL, **changes}


def without(name: str, base: dict[str, Any] = MINIMAL) -> dict[str, Any]:
    return {key: value for key, value in base.items() if key != name}


def assert_schema_error(payload: dict[str, Any] | bytes, field: str) -> None:
    error = rejection(payload)
    assert error.reason == "schema"
    assert f"field '{field}'" in error.detail, error.detail


# -- the published JSON Schema ---------------------------------------------------------------


def test_checked_in_schema_matches_the_model() -> None:
    on_disk = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert on_disk == json_schema(), (
        f"{SCHEMA_PATH.name} is out of date with ClickEvent; regenerate it with\n"
        "  python -m clickstream.events --schema > clickstream/schemas/click_event.v1.json"
    )


def test_checked_in_schema_is_the_command_output_byte_for_byte() -> None:
    expected = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    assert SCHEMA_PATH.read_text(encoding="utf-8") == expected, (
        "regenerate with: python -m clickstream.events --schema > "
        "clickstream/schemas/click_event.v1.json"
    )


def test_schema_states_the_rules() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["required"]) == {
        "event_id",
        "event_type",
        "occurred_at",
        "user_id",
        "page_url",
        "page_type",
        "device_type",
    }
    properties = schema["properties"]
    assert properties["user_id"]["maxLength"] == 128
    assert properties["user_id"]["minLength"] == 1
    assert schema["$defs"]["EventType"]["enum"] == [
        "page_view",
        "search",
        "add_to_cart",
        "remove_from_cart",
        "begin_checkout",
        "purchase",
    ]
    purchase_rule = schema["allOf"][0]
    assert purchase_rule["then"]["required"] == ["order_id", "revenue", "currency"]
    assert schema["allOf"][1]["dependentRequired"] == {
        "latitude": ["longitude"],
        "longitude": ["latitude"],
    }


# -- valid events ------------------------------------------------------------------------------


def test_minimal_event_decodes_with_absent_optionals_as_none() -> None:
    event = decode(MINIMAL)
    assert event.event_id == EVENT_ID
    assert event.event_type is EventType.PAGE_VIEW
    assert event.occurred_at == datetime(2026, 11, 30, 11, 59, tzinfo=UTC)
    assert event.user_id == "visitor-1"
    assert event.page_type is PageType.HOME
    assert event.device_type is DeviceType.DESKTOP
    for name in ("session_id", "referrer_url", "country", "latitude", "order_id", "revenue"):
        assert getattr(event, name) is None


def test_full_event_keeps_every_field() -> None:
    payload = {
        **PURCHASE,
        "session_id": "tracker-session-7",
        "referrer_url": "https://www.google.com/",
        "utm_source": "newsletter",
        "utm_medium": "email",
        "utm_campaign": "winter_sale",
        "os": "iOS",
        "browser": "Safari",
        "country": "BR",
        "city": "São Paulo",
        "latitude": -23.5505,
        "longitude": -46.6333,
        "product_id": "SKU-1",
        "search_query": "red sneakers",
    }
    event = decode(payload)
    assert event.session_id == "tracker-session-7"
    assert event.utm_campaign == "winter_sale"
    assert event.city == "São Paulo"
    assert (event.latitude, event.longitude) == (-23.5505, -46.6333)
    assert event.revenue == Decimal("59.9")
    assert event.currency == "EUR"


def test_wire_form_is_compact_utc_and_omits_absent_fields() -> None:
    event = decode(with_(occurred_at="2026-11-30T13:59:00.250+02:00", city="Zürich", country="CH"))
    assert (
        event.to_json()
        == (
            '{"event_id":"3f2b8c1e-9d4a-4c6b-8e2f-1a7d5c9b0e44","event_type":"page_view",'
            '"occurred_at":"2026-11-30T11:59:00.250000Z","user_id":"visitor-1",'
            '"page_url":"https://shop.example.com/","page_type":"home","device_type":"desktop",'
            '"country":"CH","city":"Zürich"}'
        ).encode()
    )


def test_wire_form_round_trips() -> None:
    event = decode({**PURCHASE, "latitude": 1.5, "longitude": -2.25, "session_id": "s"})
    assert decode(event.to_json()) == event


def test_revenue_is_a_json_number_on_the_wire() -> None:
    wire = json.loads(decode(PURCHASE).to_json())
    assert wire["revenue"] == 59.9
    assert isinstance(wire["revenue"], float)


def test_unknown_extra_fields_are_ignored() -> None:
    event = decode(with_(tracker_version="3.1", nested={"a": [1, 2]}))
    assert event == decode(MINIMAL)
    assert b"tracker_version" not in event.to_json()


# -- event_id ---------------------------------------------------------------------------------


def test_upper_case_uuid_is_accepted_and_lower_cased() -> None:
    event = decode(with_(event_id="3F2B8C1E-9D4A-4C6B-8E2F-1A7D5C9B0E44"))
    assert event.event_id == EVENT_ID


@pytest.mark.parametrize(
    "event_id",
    [
        "3f2b8c1e9d4a4c6b8e2f1a7d5c9b0e44",  # no hyphens
        "{3f2b8c1e-9d4a-4c6b-8e2f-1a7d5c9b0e44}",  # braces
        "urn:uuid:3f2b8c1e-9d4a-4c6b-8e2f-1a7d5c9b0e44",
        "3f2b8c1e-9d4a-4c6b-8e2f-1a7d5c9b0e4",  # one digit short
        "3f2b8c1e-9d4a-4c6b-8e2f-1a7d5c9b0e444",  # one digit long
        "3f2b8c1e-9d4a-4c6b-8e2f-1a7d5c9b0e4g",  # not hex
        "3f2b8c1e9-d4a-4c6b-8e2f-1a7d5c9b0e44",  # hyphen misplaced
        " 3f2b8c1e-9d4a-4c6b-8e2f-1a7d5c9b0e44",
        "3f2b8c1e-9d4a-4c6b-8e2f-1a7d5c9b0e44\n",  # Python's "$" would allow this
        "",
    ],
)
def test_non_canonical_uuid_is_rejected(event_id: str) -> None:
    assert_schema_error(with_(event_id=event_id), "event_id")


def test_event_id_must_be_a_string() -> None:
    assert_schema_error(with_(event_id=12345), "event_id")


@pytest.mark.parametrize(
    "name",
    ["event_id", "event_type", "occurred_at", "user_id", "page_url", "page_type", "device_type"],
)
def test_required_field_missing_is_a_schema_error_naming_it(name: str) -> None:
    assert_schema_error(without(name), name)


@pytest.mark.parametrize("name", ["event_id", "user_id", "page_url", "occurred_at"])
def test_required_field_null_is_a_schema_error(name: str) -> None:
    assert_schema_error(with_(**{name: None}), name)


# -- event_type, page_type, device_type ----------------------------------------------------


@pytest.mark.parametrize(
    "event_type",
    ["page_view", "search", "add_to_cart", "remove_from_cart", "begin_checkout"],
)
def test_every_non_purchase_event_type_is_accepted(event_type: str) -> None:
    assert decode(with_(event_type=event_type)).event_type == event_type


@pytest.mark.parametrize("event_type", ["click", "PAGE_VIEW", "Page_View", "pageview", "", 1])
def test_unknown_event_type_is_rejected(event_type: object) -> None:
    assert_schema_error(with_(event_type=event_type), "event_type")


@pytest.mark.parametrize(
    "page_type",
    [
        "home",
        "category",
        "product",
        "search",
        "cart",
        "checkout",
        "confirmation",
        "account",
        "other",
    ],
)
def test_every_page_type_is_accepted(page_type: str) -> None:
    assert decode(with_(page_type=page_type)).page_type == page_type


@pytest.mark.parametrize("page_type", ["landing", "Home", ""])
def test_unknown_page_type_is_rejected(page_type: str) -> None:
    assert_schema_error(with_(page_type=page_type), "page_type")


@pytest.mark.parametrize("device_type", ["desktop", "mobile", "tablet"])
def test_every_device_type_is_accepted(device_type: str) -> None:
    assert decode(with_(device_type=device_type)).device_type == device_type


@pytest.mark.parametrize("device_type", ["phone", "Mobile", "tv", None])
def test_unknown_device_type_is_rejected(device_type: str | None) -> None:
    assert_schema_error(with_(device_type=device_type), "device_type")


# -- occurred_at -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-30T11:59:00Z", datetime(2026, 11, 30, 11, 59, tzinfo=UTC)),
        ("2026-11-30t11:59:00z", datetime(2026, 11, 30, 11, 59, tzinfo=UTC)),
        ("2026-11-30T11:59:00+00:00", datetime(2026, 11, 30, 11, 59, tzinfo=UTC)),
        ("2026-11-30T13:59:00+02:00", datetime(2026, 11, 30, 11, 59, tzinfo=UTC)),
        ("2026-11-30T06:29:00-05:30", datetime(2026, 11, 30, 11, 59, tzinfo=UTC)),
        ("2026-12-01T01:59:00+14:00", datetime(2026, 11, 30, 11, 59, tzinfo=UTC)),
        ("2026-11-30T11:59:00.5Z", datetime(2026, 11, 30, 11, 59, 0, 500000, tzinfo=UTC)),
        # Finer than microseconds: truncated, never rounded up into the next microsecond.
        ("2026-11-30T11:59:00.123456789Z", datetime(2026, 11, 30, 11, 59, 0, 123456, tzinfo=UTC)),
        # The widest offsets RFC 3339 writes.
        ("2026-12-01T11:58:00+23:59", datetime(2026, 11, 30, 11, 59, tzinfo=UTC)),
        ("2026-11-29T12:00:00-23:59", datetime(2026, 11, 30, 11, 59, tzinfo=UTC)),
        # A leap second, at the end of a UTC day only: the next day's first second.
        ("2016-12-31T23:59:60Z", datetime(2017, 1, 1, 0, 0, 0, tzinfo=UTC)),
        ("2016-12-31T23:59:60.25Z", datetime(2017, 1, 1, 0, 0, 0, 250000, tzinfo=UTC)),
        ("2017-01-01T00:59:60+01:00", datetime(2017, 1, 1, 0, 0, 0, tzinfo=UTC)),
    ],
)
def test_offsets_are_normalised_to_utc(text: str, expected: datetime) -> None:
    occurred_at = decode(with_(occurred_at=text)).occurred_at
    assert occurred_at == expected
    assert occurred_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-30T11:59:00",  # naive: no offset
        "2026-11-30T11:59:00.123",  # naive with a fraction
        "2026-11-30 11:59:00",  # naive with a space
        "2026-11-30",  # a date only
        "2026-11-30T11:59Z",  # no seconds
        "2026-11-30T11:59:00+0200",  # offset without a colon
        "2026-11-30T11:59:00 Z",
        "2026-02-30T11:59:00Z",  # no such day
        "2026-11-30T24:00:00Z",
        "2026-11-30T11:59:00+25:00",
        "2026-11-30T11:59:00+24:00",
        # Offset minutes past 59 (Python's own parser reads +01:60 as +02:00).
        "2026-11-30T11:59:00+01:60",
        "2026-11-30T11:59:00+00:99",
        "2026-11-30T11:59:00-05:75",
        # Second 60 where no leap second can fall (only at 23:59:60 UTC), or second 61.
        "2016-12-31T12:00:60Z",
        "2016-12-31T23:59:60+01:00",
        "2016-12-31T23:59:61Z",
        "30/11/2026 11:59:00Z",
        "٢٠٢٦-11-30T11:59:00Z",  # non-ASCII digits
        "2026-11-30T11:59:00Z\n",  # trailing newline
        "",
    ],
)
def test_naive_or_malformed_times_are_rejected(text: str) -> None:
    assert_schema_error(with_(occurred_at=text), "occurred_at")


def test_epoch_number_is_not_a_time() -> None:
    assert_schema_error(with_(occurred_at=1796040000), "occurred_at")


def test_model_takes_aware_datetimes_in_python_and_refuses_naive_ones() -> None:
    fields = {**MINIMAL, "event_type": EventType.PAGE_VIEW, "page_type": PageType.HOME}
    fields["device_type"] = DeviceType.DESKTOP
    plus_one = timezone(timedelta(hours=1))
    event = ClickEvent(**{**fields, "occurred_at": datetime(2026, 11, 30, 12, 59, tzinfo=plus_one)})
    assert event.occurred_at == datetime(2026, 11, 30, 11, 59, tzinfo=UTC)
    with pytest.raises(ValidationError, match="occurred_at"):
        ClickEvent(**{**fields, "occurred_at": datetime(2026, 11, 30, 11, 59)})


# -- future_timestamp ---------------------------------------------------------------------------


def test_exactly_at_the_future_tolerance_is_valid() -> None:
    event = decode(with_(occurred_at="2026-11-30T12:05:00Z"))
    assert event.occurred_at == NOW + TOLERANCE


def test_tolerance_applies_after_normalising_the_offset() -> None:
    event = decode(with_(occurred_at="2026-11-30T13:05:00+01:00"))
    assert event.occurred_at == NOW + TOLERANCE


@pytest.mark.parametrize("text", ["2026-11-30T12:05:00.000001Z", "2026-11-30T12:05:01Z"])
def test_just_past_the_future_tolerance_is_future_timestamp(text: str) -> None:
    error = rejection(with_(occurred_at=text))
    assert error.reason == "future_timestamp"
    assert "occurred_at" in error.detail


def test_far_past_events_are_valid() -> None:
    assert decode(with_(occurred_at="2001-01-01T00:00:00Z")).occurred_at.year == 2001


# -- user_id and other strings ---------------------------------------------------------------


@pytest.mark.parametrize("user_id", ["u", "u" * 128, "é" * 128, "visitor with spaces"])
def test_user_id_of_1_to_128_characters_is_valid(user_id: str) -> None:
    assert decode(with_(user_id=user_id)).user_id == user_id


@pytest.mark.parametrize("user_id", ["", "u" * 129, "é" * 129, 42])
def test_user_id_outside_1_to_128_characters_is_rejected(user_id: object) -> None:
    assert_schema_error(with_(user_id=user_id), "user_id")


def test_session_id_is_stored_as_given() -> None:
    assert decode(with_(session_id=" Tracker-Session 1 ")).session_id == " Tracker-Session 1 "
    assert decode(with_(session_id=None)).session_id is None


@pytest.mark.parametrize(
    "name",
    [
        "session_id",
        "utm_source",
        "utm_medium",
        "utm_campaign",
        "os",
        "browser",
        "city",
        "product_id",
        "search_query",
    ],
)
def test_optional_strings_refuse_numbers(name: str) -> None:
    assert decode(with_(**{name: "text"})).model_dump()[name] == "text"
    assert_schema_error(with_(**{name: 7}), name)


# -- URLs ---------------------------------------------------------------------------------------


def test_page_url_of_2048_characters_is_valid_and_2049_is_not() -> None:
    prefix = "https://shop.example.com/"
    at_limit = prefix + "a" * (2048 - len(prefix))
    assert len(at_limit) == 2048
    assert decode(with_(page_url=at_limit)).page_url == at_limit
    assert_schema_error(with_(page_url=at_limit + "a"), "page_url")


@pytest.mark.parametrize(
    "url", ["http://shop.example.com/cart", "https://shop.example.com/p/1?x=1#top"]
)
def test_http_and_https_page_urls_are_valid(url: str) -> None:
    assert decode(with_(page_url=url)).page_url == url


@pytest.mark.parametrize(
    "url",
    ["/cart", "shop.example.com/cart", "ftp://shop.example.com/", "https://", "mailto:a@b.c", ""],
)
def test_relative_or_non_http_page_urls_are_rejected(url: str) -> None:
    assert_schema_error(with_(page_url=url), "page_url")


@pytest.mark.parametrize(
    "url",
    [
        "https://www.google.com/",
        "android-app://com.google.android.gm/",
        # Absolute URLs without a host (RFC 3986: a scheme, then ':'); their source is direct.
        "mailto:someone@example.com",
        "urn:isbn:0451450523",
        None,
    ],
)
def test_referrer_is_any_absolute_url_or_null(url: str | None) -> None:
    assert decode(with_(referrer_url=url)).referrer_url == url


@pytest.mark.parametrize(
    "url",
    [
        "/previous",
        "www.google.com",
        "//cdn.example.com/x",  # relative to the scheme
        "",
        # http(s) without a host, or an authority without one
        "https:foo",
        "https://",
        "https://user@:80/x",
        "https://www.google.com:99999/",
    ],
)
def test_relative_referrer_is_rejected(url: str) -> None:
    assert_schema_error(with_(referrer_url=url), "referrer_url")


# -- country and coordinates ---------------------------------------------------------------


def test_upper_case_alpha_2_country_is_valid() -> None:
    assert decode(with_(country="DE")).country == "DE"


@pytest.mark.parametrize("country", ["de", "De", "DEU", "D", "D1", "DE\n", ""])
def test_country_not_upper_case_alpha_2_is_rejected(country: str) -> None:
    assert_schema_error(with_(country=country), "country")


@pytest.mark.parametrize(
    ("latitude", "longitude"),
    [(90, 180), (-90, -180), (90.0, -180.0), (0, 0), (52.52, 13.405)],
)
def test_coordinates_within_range_are_valid(latitude: float, longitude: float) -> None:
    event = decode(with_(latitude=latitude, longitude=longitude))
    assert (event.latitude, event.longitude) == (latitude, longitude)


@pytest.mark.parametrize(
    ("latitude", "longitude", "field"),
    [
        (90.0001, 0, "latitude"),
        (-90.0001, 0, "latitude"),
        (0, 180.0001, "longitude"),
        (0, -180.0001, "longitude"),
        ("52.5", 13.4, "latitude"),
        (True, 13.4, "latitude"),
    ],
)
def test_coordinates_out_of_range_or_not_numbers_are_rejected(
    latitude: object, longitude: object, field: str
) -> None:
    assert_schema_error(with_(latitude=latitude, longitude=longitude), field)


def test_latitude_without_longitude_is_rejected() -> None:
    assert_schema_error(with_(latitude=52.52), "longitude")
    assert_schema_error(with_(latitude=52.52, longitude=None), "longitude")


def test_longitude_without_latitude_is_rejected() -> None:
    assert_schema_error(with_(longitude=13.405), "latitude")


# -- purchases, revenue, currency ------------------------------------------------------------


def test_purchase_with_order_revenue_and_currency_is_valid() -> None:
    event = decode(PURCHASE)
    assert (event.order_id, event.revenue, event.currency) == ("ORD-1", Decimal("59.9"), "EUR")


@pytest.mark.parametrize("name", ["order_id", "revenue", "currency"])
def test_purchase_without_one_of_its_fields_is_rejected(name: str) -> None:
    assert_schema_error(without(name, PURCHASE), name)
    assert_schema_error({**PURCHASE, name: None}, name)


def test_purchase_without_any_of_its_fields_names_them_all() -> None:
    bare = {**PURCHASE, "order_id": None, "revenue": None, "currency": None}
    error = rejection(bare)
    assert error.reason == "schema"
    assert "order_id" in error.detail
    assert "revenue" in error.detail
    assert "currency" in error.detail


def test_other_event_types_need_no_order() -> None:
    assert decode(with_(event_type="add_to_cart", product_id="SKU-1")).order_id is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("19.99", Decimal("19.99")),
        ("20", Decimal("20")),
        ("0", Decimal("0")),
        ("0.01", Decimal("0.01")),
        ("1e2", Decimal("100")),
        ("9999999999.99", Decimal("9999999999.99")),
    ],
)
def test_revenue_with_at_most_two_decimals_is_valid(raw: str, expected: Decimal) -> None:
    payload = encode(PURCHASE).replace(b'"revenue": 59.9', f'"revenue": {raw}'.encode())
    assert decode(payload).revenue == expected


@pytest.mark.parametrize(
    "raw",
    [
        "19.999",  # three decimals
        "0.001",
        "-0.01",  # negative
        "-5",
        '"19.99"',  # a string, not a number
        "99999999999.99",  # 13 digits: more than numeric(12,2) holds
        "true",
        # More decimals than a binary float keeps: the nearest floats are 20.0, 0.15, 5.0 and
        # 0.0, which have two decimals at most; the numbers as written do not.
        "19.999999999999999999",
        "0.1499999999999999999",
        "5.00000000000000000000000000001",
        "1e-400",
        "-1e-400",
    ],
)
def test_revenue_with_three_decimals_negative_or_not_a_number_is_rejected(raw: str) -> None:
    payload = encode(PURCHASE).replace(b'"revenue": 59.9', f'"revenue": {raw}'.encode())
    assert_schema_error(payload, "revenue")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("12.50", Decimal("12.5")), ("12.500000", Decimal("12.5")), ("-0.0", Decimal("0"))],
)
def test_revenue_written_with_trailing_zeros_has_the_value_it_writes(
    raw: str, expected: Decimal
) -> None:
    payload = encode(PURCHASE).replace(b'"revenue": 59.9', f'"revenue": {raw}'.encode())
    assert decode(payload).revenue == expected


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ["revenue", "latitude", "unknown_extra"])
def test_nan_and_infinity_are_not_json(token: str, field: str) -> None:
    # Python's and pydantic's parsers read them; RFC 8259 has no such numbers.
    payload = {**PURCHASE, "latitude": 1.0, "longitude": 2.0}
    raw = encode(payload | {field: "HERE"}).replace(b'"HERE"', token.encode())
    failure = rejection(raw)
    assert failure.reason == "not_json"
    assert f"{token.lstrip('-')} is not a JSON number" in failure.detail


def test_nan_and_infinity_inside_strings_are_text() -> None:
    assert decode(with_(search_query="NaN Infinity -Infinity")).search_query == (
        "NaN Infinity -Infinity"
    )


@pytest.mark.parametrize("currency", ["eur", "Eur", "EURO", "EU", "€", "E1R"])
def test_currency_not_three_upper_case_letters_is_rejected(currency: str) -> None:
    assert_schema_error({**PURCHASE, "currency": currency}, "currency")


# -- size ---------------------------------------------------------------------------------------


def _padded_to(size: int) -> bytes:
    base = encode(with_(padding=""))
    padded = encode(with_(padding="x" * (size - len(base))))
    assert len(padded) == size
    return padded


def test_message_of_exactly_64_kib_is_valid() -> None:
    assert MAX_MESSAGE_BYTES == 65536
    assert decode(_padded_to(65536)).user_id == "visitor-1"


def test_message_of_64_kib_plus_one_is_too_large() -> None:
    error = rejection(_padded_to(65537))
    assert error.reason == "too_large"
    assert "65537" in error.detail


def test_size_is_checked_before_anything_else() -> None:
    assert rejection(b"\xff" * 70000).reason == "too_large"


# -- not JSON -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe{}",  # not UTF-8
        b'{"user_id": "caf\xe9"}',  # Latin-1 inside JSON
        b'{"event_id": ',  # truncated
        b"page_view,visitor-1",  # CSV
        b"",  # empty
        b"[]",  # JSON, not an object
        b'"a string"',
        b"42",
        b"null",
        b"true",
        None,  # a tombstone: no value at all
    ],
)
def test_non_objects_are_not_json(raw: bytes | None) -> None:
    assert rejection(raw).reason == "not_json"


def test_not_json_details_say_why() -> None:
    assert "UTF-8" in rejection(b"\xff\xfe{}").detail
    assert "tombstone" in rejection(None).detail
    assert "not an object" in rejection(b"[1, 2]").detail


@pytest.mark.parametrize(
    "raw",
    [
        b'{"x": 1' + b"0" * 4300 + b"}",  # one digit past Python's int conversion limit
        b"1" * 5000,
        b'{"x": [' + b"9" * 6000 + b"]}",
    ],
)
def test_integers_too_long_to_convert_are_not_json_and_not_a_crash(raw: bytes) -> None:
    failure = rejection(raw)
    assert failure.reason == "not_json"
    assert "number" in failure.detail


def test_an_unknown_field_nested_to_the_parsers_limit_is_ignored_and_past_it_is_not_json() -> None:
    # Objects: the message's own object and 199 more are 200 levels, the parser's limit.
    def nested(levels: int) -> bytes:
        return encode(with_(context="HERE")).replace(
            b'"HERE"', b'{"a": ' * levels + b"1" + b"}" * levels
        )

    assert decode(nested(MAX_JSON_DEPTH - 1)).event_id == EVENT_ID
    failure = rejection(nested(MAX_JSON_DEPTH))
    assert failure.reason == "not_json"
    assert f"more than about {MAX_JSON_DEPTH} levels deep" in failure.detail


def test_a_lone_surrogate_escape_is_not_json_and_says_so() -> None:
    for escape in (b"\\ud800", b"\\udc00x"):
        failure = rejection(encode(with_(city="HERE")).replace(b"HERE", escape))
        assert failure.reason == "not_json"
        assert "lone UTF-16 surrogate" in failure.detail
    # A pair is one character (U+1F600), and valid.
    assert (
        decode(encode(with_(city="HERE")).replace(b"HERE", b"\\ud83d\\ude00")).city == "\U0001f600"
    )


@pytest.mark.parametrize("depth", [2000, 30000])
def test_deeply_nested_json_is_not_json_and_not_a_crash(depth: int) -> None:
    # Valid JSON, far below the size limit, nested deeper than the parsers go: the stream
    # must get a reason, not a RecursionError (which would stop the consumer on every retry).
    raw = b'{"x": ' + b"[" * depth + b"]" * depth + b"}"
    assert len(raw) < MAX_MESSAGE_BYTES
    failure = rejection(raw)
    assert failure.reason == "not_json"
    assert "recursion" in failure.detail


def test_reason_codes_are_the_documented_ones() -> None:
    assert {reason.value for reason in Reason} >= {
        "not_json",
        "schema",
        "too_large",
        "future_timestamp",
    }


@pytest.mark.parametrize(
    "occurred_at",
    ["0001-01-01T00:00:00+01:00", "0001-01-01T00:10:00Z", "1969-12-31T23:59:59Z"],
)
def test_timestamps_before_the_epoch_are_schema_errors_not_crashes(occurred_at: str) -> None:
    assert_schema_error(with_(occurred_at=occurred_at), "occurred_at")


def test_the_epoch_itself_is_accepted() -> None:
    assert decode(with_(occurred_at="1970-01-01T00:00:00Z")).occurred_at == datetime(
        1970, 1, 1, tzinfo=UTC
    )


def test_the_largest_timestamp_is_a_future_timestamp_not_a_crash() -> None:
    # The last second of year 9999 in UTC is representable: it is simply in the future.
    late = rejection(with_(occurred_at="9999-12-31T23:59:59Z"))
    assert (late.reason, "occurred_at" in late.detail) == ("future_timestamp", True)
    # At -05:00 the same wall time is 10000-01-01T04:59:59Z, past the largest date: that is
    # an invalid value (schema), named as such, not a crash.
    overflow = rejection(with_(occurred_at="9999-12-31T23:59:59-05:00"))
    assert overflow.reason == "schema"
    assert "field 'occurred_at'" in overflow.detail
    assert "out of range" in overflow.detail


@pytest.mark.parametrize("country", ["XX", "UK", "EU"])
def test_country_must_be_an_assigned_iso_code(country: str) -> None:
    assert_schema_error(with_(country=country), "country")


def test_assigned_country_codes_are_accepted() -> None:
    for country in ("DE", "US", "GB", "AQ", "SS"):
        assert decode(with_(country=country)).country == country


@pytest.mark.parametrize("currency", ["XYZ", "EURO", "eur"])
def test_currency_must_be_an_iso_4217_code(currency: str) -> None:
    purchase = with_(event_type="purchase", order_id="o-1", revenue=1.5, currency=currency)
    assert_schema_error(purchase, "currency")


@pytest.mark.parametrize("url", ["http:// /", "https://", "https://exa mple.com/", "https://[::1/"])
def test_urls_need_a_host(url: str) -> None:
    assert_schema_error(with_(page_url=url), "page_url")
    assert_schema_error(with_(referrer_url=url), "referrer_url")


@pytest.mark.parametrize(
    "url",
    [
        # urlsplit drops tab, CR and LF without a word: the URL would pass changed.
        "https://shop.example.com\n/cart",
        "https://shop.example.com/ca\trt",
        "https://shop.example.com/cart\r",
        "https://shop.example.com/\x00",
        "https://shop.example.com/\x7f",
        # A port must be a number in 0..65535.
        "https://shop.example.com:99999/",
        "https://shop.example.com:http/",
    ],
)
def test_urls_with_control_characters_or_a_bad_port_are_invalid(url: str) -> None:
    assert_schema_error(with_(page_url=url), "page_url")
    assert_schema_error(with_(referrer_url=url), "referrer_url")


def test_a_url_with_a_valid_port_or_non_ascii_text_is_valid() -> None:
    url = "https://shop.example.com:8443/s?q=caf\u00e9 cr\u00e8me"
    assert decode(with_(page_url=url, referrer_url=url)).page_url == url

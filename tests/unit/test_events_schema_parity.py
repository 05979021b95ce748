"""The published JSON Schema and the consumer's decoder agree, case by case.

A producer that checks its events against ``click_event.v1.json`` with a standard validator
(draft 2020-12, formats checked) must get the consumer's verdict. Each hand-written message
below goes through both; they must agree, except for the rules a JSON Schema cannot state,
which are listed with the decoder's reason (and named in docs/events.md).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from clickstream.errors import InvalidEvent
from clickstream.events import SCHEMA_PATH, decode_event
from tests.support import MINIMAL_EVENT

# Far in the future: the clock-relative rule (future_timestamp) is not the schema's business.
NOW = datetime(2100, 1, 1, tzinfo=UTC)

BASE: dict[str, Any] = MINIMAL_EVENT
PURCHASE: dict[str, Any] = BASE | {
    "event_type": "purchase",
    "page_type": "confirmation",
    "order_id": "ORD-1",
    "revenue": 59.9,
    "currency": "EUR",
}


def _raw(base: dict[str, Any] = BASE, **changes: Any) -> bytes:
    data = dict(base)
    for key, value in changes.items():
        if value is ...:
            data.pop(key)
        else:
            data[key] = value
    return json.dumps(data, ensure_ascii=False).encode()


def _with_literal(field: str, literal: bytes, base: dict[str, Any] = BASE) -> bytes:
    return _raw(base, **{field: "HERE"}).replace(b'"HERE"', literal)


# (case, message, the decoder accepts it)
CASES: list[tuple[str, bytes, bool]] = [
    ("minimal", _raw(), True),
    ("purchase", _raw(PURCHASE), True),
    (
        "every optional field",
        _raw(
            PURCHASE,
            referrer_url="https://www.google.com/",
            utm_source="news",
            country="DE",
            city="Berlin",
            latitude=52.52,
            longitude=13.405,
            os="iOS",
            browser="Safari",
            session_id="s-1",
            product_id="p",
            search_query="q",
        ),
        True,
    ),
    ("unknown extra field", _raw(tracker="9.1"), True),
    ("upper-case event id", _raw(event_id=BASE["event_id"].upper()), True),
    ("offset +23:59", _raw(occurred_at="2026-12-01T11:58:00+23:59"), True),
    ("lower-case t and z", _raw(occurred_at="2026-11-30t11:59:00z"), True),
    ("nine fraction digits", _raw(occurred_at="2026-11-30T11:59:00.123456789Z"), True),
    ("leap second", _raw(occurred_at="2016-12-31T23:59:60Z"), True),
    ("space separator", _raw(occurred_at="2026-11-30 11:59:00Z"), True),
    ("revenue 12.50", _with_literal("revenue", b"12.50", PURCHASE), True),
    ("revenue at the maximum", _with_literal("revenue", b"9999999999.99", PURCHASE), True),
    ("coordinates at the bounds", _raw(latitude=-90, longitude=180), True),
    ("user id of 128", _raw(user_id="u" * 128), True),
    ("page url of 2048", _raw(page_url="https://shop.example.com/" + "a" * 2023), True),
    ("referrer of any scheme", _raw(referrer_url="android-app://com.example.app"), True),
    ("referrer without a host", _raw(referrer_url="mailto:someone@example.com"), True),
    ("missing event id", _raw(event_id=...), False),
    ("non-canonical event id", _raw(event_id="3f2b8c1e9d4a4c6b8e2f1a7d5c9b0e44"), False),
    ("unknown event type", _raw(event_type="hover"), False),
    ("naive time", _raw(occurred_at="2026-11-30T11:59:00"), False),
    ("offset minutes 60", _raw(occurred_at="2026-11-30T11:59:00+01:60"), False),
    ("offset +24:00", _raw(occurred_at="2026-11-30T11:59:00+24:00"), False),
    ("no such day", _raw(occurred_at="2026-02-30T11:59:00Z"), False),
    ("time as a number", _raw(occurred_at=1796040000), False),
    ("empty user id", _raw(user_id=""), False),
    ("user id of 129", _raw(user_id="u" * 129), False),
    ("relative page url", _raw(page_url="/cart"), False),
    ("ftp page url", _raw(page_url="ftp://shop.example.com/"), False),
    ("page url of 2049", _raw(page_url="https://shop.example.com/" + "a" * 2024), False),
    ("relative referrer", _raw(referrer_url="google.com"), False),
    ("unknown page type", _raw(page_type="landing"), False),
    ("unknown device type", _raw(device_type="watch"), False),
    ("lower-case country", _raw(country="de"), False),
    ("latitude without longitude", _raw(latitude=1.0), False),
    ("latitude 90.0001", _raw(latitude=90.0001, longitude=0), False),
    ("purchase without revenue", _raw(PURCHASE, revenue=...), False),
    ("purchase without currency", _raw(PURCHASE, currency=...), False),
    ("negative revenue", _raw(PURCHASE, revenue=-1), False),
    ("revenue as a string", _raw(PURCHASE, revenue="9.99"), False),
    ("revenue of 13 digits", _with_literal("revenue", b"99999999999.99", PURCHASE), False),
    ("lower-case currency", _raw(PURCHASE, currency="eur"), False),
    ("optional string as a number", _raw(session_id=7), False),
    ("NaN", _with_literal("latitude", b"NaN", BASE | {"longitude": 0}), False),
    ("leap second at noon", _raw(occurred_at="2016-12-31T12:00:60Z"), False),
    # Rules no JSON Schema keyword states (see DECODER_ONLY).
    ("revenue with three decimals", _with_literal("revenue", b"19.999", PURCHASE), False),
    ("excess revenue digits", _with_literal("revenue", b"19.999999999999999999", PURCHASE), False),
    ("before the epoch", _raw(occurred_at="1969-12-31T23:59:59Z"), False),
    ("NUL in a string", _raw(city="a\u0000b"), False),
    ("lone surrogate", _with_literal("city", b'"\\ud800"'), False),
    ("control character in a url", _raw(page_url="https://shop.example.com/a\tb"), False),
    ("port out of range", _raw(page_url="https://shop.example.com:99999/"), False),
    ("https referrer without a host", _raw(referrer_url="https:foo"), False),
    ("page url with a port but no host", _raw(page_url="https://:80/"), False),
]

DECODER_ONLY: dict[str, str] = {
    # Two decimals: multipleOf 0.01 fails on binary floats (19.99 / 0.01 is not whole).
    "revenue with three decimals": "schema",
    "excess revenue digits": "schema",
    "before the epoch": "schema",
    "NUL in a string": "schema",
    # JSON's grammar allows the escape; the text is not Unicode.
    "lone surrogate": "not_json",
    "control character in a url": "schema",
    "port out of range": "schema",
    "https referrer without a host": "schema",
}


SCHEMA_ONLY: dict[str, str] = {
    # Refused by the schema's date-time format checker (rfc3339-validator), taken by the decoder:
    # RFC 3339 allows both. Stricter, so a producer that follows the schema loses nothing.
    "leap second": "the checker supports no leap seconds",
    "space separator": "the checker takes only T (RFC 3339 section 5.6 allows a space)",
}


def _schema_accepts(validator: Draft202012Validator, raw: bytes) -> bool:
    def refuse(name: str) -> Any:
        raise ValueError(name)

    try:
        document = json.loads(raw, parse_constant=refuse)  # strict JSON: no NaN, no Infinity
    except ValueError:
        return False
    return validator.is_valid(document)


def _decoder_reason(raw: bytes) -> str | None:
    try:
        decode_event(raw, now=NOW, future_tolerance=timedelta(0))
    except InvalidEvent as exc:
        return str(exc.reason)
    return None


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_the_date_time_format_is_checked(validator: Draft202012Validator) -> None:
    # Without the format checker the schema would take "2026-02-30" (its pattern cannot count
    # days), and the cases below would prove less.
    assert "date-time" in validator.format_checker.checkers


@pytest.mark.parametrize(("case", "raw", "accepted"), CASES, ids=[c[0] for c in CASES])
def test_the_schema_and_the_decoder_agree(
    validator: Draft202012Validator, case: str, raw: bytes, accepted: bool
) -> None:
    reason = _decoder_reason(raw)
    assert (reason is None) == accepted, (case, reason)
    if case in DECODER_ONLY:
        assert reason == DECODER_ONLY[case]
        assert _schema_accepts(validator, raw), f"{case}: the schema now states it; move it up"
    elif case in SCHEMA_ONLY:
        assert not _schema_accepts(validator, raw), f"{case}: the checker takes it now"
    else:
        assert _schema_accepts(validator, raw) == accepted, case

"""The click event contract, version 1: one typed model for producer and consumer alike.

A message is one JSON object (UTF-8) keyed by ``user_id``. :func:`decode_event` turns the raw
bytes of a message into a :class:`ClickEvent` or raises :class:`~clickstream.errors.InvalidEvent`
with a stable reason code (see :class:`Reason`) and a detail that names the offending field.
The checked-in JSON Schema (``clickstream/schemas/click_event.v1.json``) is generated from this
model by ``python -m clickstream.events --schema`` and a test fails when the two drift.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

import pycountry
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from clickstream.errors import ClickstreamError, InvalidEvent

__all__ = [
    "EARLIEST_OCCURRED_AT",
    "MAX_JSON_DEPTH",
    "MAX_MESSAGE_BYTES",
    "SCHEMA_PATH",
    "ClickEvent",
    "DeviceType",
    "EventType",
    "PageType",
    "Reason",
    "decode_event",
    "json_schema",
]

MAX_MESSAGE_BYTES: Final = 64 * 1024
"""A message larger than this is invalid (``too_large``)."""

MAX_JSON_DEPTH: Final = 200
"""About how deep arrays and objects may nest (the message's own object included): the JSON
parser's limit (pydantic-core's). A message nested deeper is ``not_json``, whatever the field."""

SCHEMA_PATH: Final = Path(__file__).with_name("schemas") / "click_event.v1.json"

EARLIEST_OCCURRED_AT: Final = datetime(1970, 1, 1, tzinfo=UTC)
"""``occurred_at`` before this instant is invalid (``schema``)."""

_COUNTRIES: Final = frozenset(country.alpha_2 for country in pycountry.countries)
_CURRENCIES: Final = frozenset(currency.alpha_3 for currency in pycountry.currencies)


class Reason(StrEnum):
    """Reason codes carried by dead-lettered messages (header ``reason``)."""

    NOT_JSON = "not_json"
    SCHEMA = "schema"
    TOO_LARGE = "too_large"
    FUTURE_TIMESTAMP = "future_timestamp"
    REJECTED_BY_SINK = "rejected_by_sink"


class EventType(StrEnum):
    """What the visitor did."""

    PAGE_VIEW = "page_view"
    SEARCH = "search"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    BEGIN_CHECKOUT = "begin_checkout"
    PURCHASE = "purchase"


class PageType(StrEnum):
    """The kind of page the event happened on."""

    HOME = "home"
    CATEGORY = "category"
    PRODUCT = "product"
    SEARCH = "search"
    CART = "cart"
    CHECKOUT = "checkout"
    CONFIRMATION = "confirmation"
    ACCOUNT = "account"
    OTHER = "other"


class DeviceType(StrEnum):
    """The visitor's device class."""

    DESKTOP = "desktop"
    MOBILE = "mobile"
    TABLET = "tablet"


_UUID_RE: Final = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
# RFC 3339 date-time: seconds are required, and so is the offset.
# re.ASCII: "\d" is 0-9 only, as in the JSON Schema (ECMA-262), not any Unicode digit.
_RFC3339_RE: Final = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)$",
    re.ASCII,
)
_LEAP_SECOND: Final = timedelta(seconds=1)


def _canonical_uuid(value: str) -> str:
    # fullmatch: the published pattern ends in "$", which in Python also matches before a
    # trailing newline, and "...000\n" must not become an event id.
    if not _UUID_RE.fullmatch(value):
        msg = "must be a UUID in canonical text form (8-4-4-4-12 hex digits)"
        raise ValueError(msg)
    return value.lower()


def _rfc3339(value: Any) -> datetime:
    if isinstance(value, datetime):  # built in Python (the simulator): aware values only
        if value.utcoffset() is None:
            msg = "must be timezone-aware"
            raise ValueError(msg)
        return _after_epoch(value.astimezone(UTC))
    match = _RFC3339_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        msg = "must be an RFC 3339 date-time with an offset, e.g. 2024-05-01T12:00:00Z"
        raise ValueError(msg)
    date, hours_minutes, seconds, fraction, offset = match.groups()
    # Python keeps microseconds: finer fractions are truncated, never rounded up.
    micros = (fraction or ".0")[1:7].ljust(6, "0")
    offset = "+00:00" if offset in ("Z", "z") else offset
    leap = seconds == "60"
    try:
        parsed = datetime.fromisoformat(
            f"{date}T{hours_minutes}:{'59' if leap else seconds}.{micros}{offset}"
        ).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        msg = f"is not a valid date-time: {exc}"
        raise ValueError(msg) from None
    if leap:
        # RFC 3339 allows second 60 for a leap second, inserted only at the end of a UTC day:
        # it is taken as the next day's first second, as PostgreSQL reads it.
        if (parsed.hour, parsed.minute) != (23, 59):
            msg = "has second 60, which only a leap second at 23:59:60 UTC may have"
            raise ValueError(msg)
        parsed += _LEAP_SECOND
    return _after_epoch(parsed)


def _after_epoch(value: datetime) -> datetime:
    # Clicks before the Unix epoch are corrupt clocks, and far-past values would overflow
    # the session window arithmetic (occurred_at - gap) downstream.
    if value < EARLIEST_OCCURRED_AT:
        msg = f"must not be before {EARLIEST_OCCURRED_AT.isoformat()}"
        raise ValueError(msg)
    return value


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
"""Control characters, never part of a URL (urlsplit silently drops tab, CR and LF)."""


def _absolute_url(value: str, *, schemes: tuple[str, ...] | None) -> str:
    if _CONTROL.search(value):
        msg = "must be a URL without control characters (tab, newline, ...)"
        raise ValueError(msg)
    try:
        parts = urlsplit(value)
        host = parts.hostname
        _port = parts.port  # refuses a port that is not a number in 0..65535
    except ValueError:  # e.g. an unbalanced "[" in the host, port 99999
        host = None
        parts = None
    if parts is None:
        msg = "must be an absolute URL with a valid host (and a port, if any, in 0..65535)"
        raise ValueError(msg)
    if not parts.scheme:
        msg = "must be an absolute URL: a scheme, then ':' (e.g. https://example.com/)"
        raise ValueError(msg)
    scheme = parts.scheme.lower()
    # A host is required where the scheme has one (http, https: RFC 9110) or the URL names an
    # authority ("//..."); other absolute URLs (mailto:..., urn:...) have none.
    needs_host = scheme in _HOST_SCHEMES or bool(parts.netloc)
    if needs_host and (not host or any(c.isspace() for c in host)):
        msg = "must be an absolute URL with a host (and a port, if any, in 0..65535)"
        raise ValueError(msg)
    if schemes is not None and scheme not in schemes:
        msg = f"must be an absolute {' or '.join(schemes)} URL"
        raise ValueError(msg)
    return value


_HOST_SCHEMES: Final = frozenset({"http", "https"})


def _iso_country(value: str) -> str:
    if value not in _COUNTRIES:
        msg = f"{value!r} is not an ISO 3166-1 alpha-2 country code in upper case (e.g. DE)"
        raise ValueError(msg)
    return value


def _iso_currency(value: str) -> str:
    if value not in _CURRENCIES:
        msg = f"{value!r} is not an ISO 4217 currency code in upper case (e.g. EUR)"
        raise ValueError(msg)
    return value


# Clickstreams repeat the same few thousand URLs: remember the ones that passed.
@functools.lru_cache(maxsize=65536)
def _page_url(value: str) -> str:
    return _absolute_url(value, schemes=("http", "https"))


@functools.lru_cache(maxsize=65536)
def _referrer_url(value: str) -> str:
    return _absolute_url(value, schemes=None)


def _json_number(value: Any) -> Any:
    # The contract says "number": a JSON string is not accepted, even if it looks numeric.
    # The float's shortest repr is what the producer wrote, so Decimal(repr) is exact.
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        msg = "must be a JSON number"
        raise ValueError(msg)
    return value if isinstance(value, Decimal) else Decimal(repr(value))


EventId = Annotated[str, AfterValidator(_canonical_uuid)]
OccurredAt = Annotated[datetime, BeforeValidator(_rfc3339)]
PageUrl = Annotated[str, Field(max_length=2048), AfterValidator(_page_url)]
ReferrerUrl = Annotated[str, AfterValidator(_referrer_url)]
Revenue = Annotated[
    Decimal,
    BeforeValidator(_json_number),
    Field(ge=0, max_digits=12, decimal_places=2),
    PlainSerializer(float, return_type=float, when_used="json"),
    # In standard keywords (pydantic's own, max_digits and the like, are not JSON Schema). Two
    # decimals has no keyword that works on binary floats (multipleOf 0.01 fails 19.99).
    WithJsonSchema(
        {
            "type": "number",
            "minimum": 0,
            "maximum": 9999999999.99,
            "description": "at most two decimal places, e.g. 19.99 (numeric(12,2))",
        },
        mode="validation",
    ),
]

_PURCHASE_RULE: Final[dict[str, Any]] = {
    "if": {"properties": {"event_type": {"const": "purchase"}}, "required": ["event_type"]},
    "then": {
        "properties": {
            "order_id": {"type": "string"},
            "revenue": {"type": "number"},
            "currency": {"type": "string"},
        },
        "required": ["order_id", "revenue", "currency"],
    },
}
_COORDINATES_RULE: Final[dict[str, Any]] = {
    "dependentRequired": {"latitude": ["longitude"], "longitude": ["latitude"]},
}


class ClickEvent(BaseModel):
    """One click event, validated against the version 1 contract.

    ``occurred_at`` is normalised to UTC and ``event_id`` to lower case; unknown extra fields
    are ignored. Instances are immutable.
    """

    model_config = ConfigDict(
        frozen=True,
        strict=True,
        extra="ignore",
        title="ClickEvent",
        json_schema_extra={"allOf": [_PURCHASE_RULE, _COORDINATES_RULE]},
    )

    event_id: EventId
    event_type: EventType
    occurred_at: OccurredAt
    user_id: Annotated[str, Field(min_length=1, max_length=128)]
    session_id: str | None = None
    page_url: PageUrl
    page_type: PageType
    referrer_url: ReferrerUrl | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    device_type: DeviceType
    os: str | None = None
    browser: str | None = None
    country: Annotated[str, AfterValidator(_iso_country)] | None = None
    city: str | None = None
    latitude: Annotated[float, Field(ge=-90, le=90)] | None = None
    longitude: Annotated[float, Field(ge=-180, le=180)] | None = None
    product_id: str | None = None
    search_query: str | None = None
    order_id: str | None = None
    revenue: Revenue | None = None
    currency: Annotated[str, AfterValidator(_iso_currency)] | None = None

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ClickEvent:
        if (self.latitude is None) != (self.longitude is None):
            absent = "latitude" if self.latitude is None else "longitude"
            msg = f"field '{absent}': latitude and longitude are given together or not at all"
            raise ValueError(msg)
        if self.event_type is EventType.PURCHASE:
            missing = [
                name for name in ("order_id", "revenue", "currency") if getattr(self, name) is None
            ]
            if missing:
                msg = f"field '{missing[0]}': required when event_type is 'purchase'"
                if len(missing) > 1:
                    msg += f" (and so are: {', '.join(missing[1:])})"
                raise ValueError(msg)
        return self

    def to_json(self) -> bytes:
        """Serialise to the wire form: compact UTF-8 JSON, ``occurred_at`` in UTC with ``Z``."""
        return self.model_dump_json(exclude_none=True).encode()


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the event contract, generated from :class:`ClickEvent`."""
    schema = ClickEvent.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://clickstream.dev/schemas/click_event.v1.json"
    schema["description"] = (
        "A click event, version 1. One JSON object per Kafka message, keyed by user_id."
    )
    schema["properties"]["occurred_at"]["pattern"] = _RFC3339_RE.pattern
    schema["properties"]["event_id"]["pattern"] = _UUID_RE.pattern
    schema["properties"]["occurred_at"]["description"] = (
        f"RFC 3339 with an offset, not before {EARLIEST_OCCURRED_AT.isoformat()}"
    )
    for name, codes in (("country", _COUNTRIES), ("currency", _CURRENCIES)):
        string, _null = schema["properties"][name]["anyOf"]
        string["enum"] = sorted(codes)
    # What the URL validators require, as far as a pattern says it: a scheme and a host.
    schema["properties"]["page_url"]["pattern"] = _PAGE_URL_PATTERN
    schema["properties"]["page_url"]["description"] = "an absolute http(s) URL with a host"
    referrer, _null = schema["properties"]["referrer_url"]["anyOf"]
    referrer["pattern"] = _ABSOLUTE_URL_PATTERN
    referrer["description"] = "an absolute URL (a scheme, then ':'); http(s) ones with a host"
    return schema


_PAGE_URL_PATTERN: Final = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#:]"
_ABSOLUTE_URL_PATTERN: Final = r"^[A-Za-z][A-Za-z0-9+.-]*:"


def _field_detail(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    more = error.error_count() - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    if field:
        return f"field '{field}': {message}{suffix}"
    return f"{message}{suffix}"


def decode_event(raw: bytes | None, *, now: datetime, future_tolerance: timedelta) -> ClickEvent:
    """Validate one message value against the contract.

    Args:
        raw: the message value as received.
        now: the consumer's clock (timezone-aware).
        future_tolerance: how far past ``now`` ``occurred_at`` may lie.

    Raises:
        InvalidEvent: with reason ``too_large``, ``not_json``, ``schema`` or ``future_timestamp``.
    """
    if raw is None:
        raise InvalidEvent(Reason.NOT_JSON, "the message has no value (tombstone)")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidEvent(
            Reason.TOO_LARGE, f"message is {len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES}"
        )
    if b"NaN" in raw or b"Infinity" in raw:  # rare: then ask a strict parser (no hot-path cost)
        _reject_non_json_numbers(raw)
    try:
        event = ClickEvent.model_validate_json(raw)
    except (OverflowError, RecursionError) as exc:  # a value beyond what Python represents
        raise InvalidEvent(Reason.SCHEMA, f"a value is out of range: {exc}") from None
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        kinds = {item["type"] for item in errors}
        if "json_invalid" in kinds:
            raise InvalidEvent(Reason.NOT_JSON, _not_json_detail(raw, errors[0]["msg"])) from None
        if kinds & {"json_type", "model_type"}:
            raise InvalidEvent(Reason.NOT_JSON, "the message is JSON but not an object") from None
        raise InvalidEvent(Reason.SCHEMA, _field_detail(exc)) from None
    if b"\\u0000" in raw:
        _reject_nul(event)
    if event.revenue is not None:
        _check_exact_revenue(raw)
    if event.occurred_at > now + future_tolerance:
        raise InvalidEvent(
            Reason.FUTURE_TIMESTAMP,
            f"field 'occurred_at': {event.occurred_at.isoformat()} is more than "
            f"{future_tolerance} ahead of the consumer clock ({now.isoformat()})",
        )
    return event


class _NonJsonConstant(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonJsonConstant(name)


def _reject_non_json_numbers(raw: bytes) -> None:
    # Pydantic's parser, like Python's, reads NaN, Infinity and -Infinity, which JSON does not
    # have (RFC 8259): such a message is not JSON. Inside a string they are just text.
    try:
        json.loads(raw, parse_constant=_refuse_constant)
    except _NonJsonConstant as exc:
        raise InvalidEvent(
            Reason.NOT_JSON, f"the message is not JSON: {exc.args[0]} is not a JSON number"
        ) from None
    except (ValueError, RecursionError):
        pass  # not JSON for another reason, which the validation below names


_CENTS: Final = Decimal("0.01")


def _check_exact_revenue(raw: bytes) -> None:
    # The JSON parser reads a number as a binary float, so 19.999999999999999999 arrives as 20.0
    # and would pass "two decimals". Read the number's own digits (purchases only) and check
    # them: the rule is about the value sent, not its nearest float.
    try:
        value = json.loads(raw, parse_float=Decimal).get("revenue")
    except (ValueError, RecursionError):
        return  # cannot happen after the validation above; nothing more to check
    if isinstance(value, Decimal) and value.is_finite() and value != value.quantize(_CENTS):
        raise InvalidEvent(
            Reason.SCHEMA,
            f"field 'revenue': {value} has more than two decimal places",
        )


def _reject_nul(event: ClickEvent) -> None:
    # Valid JSON and Unicode, but no SQL text type stores U+0000: refuse it here, with a field.
    for name, value in event:
        if isinstance(value, str) and "\x00" in value:
            raise InvalidEvent(Reason.SCHEMA, f"field '{name}': contains a NUL character (U+0000)")


def _not_json_detail(raw: bytes, parser_message: str) -> str:
    try:
        json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return f"the message is not UTF-8: {exc.reason} at byte {exc.start}"
    except json.JSONDecodeError as exc:
        return f"the message is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except (ValueError, RecursionError):
        # Limits of Python's parser too, which pydantic's parser also refused: nesting deeper
        # than the recursion limit, an integer of more than 4,300 digits. Its own words follow.
        pass
    else:
        # Python's parser is laxer than pydantic's in two ways; name them.
        if "recursion limit" in parser_message:
            return (
                "the message nests arrays or objects more than about "
                f"{MAX_JSON_DEPTH} levels deep, the parser's limit ({parser_message})"
            )
        if "surrogate" in parser_message or "hex escape" in parser_message:
            return (
                "the message has a \\u escape of a lone UTF-16 surrogate (\\ud800 to \\udfff "
                f"without its pair), which is no Unicode character ({parser_message})"
            )
    return f"the message is not valid JSON text: {parser_message}"


def _main(argv: Sequence[str] | None = None) -> int:
    from clickstream.cli import number  # noqa: PLC0415 - the command's, not the contract's

    parser = argparse.ArgumentParser(
        prog="python -m clickstream.events",
        description="The click event contract (v1): print its JSON Schema or validate messages.",
        epilog="Examples:\n  python -m clickstream.events --schema\n"
        "  python -m clickstream.events --validate events.ndjson\n"
        "  python -m clickstream.produce --stdout --count 1000 --rate 0 | "
        "python -m clickstream.events --validate -\n\n"
        "--validate reads one event per line and skips blank lines. Exit status: 0 all valid, "
        "1 some invalid,\n2 the file cannot be read or a setting is wrong.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--schema", action="store_true", help="print the JSON Schema")
    group.add_argument(
        "--validate",
        metavar="FILE",
        help="validate one JSON event per line ('-' for stdin); exit 1 if any is invalid",
    )
    parser.add_argument(
        "--future-tolerance",
        type=number(0.0, 86400.0),  # the bounds of CLICKSTREAM_FUTURE_TOLERANCE_SECONDS
        metavar="SECONDS",
        help="how far in the future occurred_at may lie, 0 to 86400, as the consumer allows "
        "(default: $CLICKSTREAM_FUTURE_TOLERANCE_SECONDS or 300)",
    )
    args = parser.parse_args(argv)
    if args.schema:
        sys.stdout.write(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
        return 0
    # Only the command reads settings: the contract itself (and the simulator) does not.
    from clickstream.settings import load_settings  # noqa: PLC0415

    try:
        tolerance = timedelta(
            seconds=args.future_tolerance
            if args.future_tolerance is not None
            else load_settings(
                uses=frozenset({"future_tolerance_seconds"}), command="clickstream.events"
            ).future_tolerance_seconds
        )
        stream = sys.stdin.buffer if args.validate == "-" else Path(args.validate).open("rb")  # noqa: SIM115
    except (OSError, ClickstreamError, OverflowError) as exc:
        sys.stderr.write(f"python -m clickstream.events: {exc}\n")
        return 2
    invalid = 0
    try:
        with stream:
            for line_number, line in enumerate(stream, start=1):
                message = line.rstrip(b"\r\n")
                if not message.strip():
                    continue
                try:
                    decode_event(message, now=datetime.now(UTC), future_tolerance=tolerance)
                except InvalidEvent as exc:
                    invalid += 1
                    sys.stdout.write(f"line {line_number}: {exc.reason}: {exc.detail}\n")
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1 if invalid else 0
    except OSError as exc:  # e.g. a directory, or a read error mid-file
        sys.stderr.write(f"python -m clickstream.events: cannot read {args.validate}: {exc}\n")
        return 2
    return 1 if invalid else 0


if __name__ == "__main__":
    raise SystemExit(_main())

"""Rows of the ``events`` and ``sessions`` tables as OpenSearch documents (pure, no I/O).

A document carries exactly the columns the index template maps (the mappings are
``dynamic: strict``), so a column the search side does not know, such as ``kafka_offset``, is left
out instead of making OpenSearch reject the document. Values become JSON: datetimes as ISO 8601
in UTC, ``Decimal`` as a number, UUIDs as text; numbers and dates that arrive as text (a
``model_dump(mode="json")``) are normalised the same way. ``latitude``/``longitude`` also become
the ``geo_point`` field ``location`` when both are present.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Final

from clickstream.search.indices import mapping_properties

__all__ = [
    "EVENT_FIELDS",
    "SESSION_FIELDS",
    "DocumentError",
    "event_document",
    "json_value",
    "location_of",
    "occurred_at_of",
    "session_document",
]

_EVENT_TYPES: Final = {
    name: str(spec["type"]) for name, spec in mapping_properties("events").items()
}
_SESSION_TYPES: Final = {
    name: str(spec["type"]) for name, spec in mapping_properties("sessions").items()
}
EVENT_FIELDS: Final = frozenset(_EVENT_TYPES) - {"location"}
"""Row keys copied into an event document (``location`` is derived)."""
SESSION_FIELDS: Final = frozenset(_SESSION_TYPES) - {"location"}
"""Row keys copied into a session document (``location`` is derived)."""
_FLOATING: Final = frozenset({"double", "float", "half_float"})
_INTEGRAL: Final = frozenset({"byte", "short", "integer", "long"})


class DocumentError(ValueError):
    """A row cannot be turned into a document; the message names the field."""


def json_value(value: Any, *, field: str = "?") -> Any:
    """Convert one column value to the JSON value OpenSearch gets.

    ``datetime`` must be timezone-aware and becomes ISO 8601 in UTC with a ``Z`` suffix;
    ``Decimal`` becomes a float (the mappings use ``double``); UUIDs and enums become text.

    Raises:
        DocumentError: naive datetime, NaN/infinite number, or a type JSON cannot carry.
    """
    if value is None or isinstance(value, bool | int | str):
        return value.value if isinstance(value, Enum) else value
    if isinstance(value, float | Decimal):
        number = float(value)
        if not math.isfinite(number):
            msg = f"{field}: {value} is not a finite number"
            raise DocumentError(msg)
        return number
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            msg = f"{field}: naive datetime {value.isoformat()}; timezone-aware values only"
            raise DocumentError(msg)
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Enum):
        return json_value(value.value, field=field)
    msg = f"{field}: cannot store a {type(value).__name__} in OpenSearch"
    raise DocumentError(msg)


def location_of(row: Mapping[str, Any]) -> dict[str, float] | None:
    """The ``geo_point`` of a row with ``latitude`` and ``longitude``, or ``None``.

    Ranges are not checked here: OpenSearch rejects out-of-range points, and the sink reports
    that document as rejected.

    Raises:
        DocumentError: a coordinate is not a number.
    """
    latitude, longitude = row.get("latitude"), row.get("longitude")
    if latitude is None or longitude is None:
        return None
    try:
        return {"lat": float(latitude), "lon": float(longitude)}
    except (TypeError, ValueError) as exc:
        msg = f"latitude/longitude: not numbers ({latitude!r}, {longitude!r})"
        raise DocumentError(msg) from exc


def _required_text(row: Mapping[str, Any], field: str) -> str:
    value = row.get(field)
    if value is None or str(value) == "":
        msg = f"{field}: missing"
        raise DocumentError(msg)
    return str(value)


def occurred_at_of(row: Mapping[str, Any]) -> datetime:
    """The aware ``occurred_at`` of an event row (a datetime, or ISO 8601 text with an offset).

    Raises:
        DocumentError: missing, unparsable or naive.
    """
    value = row.get("occurred_at")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            msg = f"occurred_at: not ISO 8601 ({value!r})"
            raise DocumentError(msg) from exc
    if not isinstance(value, datetime):
        msg = f"occurred_at: missing or not a datetime ({value!r})"
        raise DocumentError(msg)
    if value.tzinfo is None or value.utcoffset() is None:
        msg = f"occurred_at: naive datetime {value.isoformat()}; timezone-aware values only"
        raise DocumentError(msg)
    return value


def _from_text(value: str, mapping_type: str) -> Any:
    """Numbers and dates that arrive as text (JSON-mode dumps) as JSON numbers and UTC dates.

    Text that does not parse is left alone: OpenSearch then rejects the document with a reason.
    """
    if mapping_type in _FLOATING or mapping_type in _INTEGRAL:
        try:
            number = Decimal(value)
        except ArithmeticError:
            return value
        if not number.is_finite():
            return value
        if mapping_type in _FLOATING:
            return float(number)
        return int(number) if number == number.to_integral_value() else value
    if mapping_type == "date":
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
        if parsed.tzinfo is not None and parsed.utcoffset() is not None:
            return json_value(parsed)
    return value


def _document(row: Mapping[str, Any], types: Mapping[str, str]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, raw in row.items():
        mapping_type = types.get(key)
        if mapping_type is None or key == "location":
            continue
        value = json_value(raw, field=key)
        document[key] = _from_text(value, mapping_type) if isinstance(value, str) else value
    location = location_of(row)
    if location is not None:
        document["location"] = location
    return document


def event_document(row: Mapping[str, Any]) -> tuple[str, datetime, dict[str, Any]]:
    """``(event_id, occurred_at, document)`` of an ``events`` row.

    Raises:
        DocumentError: ``event_id`` or ``occurred_at`` is missing or invalid, or a value
            cannot be converted.
    """
    event_id = _required_text(row, "event_id")
    occurred_at = occurred_at_of(row)
    document = _document(row, _EVENT_TYPES)
    document["event_id"] = event_id
    document["occurred_at"] = json_value(occurred_at, field="occurred_at")
    return event_id, occurred_at, document


def session_document(row: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(session_id, document)`` of a ``sessions`` row (plus optional lat/lon, funnel_step).

    Raises:
        DocumentError: ``session_id`` is missing, or a value cannot be converted.
    """
    session_id = _required_text(row, "session_id")
    document = _document(row, _SESSION_TYPES)
    document["session_id"] = session_id
    return session_id, document

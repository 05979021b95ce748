"""Rows of the ``events`` and ``sessions`` tables as OpenSearch documents (pure, no I/O).

A document carries exactly the columns the index template maps (the mappings are
``dynamic: strict``), so a column the search side does not know, such as ``kafka_offset``, is left
out instead of making OpenSearch reject the document. Values become JSON: datetimes as ISO 8601
in UTC, ``Decimal`` as a number, UUIDs as text; numbers and dates that arrive as text (a
``model_dump(mode="json")``) are normalised the same way. ``latitude``/``longitude`` also become
the ``geo_point`` field ``location`` when both are present.

The consumer's hot paths skip the generic conversion: :func:`click_event_json` serialises a
validated :class:`~clickstream.events.ClickEvent` in one call, and :func:`session_json_sql` lets
PostgreSQL render session rows as JSON text. Both produce the same JSON values as
:func:`event_document` and :func:`session_document` (unit and integration tests compare them).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Final

from clickstream.events import ClickEvent
from clickstream.search.indices import mapping_properties

__all__ = [
    "EVENT_FIELDS",
    "SESSION_FIELDS",
    "DocumentError",
    "click_event_json",
    "dumps",
    "event_document",
    "json_value",
    "location_of",
    "occurred_at_of",
    "session_document",
    "session_json_sql",
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


_PARSED: Final = _FLOATING | _INTEGRAL | {"date"}
"""Mapping types whose values may arrive as text and are then parsed (see :func:`_from_text`)."""
_VERBATIM: Final = (type(None), bool, int, str)
"""Exact value types that :func:`json_value` returns unchanged (no subclasses such as enums)."""


def _document(row: Mapping[str, Any], types: Mapping[str, str]) -> dict[str, Any]:
    # The hot path of the search sink (one call per document): exact-type checks settle the
    # usual values (text, numbers, aware UTC datetimes), json_value handles everything else.
    document: dict[str, Any] = {}
    for key, raw in row.items():
        mapping_type = types.get(key)
        if mapping_type is None or key == "location":
            continue
        kind = type(raw)
        if kind in _VERBATIM:
            value = raw
        elif kind is float:
            if not math.isfinite(raw):
                msg = f"{key}: {raw} is not a finite number"
                raise DocumentError(msg)
            value = raw
        else:
            value = json_value(raw, field=key)
        if mapping_type in _PARSED and isinstance(value, str):
            value = _from_text(value, mapping_type)
        document[key] = value
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


_encode: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def dumps(document: Mapping[str, Any]) -> str:
    """Compact JSON text of a document (UTF-8 kept as is, as opensearch-py sends it).

    Raises:
        DocumentError: a value JSON cannot carry (a NaN that slipped through, an object).
    """
    try:
        return _encode(document)
    except (TypeError, ValueError) as exc:
        msg = f"cannot serialise the document: {exc}"
        raise DocumentError(msg) from exc


_CLICK_EVENT_FIELDS: Final = frozenset(ClickEvent.model_fields)
# Fields the events mapping does not know are left out, as event_document leaves them out.
_CLICK_EVENT_INCLUDE: Final[set[str] | None] = (
    None if _CLICK_EVENT_FIELDS <= EVENT_FIELDS else set(_CLICK_EVENT_FIELDS & EVENT_FIELDS)
)


def click_event_json(event: ClickEvent) -> tuple[str, datetime, str]:
    """``(event_id, occurred_at, JSON text)`` of a validated event, as the sink sends it.

    The JSON has the same keys, order and values as the document of
    ``event_document(event.model_dump(mode="json"))``: the model's own serialiser (pydantic-core)
    writes the fields (UTC ``occurred_at`` with ``Z``, ``revenue`` as a number, enums as text,
    ``null`` for absent fields) and ``location`` is appended when both coordinates are set.
    Only the spelling of some numbers may differ (``1e-5`` for ``1e-05``).
    """
    text = event.model_dump_json(include=_CLICK_EVENT_INCLUDE)
    latitude, longitude = event.latitude, event.longitude
    if latitude is not None and longitude is not None:
        # As json.dumps writes them: repr() of the (validated, finite) floats.
        lat, lon = float(latitude), float(longitude)
        text = f'{text[:-1]},"location":{{"lat":{lat!r},"lon":{lon!r}}}}}'
    return event.event_id, event.occurred_at, text


def _sql_number(column: str) -> str:
    # Python writes an integral float as "330.0", PostgreSQL's float8 as "330"; otherwise
    # both print the shortest text that reads back as the same double.
    return (
        f"CASE WHEN {column} IS NULL THEN 'null'"
        f" WHEN {column}::float8 = trunc({column}::float8) AND abs({column}::float8) < 1e16"
        f" THEN trunc({column}::float8)::numeric::text || '.0'"
        f" ELSE {column}::float8::text END"
    )


def _sql_date(column: str) -> str:
    # isoformat(): microseconds only when there are any; UTC as "Z".
    utc = f"({column} AT TIME ZONE 'UTC')"
    return (
        f"CASE WHEN {column} IS NULL THEN 'null'"
        f" WHEN date_trunc('second', {utc}) = {utc}"
        f""" THEN '"' || to_char({utc}, 'YYYY-MM-DD"T"HH24:MI:SS"Z"') || '"'"""
        f""" ELSE '"' || to_char({utc}, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '"' END"""
    )


def session_json_sql(columns: Sequence[str], *, alias: str) -> str:
    """A PostgreSQL expression that renders a ``sessions`` row as its document's JSON text.

    ``columns`` are the table's columns in table order and ``alias`` names the row in the
    query. The text equals ``dumps(session_document(row)[1])`` for the same row, byte for
    byte: the mapped columns in table order, dates as UTC ISO 8601 with ``Z`` (microseconds
    only when there are any), numbers as Python writes floats (``revenue`` too), text escaped
    by PostgreSQL's ``to_json`` as :func:`json.dumps` escapes it. (A fractional number of
    10**15 or more is written in exponent form: the same value, other digits.) It does not
    check what :func:`session_document` checks (a finite number, a non-empty id): the store
    never writes such rows, and OpenSearch would reject the document, which the sink reports.
    """
    parts: list[str] = []
    for name in columns:
        mapping_type = _SESSION_TYPES.get(name)
        if mapping_type is None or name == "location":
            continue
        column = f'{alias}."{name}"'
        if mapping_type == "date":
            value = _sql_date(column)
        elif mapping_type in _FLOATING:
            value = _sql_number(column)
        else:
            value = f"COALESCE(to_json({column})::text, 'null')"
        parts.append(f"'{json.dumps(name)}:' || {value}")
    if not parts:
        return "'{}'"
    return "'{' || " + " || ',' || ".join(parts) + " || '}'"

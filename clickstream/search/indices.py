"""Index naming and the checked-in index templates and lifecycle policy (pure, no I/O).

Layout (see ``docs/opensearch.md`` for the reasoning):

* **Events** are immutable and live in one index per UTC day of ``occurred_at``:
  ``<prefix>-events-YYYY.MM.DD``. The index of an event is a function of the event itself, so
  its ``_id`` (``event_id``) can only ever exist in one place and re-indexing a redelivered
  event is a no-op. The template adds every daily index to the read alias ``<prefix>-events``;
  the lifecycle policy deletes whole daily indices after the retention.
* **Sessions** are mutable (replaced and deleted by id), so they live in a single index
  ``<prefix>-sessions-v1`` behind the write alias ``<prefix>-sessions``: a lookup by ``_id``
  through the alias is always exact.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final, Literal

from clickstream.errors import ConfigError

__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "DocumentKind",
    "events_alias",
    "events_index",
    "events_index_pattern",
    "fingerprint",
    "index_template",
    "ism_policy",
    "ism_policy_id",
    "mapping_properties",
    "sessions_alias",
    "sessions_gc_deletes",
    "sessions_index",
    "template_name",
    "validate_prefix",
]

DocumentKind = Literal["events", "sessions"]

DEFAULT_RETENTION_DAYS: Final = 90
"""Days an event index is kept after its creation, unless configured otherwise."""

_PREFIX_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")
_TEMPLATE_FILES: Final[dict[DocumentKind, str]] = {
    "events": "events.json",
    "sessions": "sessions.json",
}
_SESSIONS_SCHEMA_VERSION: Final = 1


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can start OpenSearch index names, else raise :class:`ConfigError`.

    Allowed: 1-100 characters of lower-case letters, digits, ``_``, ``-`` and ``.``, starting
    with a letter or digit (index names must be lower-case and may not start with ``-_+``).
    """
    if not _PREFIX_RE.fullmatch(prefix):
        msg = (
            f"invalid OpenSearch index prefix {prefix!r}: use 1-100 lower-case letters, digits, "
            "'_', '-' or '.', starting with a letter or digit"
        )
        raise ConfigError(msg)
    return prefix


def events_alias(prefix: str) -> str:
    """The read alias over all daily event indices."""
    return f"{prefix}-events"


def events_index_pattern(prefix: str) -> str:
    """Wildcard matching every daily event index (and nothing else of this prefix)."""
    return f"{prefix}-events-*"


def events_index(prefix: str, occurred_at: datetime) -> str:
    """The daily index an event belongs to: its ``occurred_at`` date in UTC.

    Raises:
        ValueError: ``occurred_at`` is naive (its day would depend on the machine's zone).
    """
    if occurred_at.tzinfo is None or occurred_at.utcoffset() is None:
        msg = f"occurred_at {occurred_at.isoformat()} is naive; a timezone-aware value is required"
        raise ValueError(msg)
    return f"{prefix}-events-{occurred_at.astimezone(UTC):%Y.%m.%d}"


def sessions_alias(prefix: str) -> str:
    """The alias sessions are written, updated, deleted and read through."""
    return f"{prefix}-sessions"


def sessions_index(prefix: str) -> str:
    """The one concrete sessions index the alias points at (bumped only for a reindex)."""
    return f"{prefix}-sessions-v{_SESSIONS_SCHEMA_VERSION}"


def template_name(prefix: str, kind: DocumentKind) -> str:
    """Name of the composable index template of ``kind``."""
    return f"{prefix}-{kind}"


def ism_policy_id(prefix: str) -> str:
    """Id of the Index State Management policy of the event indices."""
    return f"{prefix}-events"


def fingerprint(document: Any) -> str:
    """A short, stable digest of a JSON document (key order does not matter)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _load(name: str) -> Any:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return json.loads(text)


def _substitute(value: Any, replacements: dict[str, str]) -> Any:
    """Replace ``{name}`` placeholders in every string key and value of a JSON document."""
    if isinstance(value, str):
        for placeholder, replacement in replacements.items():
            value = value.replace(placeholder, replacement)
        return value
    if isinstance(value, dict):
        return {
            _substitute(key, replacements): _substitute(item, replacements)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_substitute(item, replacements) for item in value]
    return value


def index_template(
    kind: DocumentKind, *, prefix: str, shards: int = 1, replicas: int = 0
) -> dict[str, Any]:
    """The composable index template body of ``kind`` for ``prefix``, ready for ``PUT``.

    ``_meta.fingerprint`` digests the rest of the body, so a stored template can be compared
    with the desired one without normalising what the server echoes back.

    Raises:
        ConfigError: the prefix is invalid, ``shards < 1`` or ``replicas < 0``.
    """
    validate_prefix(prefix)
    if shards < 1 or replicas < 0:
        msg = f"need shards >= 1 and replicas >= 0, got shards={shards}, replicas={replicas}"
        raise ConfigError(msg)
    body: dict[str, Any] = _substitute(
        _load(f"templates/{_TEMPLATE_FILES[kind]}"), {"{prefix}": prefix}
    )
    settings = body["template"]["settings"]["index"]
    settings["number_of_shards"] = shards
    settings["number_of_replicas"] = replicas
    body["_meta"]["fingerprint"] = fingerprint(body)
    return body


def sessions_gc_deletes() -> str:
    """How long the sessions index keeps a delete's version (its template's ``gc_deletes``)."""
    value: str = _load(f"templates/{_TEMPLATE_FILES['sessions']}")["template"]["settings"]["index"][
        "gc_deletes"
    ]
    return value


def mapping_properties(kind: DocumentKind) -> dict[str, dict[str, Any]]:
    """The top-level mapped fields of ``kind`` and their mapping (``{"type": ...}``)."""
    properties: dict[str, dict[str, Any]] = _load(f"templates/{_TEMPLATE_FILES[kind]}")["template"][
        "mappings"
    ]["properties"]
    return properties


def ism_policy(*, prefix: str, retention_days: int = DEFAULT_RETENTION_DAYS) -> dict[str, Any]:
    """The ISM policy body (``{"policy": {...}}``) that deletes event indices after retention.

    Raises:
        ConfigError: the prefix is invalid or ``retention_days < 1``.
    """
    validate_prefix(prefix)
    if retention_days < 1:
        msg = f"retention must be at least 1 day, got {retention_days}"
        raise ConfigError(msg)
    policy: dict[str, Any] = _substitute(
        _load("ism_policy.json"),
        {"{prefix}": prefix, "{retention_days}": str(retention_days)},
    )
    return policy

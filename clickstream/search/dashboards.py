"""The OpenSearch Dashboards saved objects (``dashboards.ndjson``) and their import.

The checked-in NDJSON is written for the default index prefix ``clickstream``: index patterns
``clickstream-events`` and ``clickstream-sessions``, and object ids starting with
``clickstream-``. :func:`saved_objects_for_prefix` rewrites both for another prefix, so several
deployments can share one Dashboards without overwriting each other's objects.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlsplit
from urllib.request import Request, urlopen

from clickstream.errors import ConfigError, TerminalError, TransientError
from clickstream.search.client import redact_url
from clickstream.search.indices import validate_prefix

__all__ = [
    "DASHBOARD_TITLE",
    "DEFAULT_PREFIX",
    "ImportResult",
    "import_dashboards",
    "load_saved_objects",
    "saved_objects_for_prefix",
    "to_ndjson",
]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "clickstream"
"""The prefix the checked-in saved objects are written for."""
DASHBOARD_TITLE: Final = "Clickstream Analytics"
IMPORT_PATH: Final = "/api/saved_objects/_import"


def load_saved_objects() -> list[dict[str, Any]]:
    """The checked-in saved objects, one dict per NDJSON line, in file order."""
    text = resources.files(__package__).joinpath("dashboards.ndjson").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _rename(value: str, prefix: str) -> str:
    """``clickstream-...`` -> ``<prefix>-...`` for ids and index names."""
    head = f"{DEFAULT_PREFIX}-"
    return f"{prefix}-{value[len(head) :]}" if value.startswith(head) else value


def saved_objects_for_prefix(objects: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """The saved objects pointed at the indices of ``prefix`` (a deep copy; input unchanged).

    Rewrites object ids and references, index-pattern titles, the index names inside TSVB
    visualizations, and appends `` (<prefix>)`` to the dashboard title. Identity for the default
    prefix.
    """
    validate_prefix(prefix)
    copied: list[dict[str, Any]] = json.loads(json.dumps(objects))
    if prefix == DEFAULT_PREFIX:
        return copied
    for obj in copied:
        obj["id"] = _rename(obj["id"], prefix)
        for reference in obj.get("references", []):
            reference["id"] = _rename(reference["id"], prefix)
        attributes = obj["attributes"]
        if obj["type"] == "index-pattern":
            attributes["title"] = _rename(attributes["title"], prefix)
        elif obj["type"] == "dashboard":
            attributes["title"] = f"{attributes['title']} ({prefix})"
        elif obj["type"] == "visualization":
            vis_state = json.loads(attributes["visState"])
            params = vis_state.get("params", {})
            if vis_state.get("type") == "metrics":
                params["index_pattern"] = _rename(params.get("index_pattern", ""), prefix)
                for series in params.get("series", []):
                    if series.get("series_index_pattern"):
                        series["series_index_pattern"] = _rename(
                            series["series_index_pattern"], prefix
                        )
            attributes["visState"] = json.dumps(vis_state)
    return copied


def to_ndjson(objects: list[dict[str, Any]]) -> bytes:
    """Serialize saved objects as NDJSON (one compact object per line)."""
    return b"".join(json.dumps(obj, separators=(",", ":")).encode() + b"\n" for obj in objects)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What Dashboards reported: how many objects were created or overwritten."""

    success_count: int


def _multipart(field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = f"clickstream-{uuid.uuid4().hex}"
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: application/ndjson\r\n\r\n"
    ).encode()
    body = head + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def import_dashboards(
    *,
    dashboards_url: str,
    prefix: str = DEFAULT_PREFIX,
    tenant: str | None = None,
    timeout: float = 30.0,
) -> ImportResult:
    """Import the saved objects into OpenSearch Dashboards, replacing older versions.

    Sends ``POST <dashboards_url>/api/saved_objects/_import?overwrite=true`` with the NDJSON as
    a multipart file and the ``osd-xsrf`` header Dashboards requires; credentials in the URL
    (``https://user:password@host``) become HTTP basic auth. ``tenant`` selects a security
    plugin tenant (header ``securitytenant``, e.g. ``global``). Idempotent: the same ids are
    overwritten.

    Raises:
        ConfigError: the URL is not http(s), or Dashboards answered 401/403.
        TransientError: Dashboards is unreachable or answered 5xx/429.
        TerminalError: Dashboards refused the objects (the message lists them).
    """
    parts = urlsplit(dashboards_url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        msg = (
            "Dashboards URL must be http(s)://[user:password@]host[:port], "
            f"got {redact_url(dashboards_url)!r}"
        )
        raise ConfigError(msg)
    base = parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment="")
    url = f"{base.geturl().rstrip('/')}{IMPORT_PATH}?overwrite=true"
    objects = saved_objects_for_prefix(load_saved_objects(), prefix)
    body, content_type = _multipart("file", "clickstream-dashboards.ndjson", to_ndjson(objects))
    headers = {"osd-xsrf": "true", "Content-Type": content_type, "Accept": "application/json"}
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
    if tenant:
        headers["securitytenant"] = tenant
    request = Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - http(s) checked above
    context = ssl.create_default_context() if parts.scheme == "https" else None
    where = redact_url(url)
    try:
        with urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            payload = json.loads(response.read() or b"{}")
    except HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:500]
        if exc.code in {401, 403}:
            msg = f"Dashboards at {where} refused the credentials ({exc.code}): {detail}"
            raise ConfigError(msg) from exc
        if exc.code == 429 or exc.code >= 500:
            msg = f"Dashboards at {where} is not available ({exc.code}): {detail}"
            raise TransientError(msg) from exc
        msg = f"Dashboards at {where} refused the import ({exc.code}): {detail}"
        raise TerminalError(msg) from exc
    except (URLError, TimeoutError, ConnectionError) as exc:
        msg = f"Dashboards at {where} is unreachable: {exc}"
        raise TransientError(msg) from exc
    except json.JSONDecodeError as exc:
        msg = f"Dashboards at {where} answered with something that is not JSON: {exc}"
        raise TerminalError(msg) from exc

    if not payload.get("success", False):
        errors = payload.get("errors", [])
        listed = "; ".join(
            f"{err.get('type')}/{err.get('id')}: {err.get('error', {}).get('type', '?')}"
            for err in errors
        )
        msg = f"Dashboards refused {len(errors)} saved objects: {listed or payload}"
        raise TerminalError(msg)
    count = int(payload.get("successCount", 0))
    logger.info("imported %d saved objects into %s", count, where)
    return ImportResult(success_count=count)

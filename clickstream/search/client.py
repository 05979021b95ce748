"""Build an OpenSearch client from one URL, as Aiven hands it out."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from opensearchpy import OpenSearch
from opensearchpy.exceptions import (
    AuthenticationException,
    AuthorizationException,
    SSLError,
    TransportError,
)
from opensearchpy.exceptions import ConnectionError as OpenSearchConnectionError

from clickstream.errors import ClickstreamError, ConfigError, SinkError, TransientError

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "POOL_MAXSIZE",
    "make_client",
    "redact_url",
    "translate_error",
]

DEFAULT_TIMEOUT_SECONDS = 30.0
POOL_MAXSIZE = 4
"""Connections kept open to OpenSearch (urllib3 keeps one by default)."""


def redact_url(url: str) -> str:
    """``url`` without its credentials, for log messages."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc).geturl()


def make_client(url: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> OpenSearch:
    """An :class:`OpenSearch` client for ``url``.

    ``url`` is ``https://user:password@host:port`` (Aiven's service URI; credentials may be
    percent-encoded) or plain ``http://host:port`` for a local node; a path becomes the URL
    prefix. HTTPS verifies certificates against the bundled CA store. Requests time out after
    ``timeout`` seconds, and the client itself does not retry: callers decide (the sink retries
    with backoff, setup reports a :class:`~clickstream.errors.TransientError`). Up to
    :data:`POOL_MAXSIZE` connections stay open, so threads sharing the client reuse them.

    Raises:
        ConfigError: the URL is not an http(s) URL with a host, or its port is invalid.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        msg = f"invalid OpenSearch URL {redact_url(url)!r}: {exc}"
        raise ConfigError(msg) from exc
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        msg = (
            "OpenSearch URL must look like https://user:password@host:port, "
            f"got {redact_url(url)!r}"
        )
        raise ConfigError(msg)
    https = parts.scheme == "https"
    host: dict[str, Any] = {
        "host": parts.hostname,
        "port": port or (443 if https else 9200),
        "scheme": parts.scheme,
    }
    if parts.path.strip("/"):
        host["url_prefix"] = parts.path.rstrip("/")
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
    return OpenSearch(
        hosts=[host],
        http_auth=auth,
        use_ssl=https,
        verify_certs=https,
        ssl_show_warn=https,
        timeout=timeout,
        max_retries=0,
        retry_on_timeout=False,
        # The consumer writes from two threads (batches, and the search outbox's drainer):
        # keep a connection for each instead of opening and discarding one per request.
        pool_maxsize=POOL_MAXSIZE,
    )


def translate_error(exc: TransportError, doing: str) -> ClickstreamError:
    """The project error for an opensearch-py error raised while ``doing`` something.

    401/403 and TLS problems are :class:`ConfigError`; unreachable, 429 and 5xx are
    :class:`TransientError`; anything else is :class:`SinkError`. Use ``raise ... from exc``.
    """
    if isinstance(exc, AuthenticationException | AuthorizationException):
        return ConfigError(f"{doing}: OpenSearch refused the credentials or permissions: {exc}")
    if isinstance(exc, SSLError):
        return ConfigError(f"{doing}: TLS error talking to OpenSearch: {exc}")
    if isinstance(exc, OpenSearchConnectionError):
        return TransientError(f"{doing}: OpenSearch is unreachable: {exc}")
    status = exc.status_code
    if isinstance(status, int) and (status == 429 or status >= 500):
        return TransientError(f"{doing}: OpenSearch is not available ({status}): {exc}")
    return SinkError(f"{doing}: OpenSearch refused: {exc}")

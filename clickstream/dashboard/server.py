"""The dashboard's HTTP adapter: one page, its static assets and the JSON read API.

:class:`DashboardApp` maps a request target (``/api/kpis?minutes=60``) to a :class:`Response`
and knows nothing about sockets, so it is tested directly. :class:`DashboardServer` serves an
app with the standard library's :class:`~http.server.ThreadingHTTPServer`; the page is plain
HTML, CSS and JavaScript shipped in the package (no CDN, no build step).

Every API endpoint takes the time range as ``?minutes=N`` (the last N whole minutes up to and
including the current one, default 60) or ``?start=...&end=...`` (RFC 3339 with an offset),
and answers JSON: datetimes as RFC 3339 UTC strings, money as numbers with two decimals,
ratios as numbers in ``[0, 1]`` or ``null`` when there is no session to divide by.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import wait
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from clickstream import analytics
from clickstream.analytics import Bucket, TimeRange, parse_moment
from clickstream.threads import in_daemon_thread

__all__ = [
    "DEFAULT_MINUTES",
    "DEFAULT_QUERY_TIMEOUT_S",
    "MAX_MINUTES",
    "DashboardApp",
    "DashboardServer",
    "Response",
    "to_json",
]

_log = logging.getLogger(__name__)

DEFAULT_MINUTES: Final = 60
MAX_MINUTES: Final = 31 * 24 * 60
"""The longest range the API serves (31 days), to keep one request cheap."""
_MAX_LIMIT: Final = 100
DEFAULT_QUERY_TIMEOUT_S: Final = 15.0
"""How long a request waits for PostgreSQL before it is answered 503."""
_STATIC: Final = {
    "app.js": "text/javascript; charset=utf-8",
    "styles.css": "text/css; charset=utf-8",
    "world.svg": "image/svg+xml",
}
_PAGE_POLICY: Final = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


class _BadRequest(Exception):
    """A query parameter is malformed; the message is returned to the client."""


@dataclass(frozen=True, slots=True)
class Response:
    """What to send back: status, content type, body and extra headers."""

    status: HTTPStatus
    content_type: str
    body: bytes
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, TimeRange):
        return {
            "start": _jsonable(value.start),
            "end": _jsonable(value.end),
            "minutes": value.seconds / 60,
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return value


def to_json(value: Any) -> bytes:
    """Serialise read-side results (dataclasses, datetimes, decimals) as compact UTF-8 JSON."""
    return json.dumps(_jsonable(value), separators=(",", ":"), allow_nan=False).encode()


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _single(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        msg = f"parameter {name!r} is given more than once"
        raise _BadRequest(msg)
    return values[0]


def _integer(query: Mapping[str, list[str]], name: str, default: int, high: int) -> int:
    raw = _single(query, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        msg = f"parameter {name!r} must be an integer, got {raw!r}"
        raise _BadRequest(msg) from None
    if not 1 <= value <= high:
        msg = f"parameter {name!r} must lie in 1..{high}, got {value}"
        raise _BadRequest(msg)
    return value


_UNENCODED_PLUS: Final = re.compile(r" (\d{2}:\d{2})$")
"""An offset typed as ``+05:30`` in an address arrives as `` 05:30``: a query's ``+`` is a space."""


def _moment(query: Mapping[str, list[str]], name: str) -> datetime:
    raw = _single(query, name) or ""
    try:
        return parse_moment(_UNENCODED_PLUS.sub(r"+\1", raw))
    except ValueError as exc:
        msg = f"parameter {name!r} {exc}, got {raw!r} (write a '+' in an address as %2B)"
        raise _BadRequest(msg) from None


@dataclass(frozen=True, slots=True)
class _Query:
    time_range: TimeRange
    bucket: Bucket | None
    limit: int


class DashboardApp:
    """Routes requests to the read side; one database connection per request.

    Args:
        engine: the database to read (PostgreSQL or SQLite).
        clock: the current time (timezone-aware); "current visitors" and ``?minutes=`` ranges
            are relative to it.
        refresh_seconds: how often the page reloads its figures.
        banner: an optional line the page shows above the figures (the demo says what it runs).
        query_timeout: seconds a request waits for PostgreSQL before it is answered 503 "the
            database did not answer" (and a warning logged). A hung server, or one cut off by
            the network with the connection still open, never answers and no driver timeout
            fires: without this bound such requests waited, silent, until the server came
            back. The query left waiting holds its pooled connection until then. SQLite,
            which waits at most its busy timeout, is not bounded.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = _utc_now,
        refresh_seconds: float = 5.0,
        banner: str | None = None,
        query_timeout: float = DEFAULT_QUERY_TIMEOUT_S,
    ) -> None:
        if not refresh_seconds > 0:
            msg = f"refresh_seconds must be positive, got {refresh_seconds}"
            raise ValueError(msg)
        if not query_timeout > 0:
            msg = f"query_timeout must be positive, got {query_timeout}"
            raise ValueError(msg)
        self.query_timeout = query_timeout
        self.engine = engine
        self.clock = clock
        self.refresh_seconds = refresh_seconds
        self.banner = banner
        static = files(__package__ or "clickstream.dashboard") / "static"
        self._page = (static / "index.html").read_bytes()
        self._assets = {name: (static / name).read_bytes() for name in _STATIC}
        self._routes: dict[str, Callable[[Connection, _Query, datetime], Any]] = {
            "/api/dashboard": self._dashboard,
            "/api/kpis": lambda c, q, _: analytics.kpis(c, time_range=q.time_range),
            "/api/traffic": lambda c, q, _: analytics.traffic(
                c, time_range=q.time_range, bucket=q.bucket
            ),
            "/api/pages": lambda c, q, _: analytics.top_pages(
                c, time_range=q.time_range, limit=q.limit
            ),
            "/api/sources": lambda c, q, _: analytics.sources(
                c, time_range=q.time_range, limit=q.limit
            ),
            "/api/countries": lambda c, q, _: analytics.countries(
                c, time_range=q.time_range, limit=q.limit
            ),
            "/api/map": lambda c, q, _: analytics.map_points(c, time_range=q.time_range),
            "/api/devices": lambda c, q, _: analytics.devices(
                c, time_range=q.time_range, limit=q.limit
            ),
            "/api/funnel": lambda c, q, _: analytics.funnel(c, time_range=q.time_range),
            "/api/paths": lambda c, q, _: analytics.conversion_paths(
                c, time_range=q.time_range, limit=q.limit
            ),
            "/api/current-visitors": lambda c, _q, now: {
                "now": now,
                "window_seconds": analytics.CURRENT_VISITORS_WINDOW.total_seconds(),
                "current_visitors": analytics.current_visitors(c, now=now),
            },
        }

    def respond(self, method: str, target: str) -> Response:
        """Answer one request; never raises (errors become 4xx/5xx JSON responses)."""
        parts = urlsplit(target)
        path = parts.path
        if method not in ("GET", "HEAD"):
            return _error(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not supported")
        if path in ("/", "/index.html"):
            return Response(
                HTTPStatus.OK,
                "text/html; charset=utf-8",
                self._page,
                {"Content-Security-Policy": _PAGE_POLICY, "Cache-Control": "no-cache"},
            )
        if path.startswith("/static/"):
            name = path.removeprefix("/static/")
            if name in self._assets:
                return Response(
                    HTTPStatus.OK, _STATIC[name], self._assets[name], {"Cache-Control": "no-cache"}
                )
            return _error(HTTPStatus.NOT_FOUND, f"no asset {name!r}")
        if path == "/healthz":
            return self._bounded(self._health, path)
        handler = self._routes.get(path)
        if handler is None:
            return _error(HTTPStatus.NOT_FOUND, f"no endpoint {path!r}")
        try:
            now = self.clock()
            query = self._query(parse_qs(parts.query, keep_blank_values=True), now)
        except _BadRequest as exc:
            return _error(HTTPStatus.BAD_REQUEST, str(exc))

        def answer() -> Response:
            with analytics.snapshot(self.engine) as conn:
                return _json(HTTPStatus.OK, handler(conn, query, now))

        return self._bounded(answer, path)

    def _bounded(self, work: Callable[[], Response], path: str) -> Response:
        """``work()``, with database errors as 503; on PostgreSQL, 503 after the timeout too."""

        def guarded() -> Response:
            try:
                return work()
            except DBAPIError as exc:
                _log.warning("dashboard query failed: %s", exc.orig)
            except PoolTimeoutError as exc:  # every pooled connection waits on the server
                _log.warning("dashboard query failed: %s", exc)
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "the database is unavailable")

        if self.engine.dialect.name == "sqlite":
            return guarded()
        future = in_daemon_thread(guarded, name="dashboard-query")
        if wait([future], timeout=self.query_timeout).done:
            failure = future.exception()
            if failure is None:
                return future.result()
            _log.error("dashboard request %s failed", path, exc_info=failure)
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "the request failed (see the log)")
        _log.warning(
            "the database did not answer %s within %g s (is PostgreSQL hung or cut off by the "
            "network?): answered 503; the query keeps its connection until the server answers",
            path,
            self.query_timeout,
        )
        return _error(
            HTTPStatus.SERVICE_UNAVAILABLE,
            f"the database did not answer within {self.query_timeout:g} s",
        )

    def _query(self, query: Mapping[str, list[str]], now: datetime) -> _Query:
        has_start, has_end = "start" in query, "end" in query
        if has_start != has_end:
            msg = "give both 'start' and 'end', or neither (then 'minutes' applies)"
            raise _BadRequest(msg)
        try:
            if has_start:
                if "minutes" in query:
                    msg = "give either 'minutes' or 'start' and 'end', not both"
                    raise _BadRequest(msg)
                start, end = _moment(query, "start"), _moment(query, "end")
                if not start < end:
                    msg = (
                        f"'start' ({_single(query, 'start')}) must be before "
                        f"'end' ({_single(query, 'end')})"
                    )
                    raise _BadRequest(msg)
                time_range = TimeRange(start, end)
                if time_range.seconds > MAX_MINUTES * 60:
                    msg = f"the range may span at most {MAX_MINUTES} minutes"
                    raise _BadRequest(msg)
            else:
                minutes = _integer(query, "minutes", DEFAULT_MINUTES, MAX_MINUTES)
                time_range = TimeRange.last_minutes(minutes, now=now)
        except ValueError as exc:
            raise _BadRequest(str(exc)) from None
        raw_bucket = _single(query, "bucket")
        try:
            bucket = Bucket(raw_bucket) if raw_bucket else None
        except ValueError:
            msg = f"parameter 'bucket' must be 'minute' or 'hour', got {raw_bucket!r}"
            raise _BadRequest(msg) from None
        if bucket is Bucket.MINUTE and time_range.seconds > 24 * 3600:
            msg = "minute buckets are limited to ranges of at most 24 hours"
            raise _BadRequest(msg)
        return _Query(time_range, bucket, _integer(query, "limit", 10, _MAX_LIMIT))

    def _dashboard(self, conn: Connection, query: _Query, now: datetime) -> dict[str, Any]:
        figures = analytics.dashboard(
            conn, time_range=query.time_range, now=now, bucket=query.bucket, limit=query.limit
        )
        return {
            "refresh_seconds": self.refresh_seconds,
            "banner": self.banner,
            **{f.name: getattr(figures, f.name) for f in dataclasses.fields(figures)},
        }

    def _health(self) -> Response:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except DBAPIError as exc:
            _log.warning("health check failed: %s", exc.orig)
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "the database is unavailable")
        return _json(HTTPStatus.OK, {"status": "ok"})


def _json(status: HTTPStatus, value: Any) -> Response:
    return Response(status, "application/json", to_json(value), {"Cache-Control": "no-store"})


def _error(status: HTTPStatus, message: str) -> Response:
    return _json(status, {"error": message, "status": status.value})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many short requests from one browser tab: do not wait for slow clients on shutdown.
    block_on_close = False

    def __init__(self, address: tuple[str, int], app: DashboardApp) -> None:
        self.app = app
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "clickstream-dashboard"
    sys_version = ""

    def do_GET(self) -> None:
        self._send(self.server.app.respond("GET", self.path), body=True)

    def do_HEAD(self) -> None:
        self._send(self.server.app.respond("HEAD", self.path), body=False)

    def do_POST(self) -> None:
        self._send(self.server.app.respond("POST", self.path), body=True)

    def _send(self, response: Response, *, body: bool) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s %s", self.address_string(), format % args)


class DashboardServer:
    """Serves a :class:`DashboardApp` over HTTP on ``host:port`` (port 0 picks a free one).

    The socket is bound when the object is created, so :attr:`url` is known before serving.
    Use :meth:`serve_forever` in the foreground or :meth:`start` for a background thread, and
    :meth:`close` (or ``with``) to stop.
    """

    def __init__(self, app: DashboardApp, *, host: str = "127.0.0.1", port: int = 8050) -> None:
        self._httpd = _Server((host, port), app)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8050/``."""
        host, port = self._httpd.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{name}]" if ":" in name else name
        return f"http://{shown}:{port}/"

    def serve_forever(self) -> None:
        """Serve until :meth:`close` is called from another thread."""
        self._httpd.serve_forever(poll_interval=0.2)

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="dashboard-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the socket (idempotent)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

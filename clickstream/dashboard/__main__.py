"""``python -m clickstream.dashboard``: serve the live analytics dashboard."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from sqlalchemy import Engine, inspect
from sqlalchemy.exc import DBAPIError

from clickstream.cli import add_log_level, configure_logging
from clickstream.dashboard.server import DashboardApp, DashboardServer
from clickstream.db import make_engine, refusal_error
from clickstream.errors import ClickstreamError, ConfigError
from clickstream.settings import SETTING_FLAGS, load_settings

__all__ = ["main"]

_log = logging.getLogger("clickstream.dashboard")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        msg = f"must be > 0, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


_positive.__name__ = "float"  # argparse says "invalid float value: 'abc'"


def _check_schema(engine: Engine) -> None:
    """Refuse a database without the tables or that refuses us; only warn when it is down."""
    try:
        tables = set(inspect(engine).get_table_names())
    except DBAPIError as exc:
        refused = refusal_error(exc)
        if refused is not None:
            raise refused from exc
        _log.warning("the database is unreachable for now (%s); serving anyway", exc.orig)
        return
    missing = {"events", "sessions", "traffic_minute"} - tables
    if missing:
        msg = (
            f"the database has no table {', '.join(sorted(missing))}: create the schema with "
            "`alembic upgrade head` (CLICKSTREAM_DATABASE_URL names the database) first"
        )
        raise ConfigError(msg)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clickstream.dashboard",
        description=(
            "Serve the live web-analytics dashboard (KPIs, traffic, map, devices, funnel, "
            "conversion paths, sources, current visitors) and its JSON API over the clickstream "
            "database. The database URL comes from --database-url, else "
            "CLICKSTREAM_DATABASE_URL (or the Pulumi stack outputs), else sqlite:///clickstream.db."
        ),
        epilog=(
            "examples:\n"
            "  python -m clickstream.dashboard\n"
            "  python -m clickstream.dashboard --database-url "
            "postgresql+psycopg://user:pw@127.0.0.1:5432/clickstream\n"
            "  python -m clickstream.dashboard --port 9000 --refresh 2\n\n"
            "JSON endpoints: /api/dashboard, /api/kpis, /api/traffic, /api/pages, /api/sources,\n"
            "/api/countries, /api/map, /api/devices, /api/funnel, /api/paths,\n"
            "/api/current-visitors; each takes ?minutes=N or ?start=...&end=... (RFC 3339).\n"
            "The server listens on 127.0.0.1 unless --host says otherwise; it has no login,\n"
            "so put it behind an authenticating proxy before exposing it.\n"
            "Exit status: 0 stopped by SIGINT/SIGTERM, 2 bad arguments or settings, a database\n"
            "without the schema or that refuses the connection, or a port in use."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8050, help="port (default %(default)s; 0 = any free)"
    )
    parser.add_argument("--database-url", help="SQLAlchemy URL of the database to read")
    parser.add_argument(
        "--refresh",
        type=_positive,
        default=5.0,
        metavar="SECONDS",
        help="how often the page refreshes its figures (default %(default)s)",
    )
    add_log_level(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; serves until SIGINT/SIGTERM and returns the exit status."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = load_settings(
            role="reader",
            overrides={"database_url": args.database_url},
            uses=frozenset({"database_url"}),
            command="clickstream.dashboard",
            flags=SETTING_FLAGS,
        )
        engine = make_engine(
            settings.database_url.get_secret_value(), application_name="dashboard", must_exist=True
        )
        _check_schema(engine)
        server = DashboardServer(
            DashboardApp(engine, refresh_seconds=args.refresh), host=args.host, port=args.port
        )
    except ClickstreamError as exc:
        _log.error("%s", exc)
        return 2
    except OSError as exc:
        _log.error(
            "cannot listen on %s:%d: %s (another port: --port N, or --port 0 for any free one)",
            args.host,
            args.port,
            exc,
        )
        return 2
    stopped = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        _log.info("received %s: stopping", signal.Signals(signum).name)
        stopped.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    server.start()
    _log.info(
        "dashboard of %s at %s",
        engine.url.render_as_string(hide_password=True),
        server.url,
    )
    sys.stdout.write(f"Dashboard: {server.url}  (Ctrl-C to stop)\n")
    sys.stdout.flush()
    try:
        stopped.wait()
    finally:
        server.close()
        engine.dispose()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

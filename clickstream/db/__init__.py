"""PostgreSQL/SQLite adapter: the engine factory; the schema lives in :mod:`clickstream.db.models`.

Migrations: :mod:`clickstream.db.migrate` (or ``alembic upgrade head`` from the repository root).
Retention: :mod:`clickstream.db.retention`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from clickstream.errors import ConfigError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "SQLITE_BUSY_TIMEOUT_MS",
    "make_engine",
    "normalize_url",
    "refusal_error",
    "refused_connection",
]

CONNECT_TIMEOUT_S: Final = 10
"""Seconds a PostgreSQL connection attempt may take."""

SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
"""How long a SQLite connection waits for another writer's lock before failing."""


def normalize_url(url: str) -> URL:
    """Parse a database URL, choosing psycopg 3 for PostgreSQL.

    ``postgres://`` and ``postgresql://`` (the form cloud providers such as Aiven print) become
    ``postgresql+psycopg://``; every other URL is returned as parsed.

    Raises:
        ConfigError: the URL cannot be parsed or names an unsupported database.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        msg = f"malformed database URL: {exc}"
        raise ConfigError(msg) from exc
    if parsed.drivername in ("postgres", "postgresql"):
        return parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend not in ("postgresql", "sqlite"):
        msg = f"unsupported database {backend!r}: use postgresql+psycopg:// or sqlite:///"
        raise ConfigError(msg)
    return parsed


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers (dashboards) run while the consumer writes.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
        # Durable enough under WAL (a power loss can lose the last commits, never corrupt).
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _postgres_utc(dbapi_connection: Any, _record: Any) -> None:
    # Server-side date arithmetic (date_trunc, ::date) and text output then use UTC, whatever
    # the server's default TimeZone. Autocommit, so that the pool's reset cannot roll it back.
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")
    finally:
        dbapi_connection.autocommit = autocommit


def make_engine(
    url: str,
    *,
    application_name: str = "clickstream",
    statement_timeout_s: float | None = None,
    must_exist: bool = False,
) -> Engine:
    """Create an engine for PostgreSQL (psycopg 3) or SQLite.

    PostgreSQL connections are checked before use (``pool_pre_ping``), because managed
    databases close idle connections, report ``application_name`` to the server and use the
    ``UTC`` session time zone, so SQL such as ``date_trunc('minute', occurred_at)`` buckets
    by UTC.
    Connecting gives up after :data:`CONNECT_TIMEOUT_S`, TCP keepalives notice a dead peer,
    and ``statement_timeout_s`` (when given) bounds every statement, so a database behind a
    broken network path fails fast instead of hanging a consumer past Kafka's poll interval.
    SQLite connections use WAL journaling, enforce foreign keys and wait up to
    :data:`SQLITE_BUSY_TIMEOUT_MS` for locks. Nothing connects until the engine is first used.

    With ``must_exist``, an SQLite file that does not exist is an error, rather than a new
    empty database (for commands that only read, or need the schema in place).

    Raises:
        ConfigError: the URL is malformed or names an unsupported database, or (``must_exist``)
            an SQLite file that does not exist.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        in_memory = path in ("", ":memory:") or path.startswith("file:")  # or a URI: unchecked
        if must_exist and not in_memory and not Path(path).exists():
            msg = (
                f"no SQLite database at {path}: check the path, or create it with "
                "`alembic upgrade head` (CLICKSTREAM_DATABASE_URL set to this URL)"
            )
            raise ConfigError(msg)
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {
        "application_name": application_name,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    if statement_timeout_s is not None:
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
    engine = create_engine(
        parsed,
        pool_pre_ping=True,
        connect_args=connect_args,
    )
    event.listen(engine, "connect", _postgres_utc)
    return engine


# What a server says, at connection time, about settings that waiting cannot mend. libpq reports
# these as text only (no SQLSTATE reaches the client before a session exists). PostgreSQL's own
# English messages; a server set to another language is not recognised, and waits as before.
_REFUSALS: Final = (
    (re.compile(r"password authentication failed for user"), "the password or user is wrong"),
    (re.compile(r'role "[^"]*" does not exist'), "the user does not exist"),
    (re.compile(r'database "[^"]*" does not exist'), "the database does not exist"),
    (re.compile(r"no pg_hba\.conf entry for"), "the server does not accept this user from here"),
)


def refused_connection(exc: DBAPIError) -> str | None:
    """Why PostgreSQL refused a connection for good (wrong password, no such database), or None.

    None means the failure may pass (the server is down, restarting or unreachable), so the
    caller should wait and retry; a refusal is a configuration error.
    """
    text = str(exc.orig)
    for pattern, meaning in _REFUSALS:
        found = pattern.search(text)
        if found is not None:
            server_said = text[text.find("FATAL:") :].strip() if "FATAL:" in text else found[0]
            return f"{meaning} ({' '.join(server_said.split())})"
    return None


def refusal_error(exc: DBAPIError) -> ConfigError | None:
    """The configuration error to stop with when PostgreSQL refused a connection for good.

    It names the setting to fix; ``None`` when the failure may pass (wait and retry).
    """
    reason = refused_connection(exc)
    if reason is None:
        return None
    return ConfigError(
        f"the database refused the connection: {reason}; check CLICKSTREAM_DATABASE_URL "
        "(or --database-url)"
    )

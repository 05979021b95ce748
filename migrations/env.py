"""Alembic environment of clickstream.

The database URL comes from the Alembic option ``sqlalchemy.url`` when one was set
(:mod:`clickstream.db.migrate` and the tests pass one), otherwise from the settings
(``CLICKSTREAM_DATABASE_URL`` or the Pulumi stack outputs, admin role): ``alembic upgrade head``
needs no ``alembic.ini``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from alembic.util import CommandError
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from clickstream.cli import INTERRUPTED, Stopped, WaitWatch, stop_on_signals
from clickstream.db import make_engine, normalize_url, refused_connection
from clickstream.db.models import Base, UtcDateTime
from clickstream.errors import ConfigError
from clickstream.settings import load_settings

config = context.config
target_metadata = Base.metadata

# The alembic command line has no logging configuration without an alembic.ini; library
# callers (clickstream.db.migrate) set "configure_logging" to False and keep their own, and
# their own signal handling: only the command line gets the stop handling and the wait
# reports of run_migrations_online.
_COMMAND_LINE = bool(config.attributes.get("configure_logging", True))
if _COMMAND_LINE:
    logging.basicConfig(level=logging.INFO, format="%(levelname)-5.5s [%(name)s] %(message)s")

_log = logging.getLogger("clickstream.migrations")


def _database_url() -> str:
    # get_alembic_option, unlike get_main_option, works without an alembic.ini.
    url = config.get_alembic_option("sqlalchemy.url")
    if isinstance(url, str) and url:
        return url
    try:
        settings = load_settings(
            role="admin", uses=frozenset({"database_url"}), command="alembic (the migrations)"
        )
        return settings.database_url.get_secret_value()
    except ConfigError as exc:  # the alembic command prints a CommandError as one line
        raise CommandError(" ".join(str(exc).split())) from exc


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Migrations are frozen snapshots: spell the column type out instead of importing models.
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**options: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        **options,
    )


def run_migrations_offline() -> None:
    """Emit the SQL script instead of running it (``alembic upgrade head --sql``)."""
    url = normalize_url(_database_url())
    _configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    # SQLite cannot ALTER most things: autogenerate emits batch (copy-and-move) operations.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def _run_from_command_line(connection: Connection) -> None:
    """:func:`_run`, stopped cleanly by SIGINT/SIGTERM, and reported while the database waits.

    A migration takes ACCESS EXCLUSIVE locks: behind a long transaction (a running consumer,
    a report) it waited without a word, as it did on a hung server, and a stop printed a
    traceback after psycopg's ten-second attempt to cancel on the server. PostgreSQL runs the
    migrations in one transaction, so a stop (exit status 130) leaves the schema as it was.
    """
    watch = WaitWatch(_log)
    try:
        with (
            stop_on_signals(),
            watch.waiting(
                "the database to run the migrations",
                hint="Does another session (the consumer, a report) hold a lock on the table, "
                "or is the server hung or cut off? Ctrl-C or SIGTERM stops: the migrations' "
                "transaction is rolled back",
            ),
        ):
            _run(connection)
    except Stopped as exc:
        _log.error(
            "migrations %s: not committed (the server rolls the transaction back), the schema "
            "is as it was; run the command again",
            exc,
        )
        raise SystemExit(INTERRUPTED) from None
    finally:
        watch.close()


def run_migrations_online() -> None:
    """Run the migrations against the database."""
    engine = make_engine(_database_url(), application_name="clickstream-migrations")
    try:
        try:
            connection = engine.connect()
        except DBAPIError as exc:
            # The alembic command prints a CommandError as one line, without a traceback.
            server_said = " ".join(str(exc.orig).split())
            why = refused_connection(exc) or f"it is unreachable ({server_said})"
            msg = (
                f"cannot connect to the database: {why}; check CLICKSTREAM_DATABASE_URL "
                "(or the Pulumi stack outputs it came from)"
            )
            raise CommandError(msg) from exc
        with connection:
            (_run_from_command_line if _COMMAND_LINE else _run)(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

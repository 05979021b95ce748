"""The contract between the Pulumi program and the library: stack output names and their use.

The Pulumi program (``infrastructure/``) exports one output per :class:`OutputKey`, and the
library reads them back from the JSON that ``pulumi stack output --json --show-secrets`` prints.
This module is the only place the names are spelled, and it never imports Pulumi.

Which outputs each role receives (least privilege; see ``docs/deploy-aiven.md``):

- ``producer``: the producer's client certificate (write on the events topic); no database,
  no OpenSearch.
- ``consumer``: the consumer's client certificate (read on events, write on dead letters, read
  on its group), the PostgreSQL application user, the OpenSearch user.
- ``admin`` (migrations, retention, index setup, dashboards import): no Kafka certificate (the
  CA and names only), the PostgreSQL schema owner, the OpenSearch user and Dashboards.
- ``reader`` (the read side: the analytics dashboard): no Kafka certificate, the PostgreSQL
  reader (``SELECT`` only), no OpenSearch.

The admin role has no Kafka certificate on purpose: topics are created by Pulumi through the
Aiven API, so no Kafka client of this project ever needs ``Create``, ``Alter`` or ``Delete``.
TLS material stays in memory as PEM strings (librdkafka ``ssl.*.pem`` settings).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, get_args

from clickstream.errors import ConfigError
from clickstream.settings import Role

__all__ = ["OutputKey", "read_stack_outputs", "settings_values"]

logger = logging.getLogger(__name__)

_OUTPUTS_ENV: Final = "CLICKSTREAM_STACK_OUTPUTS"
_STACK_ENV: Final = "CLICKSTREAM_PULUMI_STACK"
_MASKED_VALUE: Final = "[secret]"
_CLI_TIMEOUT_SECONDS: Final = 120.0


class OutputKey(StrEnum):
    """Names of the stack outputs; the value is the name ``pulumi stack output`` shows."""

    KAFKA_BOOTSTRAP = "kafka_bootstrap"
    """``host:port`` of the Kafka listener that takes client certificates."""
    KAFKA_CA = "kafka_ca"
    """PEM of the Aiven project CA, which signs the brokers' certificates."""
    KAFKA_PRODUCER_CERT = "kafka_producer_cert"
    KAFKA_PRODUCER_KEY = "kafka_producer_key"
    KAFKA_CONSUMER_CERT = "kafka_consumer_cert"
    KAFKA_CONSUMER_KEY = "kafka_consumer_key"
    TOPIC = "kafka_topic"
    DLQ_TOPIC = "kafka_dlq_topic"
    CONSUMER_GROUP = "kafka_consumer_group"
    PG_APP_URI = "pg_app_uri"
    """``postgres://`` URI of the application user (reads and writes rows)."""
    PG_OWNER_URI = "pg_owner_uri"
    """``postgres://`` URI of the schema owner, which runs ``alembic upgrade head``."""
    PG_READER_URI = "pg_reader_uri"
    """``postgres://`` URI of the read-only user of the read side (``SELECT`` only)."""
    OPENSEARCH_URI = "opensearch_uri"
    """``https://user:password@host:port`` of the user allowed on the project's indices."""
    OPENSEARCH_INDEX_PREFIX = "opensearch_index_prefix"
    DASHBOARDS_URI = "opensearch_dashboards_uri"
    """OpenSearch Dashboards URL with the same user's credentials."""


_CLIENT_CERTS: Final[dict[Role, tuple[OutputKey, OutputKey]]] = {
    "producer": (OutputKey.KAFKA_PRODUCER_CERT, OutputKey.KAFKA_PRODUCER_KEY),
    "consumer": (OutputKey.KAFKA_CONSUMER_CERT, OutputKey.KAFKA_CONSUMER_KEY),
}

_ROLES: Final = get_args(Role)

# The database URI of each role, first present wins. The admin role (migrations) needs the
# schema owner; a file without it falls back to the app user, which then fails on DDL with a
# clear "permission denied" from PostgreSQL. The reader never falls back to a user that may
# write.
_DATABASE_URIS: Final[dict[Role, tuple[OutputKey, ...]]] = {
    "consumer": (OutputKey.PG_APP_URI,),
    "admin": (OutputKey.PG_OWNER_URI, OutputKey.PG_APP_URI),
    "reader": (OutputKey.PG_READER_URI,),
}

# Outputs every role receives: where Kafka is, which CA to trust, and the names.
_COMMON: Final[dict[OutputKey, str]] = {
    OutputKey.KAFKA_BOOTSTRAP: "kafka_bootstrap_servers",
    OutputKey.KAFKA_CA: "kafka_ssl_ca",
    OutputKey.TOPIC: "topic",
    OutputKey.DLQ_TOPIC: "dlq_topic",
    OutputKey.CONSUMER_GROUP: "consumer_group",
    OutputKey.OPENSEARCH_INDEX_PREFIX: "opensearch_index_prefix",
}


def read_stack_outputs(*, path: str | None, stack: str | None) -> dict[str, Any]:
    """Read the outputs of a deployed stack as ``pulumi stack output --json --show-secrets`` prints.

    Args:
        path: a JSON file holding that command's output; it wins when both are given.
        stack: a stack name (``dev`` or ``org/clickstream/dev``); the ``pulumi`` CLI is run
            for it (from the current directory) when no ``path`` is given.

    Returns:
        The mapping of output name to value, as the JSON has it.

    Raises:
        ConfigError: the file is missing or not a JSON object, the CLI is not installed or
            fails, or the outputs hide secrets (``"[secret]"``). The message says what to do.
    """
    if path:
        return _parse(_read_file(path), source=f"{_OUTPUTS_ENV}={path}")
    if stack:
        return _parse(_run_cli(stack), source=f"`pulumi stack output` of stack {stack!r}")
    msg = f"no stack outputs given: set {_OUTPUTS_ENV} to a JSON file or {_STACK_ENV} to a stack"
    raise ConfigError(msg)


def settings_values(outputs: Mapping[str, Any], *, role: Role) -> dict[str, Any]:
    """Map stack outputs to :class:`clickstream.settings.Settings` field values for one role.

    Outputs absent from ``outputs`` are left out, so the environment and the defaults decide
    them (a hand-written file for a local PLAINTEXT broker simply has no certificates). The
    PostgreSQL URI is turned into a SQLAlchemy URL for psycopg 3 (``postgresql+psycopg://``),
    keeping its query (``sslmode=require``).

    Args:
        outputs: output name to value, as :func:`read_stack_outputs` returns it.
        role: ``producer`` and ``consumer`` get their own Kafka client certificate; ``admin``
            gets none, the schema owner's database URL and the Dashboards URL; ``reader`` gets
            the read-only database URL and nothing else secret (module docstring).

    Raises:
        ConfigError: a value is not a string, is hidden (``"[secret]"``), a certificate comes
            without its key (or the reverse), or the database URI has an unexpected scheme.
    """
    if role not in _ROLES:
        msg = f"unknown role {role!r}; expected producer, consumer, admin or reader"
        raise ConfigError(msg)

    def get(key: OutputKey) -> str | None:
        value = outputs.get(key.value)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            msg = f"stack output {key.value!r} must be a string, got {type(value).__name__}"
            raise ConfigError(msg)
        return value

    values: dict[str, Any] = {}
    for key, field in _COMMON.items():
        if (value := get(key)) is not None:
            values[field] = value

    if role in _CLIENT_CERTS:
        cert_key, key_key = _CLIENT_CERTS[role]
        cert, private_key = get(cert_key), get(key_key)
        if (cert is None) != (private_key is None):
            missing = key_key if private_key is None else cert_key
            msg = f"stack output {missing.value!r} is missing; the {role} needs both cert and key"
            raise ConfigError(msg)
        if cert is not None:
            values["kafka_ssl_certificate"] = cert
            values["kafka_ssl_key"] = private_key

    database_uri = next(
        (uri for key in _DATABASE_URIS.get(role, ()) if (uri := get(key)) is not None), None
    )
    if database_uri is not None:
        values["database_url"] = _sqlalchemy_url(database_uri)

    if role in ("consumer", "admin") and (search := get(OutputKey.OPENSEARCH_URI)) is not None:
        values["opensearch_url"] = search
    if role == "admin" and (dashboards := get(OutputKey.DASHBOARDS_URI)) is not None:
        values["dashboards_url"] = dashboards
    return values


def _sqlalchemy_url(uri: str) -> str:
    """Turn a libpq URI (``postgres://`` or ``postgresql://``) into a psycopg 3 SQLAlchemy URL.

    Everything after the scheme (credentials, host, database, ``?sslmode=require``) is kept.
    A URL that already names a SQLAlchemy dialect+driver is returned unchanged.

    Raises:
        ConfigError: the scheme is not a PostgreSQL one.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        msg = "stack output 'pg_*_uri' is not a URI (expected postgres://user:pw@host:port/db)"
        raise ConfigError(msg)
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    if scheme.startswith("postgresql+"):
        return uri
    msg = f"stack output 'pg_*_uri' has scheme {scheme!r}; expected postgres:// or postgresql://"
    raise ConfigError(msg)


def _read_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        msg = (
            f"{_OUTPUTS_ENV}={path}: cannot read the file ({exc.strerror or exc}); create it with "
            "`pulumi stack output --json --show-secrets > outputs.json`"
        )
        raise ConfigError(msg) from exc


def _run_cli(stack: str) -> str:
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        msg = (
            f"{_STACK_ENV}={stack} needs the pulumi CLI, which is not on PATH. Either install it, "
            f"or on a machine that has it run `pulumi stack output --json --show-secrets "
            f"--stack {stack} > outputs.json` and set {_OUTPUTS_ENV}=outputs.json"
        )
        raise ConfigError(msg)
    command = [pulumi, "stack", "output", "--json", "--show-secrets", "--stack", stack]
    logger.info("reading stack outputs with %s", " ".join(command[1:]))
    try:
        # A fixed argument list (no shell); the stack name is passed as one argument.
        done = subprocess.run(  # noqa: S603
            command, capture_output=True, text=True, check=False, timeout=_CLI_TIMEOUT_SECONDS
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        msg = f"running `pulumi stack output` for stack {stack!r} failed: {exc}"
        raise ConfigError(msg) from exc
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-3:] if done.stderr else []
        msg = (
            f"`pulumi stack output --stack {stack}` exited with {done.returncode}: "
            f"{' / '.join(detail) or 'no message'}. Log in to the backend (and set "
            f"PULUMI_CONFIG_PASSPHRASE for a local one), or set {_OUTPUTS_ENV} to a JSON file"
        )
        raise ConfigError(msg)
    return done.stdout


def _parse(text: str, *, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        msg = (
            f"{source}: not valid JSON ({exc.msg} at line {exc.lineno}); {_OUTPUTS_ENV} must "
            "name the output of `pulumi stack output --json --show-secrets`"
        )
        raise ConfigError(msg) from exc
    if not isinstance(data, dict):
        msg = (
            f"{source}: expected a JSON object of output names to values, got {type(data).__name__}"
        )
        raise ConfigError(msg)
    if not data:
        msg = f"{source}: the stack has no outputs; has `pulumi up` run for it?"
        raise ConfigError(msg)
    hidden = sorted(name for name, value in data.items() if value == _MASKED_VALUE)
    if hidden:
        msg = (
            f"{source}: secret outputs are hidden ({', '.join(hidden)}); "
            "export them with `pulumi stack output --json --show-secrets`"
        )
        raise ConfigError(msg)
    return data

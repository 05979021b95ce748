"""Where the local stack lives and which ports it uses (pure: no I/O).

Every value has a default and can be overridden from the environment (``CLICKSTREAM_DEVSTACK_*``)
or from command-line flags; :func:`config_from_env` is the only place that looks at a mapping of
environment variables, and it receives that mapping as an argument.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = [
    "ENV_PREFIX",
    "HOST",
    "StackConfig",
    "config_from_env",
    "default_home",
    "env_command",
    "env_exports",
    "repo_root",
]

ENV_PREFIX = "CLICKSTREAM_DEVSTACK_"
HOST = "127.0.0.1"

_PORT_FIELDS = (
    "kafka_port",
    "kafka_controller_port",
    "postgres_port",
    "opensearch_port",
    "opensearch_transport_port",
)


def repo_root() -> Path:
    """Return the checkout this package lives in (``devstack/`` sits at its top level)."""
    return Path(__file__).resolve().parent.parent


def default_home() -> Path:
    """Return the one git-ignored folder that holds jars, data, logs and pid files: ``.local/``."""
    return repo_root() / ".local"


@dataclass(frozen=True)
class StackConfig:
    """Locations, ports and credentials of the local stack.

    All servers bind to 127.0.0.1 only. Ports are TCP ports on that address.
    """

    home: Path = dataclasses.field(default_factory=default_home)
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    postgres_port: int = 15432
    opensearch_port: int = 19200
    opensearch_transport_port: int = 19300
    postgres_user: str = "clickstream"
    postgres_password: str = "clickstream"  # noqa: S105 - a loopback-only development database
    postgres_database: str = "clickstream"
    heap: str = "512m"
    """Kafka's JVM heap (``-Xmx``)."""
    opensearch_heap: str = "2g"
    """OpenSearch's JVM heap (``-Xms``/``-Xmx``). Bulk indexing on a warm node measured 45-57 µs
    of node CPU per document with 2 GB against 58-68 µs with 512 MB (docs/benchmarks.md)."""
    java: str = "java"

    @property
    def kafka_bootstrap(self) -> str:
        """Bootstrap servers of the PLAINTEXT listener (``host:port``)."""
        return f"{HOST}:{self.kafka_port}"

    @property
    def opensearch_url(self) -> str:
        """Base URL of the OpenSearch HTTP API (no auth, no TLS)."""
        return f"http://{HOST}:{self.opensearch_port}"

    def database_url(self, database: str | None = None) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of ``database`` (default: the project database)."""
        user = quote(self.postgres_user, safe="")
        password = quote(self.postgres_password, safe="")
        name = database or self.postgres_database
        return f"postgresql+psycopg://{user}:{password}@{HOST}:{self.postgres_port}/{name}"


def _parse_port(name: str, raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a TCP port number, got {raw!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{name} must be between 1 and 65535, got {port}")
    return port


def config_from_env(
    environ: Mapping[str, str], *, overrides: Mapping[str, object] | None = None
) -> StackConfig:
    """Build a :class:`StackConfig` from ``CLICKSTREAM_DEVSTACK_*`` variables, then ``overrides``.

    Recognised variables: ``..._HOME``, ``..._KAFKA_PORT``, ``..._KAFKA_CONTROLLER_PORT``,
    ``..._POSTGRES_PORT``, ``..._OPENSEARCH_PORT``, ``..._OPENSEARCH_TRANSPORT_PORT``,
    ``..._HEAP`` (Kafka's JVM ``-Xmx``, e.g. ``512m``), ``..._OPENSEARCH_HEAP`` (OpenSearch's,
    e.g. ``2g``) and ``..._JAVA`` (the ``java`` executable).
    ``overrides`` maps field names to values (``None`` values are ignored), e.g. from CLI flags.

    Raises:
        ValueError: a port is not an integer in 1..65535, or two services share a port.
    """
    values: dict[str, object] = {}
    home = environ.get(f"{ENV_PREFIX}HOME")
    if home:
        values["home"] = Path(home)
    for field in _PORT_FIELDS:
        name = f"{ENV_PREFIX}{field.removesuffix('_port').upper()}_PORT"
        raw = environ.get(name)
        if raw:
            values[field] = _parse_port(name, raw)
    for field in ("heap", "opensearch_heap", "java"):
        raw = environ.get(f"{ENV_PREFIX}{field.upper()}")
        if raw:
            values[field] = raw
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = Path(value) if key == "home" and isinstance(value, str) else value
    config = StackConfig(**values)  # type: ignore[arg-type]
    ports = [getattr(config, field) for field in _PORT_FIELDS]
    if len(set(ports)) != len(ports):
        raise ValueError(
            f"devstack ports must be distinct, got {dict(zip(_PORT_FIELDS, ports, strict=True))}"
        )
    return config


def env_exports(config: StackConfig) -> list[str]:
    """Return ``export CLICKSTREAM_...=...`` lines that point the application at this stack."""
    return [
        f"export CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS={config.kafka_bootstrap}",
        f"export CLICKSTREAM_DATABASE_URL={config.database_url()}",
        f"export CLICKSTREAM_OPENSEARCH_URL={config.opensearch_url}",
    ]


# The ports env_exports() prints, with how the application calls each service.
_APPLICATION_PORTS = (
    ("kafka_port", "Kafka"),
    ("postgres_port", "PostgreSQL"),
    ("opensearch_port", "OpenSearch"),
)


def env_command(config: StackConfig) -> tuple[str, list[str]]:
    """The ``devstack env`` command that prints :func:`env_exports` of ``config``, in any shell.

    Returns the command and the non-default application ports it names, e.g.
    ``("python -m devstack env --kafka-port 29092", ["Kafka 29092"])``: ports set by flags
    or by ``CLICKSTREAM_DEVSTACK_*`` variables are given as flags, so the command prints the
    same lines in a shell without those variables. Ports the application does not use (the
    controller and transport ports) and ``home`` do not change the exports and are left out.
    """
    defaults = StackConfig(home=config.home)
    flags: list[str] = []
    ports: list[str] = []
    for field, service in _APPLICATION_PORTS:
        port = getattr(config, field)
        if port != getattr(defaults, field):
            flags.append(f"--{field.replace('_', '-')} {port}")
            ports.append(f"{service} {port}")
    return " ".join(["python -m devstack env", *flags]), ports

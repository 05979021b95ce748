"""Typed settings, built once at each entry point.

Every value comes, highest precedence first, from: explicit overrides (CLI flags),
``CLICKSTREAM_*`` environment variables, the Pulumi stack outputs named by
``CLICKSTREAM_STACK_OUTPUTS`` (see :mod:`clickstream.stack_outputs`), and the defaults below.
Library code receives a :class:`Settings` object and never reads the environment itself.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any, Final, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from clickstream.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "KAFKA_CONNECTION_FIELDS",
    "SETTING_FLAGS",
    "Role",
    "Settings",
    "is_kafka_name",
    "load_settings",
]

ENV_PREFIX = "CLICKSTREAM_"

logger = logging.getLogger(__name__)

SETTING_FLAGS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "kafka_bootstrap_servers": "--bootstrap-servers",
        "topic": "--topic",
        "dlq_topic": "--dlq-topic",
        "consumer_group": "--group",
        "database_url": "--database-url",
        "opensearch_url": "--opensearch-url",
        "opensearch_index_prefix": "--prefix",
        "opensearch_shards": "--shards",
        "opensearch_replicas": "--replicas",
        "opensearch_retention_days": "--retention-days",
        "dashboards_url": "--dashboards-url",
    }
)
"""How the commands' flags spell the settings they override: a setting has the same flag in
every command that takes it."""

_KAFKA_NAME_RE = re.compile(r"[a-zA-Z0-9._-]{1,249}", re.ASCII)


def is_kafka_name(value: str) -> bool:
    """Whether Kafka takes ``value`` as a topic name: 1 to 249 of ``a-zA-Z0-9._-``, not ``.``
    or ``..`` (the Pulumi program holds its topic and group names to the same rule)."""
    return _KAFKA_NAME_RE.fullmatch(value) is not None and value not in {".", ".."}


Role = Literal["producer", "consumer", "admin", "reader"]
"""Which stack-output credentials to use: each Kafka client has its own least-privilege user,
and the read side (``reader``) a database user that can only ``SELECT``."""


class Settings(BaseSettings):
    """Everything the producer, consumer, migrations and read side need to connect and behave.

    Field ``foo_bar`` is set by the environment variable ``CLICKSTREAM_FOO_BAR``.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", case_sensitive=False
    )

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:19092",
        description="Kafka bootstrap servers, host:port[,host:port...].",
    )
    kafka_ssl_ca: SecretStr | None = Field(
        default=None, description="PEM of the CA that signed the brokers' certificates."
    )
    kafka_ssl_certificate: SecretStr | None = Field(
        default=None, description="PEM client certificate (mutual TLS, as Aiven issues)."
    )
    kafka_ssl_key: SecretStr | None = Field(
        default=None, description="PEM private key of the client certificate."
    )
    topic: str = Field(default="clickstream.events", description="Topic of click events.")
    dlq_topic: str = Field(
        default="clickstream.events.dlq", description="Dead-letter topic for invalid input."
    )
    consumer_group: str = Field(
        default="clickstream-consumer", min_length=1, description="Consumer group id."
    )
    database_url: SecretStr = Field(
        default=SecretStr("sqlite:///clickstream.db"),
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host:5432/db.",
    )
    opensearch_url: SecretStr = Field(
        default=SecretStr(""),
        description="OpenSearch URL with credentials; empty turns the OpenSearch sink off.",
    )
    opensearch_index_prefix: str = Field(
        default="clickstream", description="Prefix of the OpenSearch indices and aliases."
    )
    opensearch_shards: int = Field(default=1, ge=1, description="Primary shards per index.")
    opensearch_replicas: int = Field(default=0, ge=0, description="Replicas per shard.")
    opensearch_retention_days: int = Field(
        default=90, ge=1, description="Days before ISM deletes a daily events index."
    )
    dashboards_url: SecretStr = Field(
        default=SecretStr(""), description="OpenSearch Dashboards URL (for the import command)."
    )
    # Upper bounds keep every time computed from these (now + tolerance, an event's time +/- the
    # gap or the length) far inside what a datetime holds, for any event that passes validation.
    session_gap_seconds: int = Field(
        default=1800,
        gt=0,
        le=86400,
        description="Inactivity gap that ends a session (seconds, at most a day).",
    )
    session_max_seconds: int = Field(
        default=86400,
        gt=0,
        le=7 * 86400,
        description="Maximum session length from its first event (seconds, at most 7 days).",
    )
    future_tolerance_seconds: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="How far in the future occurred_at may lie (seconds, at most a day).",
    )

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                msg = f"expected host:port[,host:port...], got {value!r}"
                raise ValueError(msg)
        return value

    @field_validator("topic", "dlq_topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        # Kafka's own rule for topic names, checked before anything is created or sent.
        if not is_kafka_name(value):
            msg = (
                "expected a Kafka topic name: 1 to 249 of the characters a-z, A-Z, 0-9, "
                f"'.', '_' and '-', got {value!r}"
            )
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _check_distinct_topics(self) -> Settings:
        if self.topic == self.dlq_topic:
            # Dead letters written to the events topic would be read and refused again, forever.
            # The error type names the rule, so load_settings() knows which fields it concerns.
            raise PydanticCustomError(
                "distinct_topics",
                f"the dead-letter topic ({ENV_PREFIX}DLQ_TOPIC, --dlq-topic) must differ from "
                f"the events topic ({ENV_PREFIX}TOPIC, --topic); both are {{topic}}",
                {"topic": repr(self.topic)},
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if "://" not in raw:
            msg = "expected a SQLAlchemy URL such as postgresql+psycopg://user:pw@host:5432/db"
            raise ValueError(msg)
        return value

    @property
    def opensearch_enabled(self) -> bool:
        """Whether the OpenSearch sink and read side are configured."""
        return bool(self.opensearch_url.get_secret_value())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only explicit values: load_settings() merges flags, the environment and the
        # stack outputs itself, so constructing Settings never reads the process state.
        return (init_settings,)


_RULE_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "distinct_topics": frozenset({"topic", "dlq_topic"}),
}
"""The fields each rule across fields concerns, by the error type it raises."""


def _fields_of(item: Mapping[str, Any]) -> frozenset[str]:
    """The fields one validation error concerns (a rule across fields: all it names)."""
    loc = item["loc"]
    if loc:
        return frozenset({str(loc[0])})
    # An unknown rule concerns every field, so that it stays an error for every command.
    return _RULE_FIELDS.get(item["type"], frozenset(Settings.model_fields))


def _message(item: Mapping[str, Any]) -> str:
    return str(item["msg"]).removeprefix("Value error, ")


KAFKA_CONNECTION_FIELDS: Final = frozenset(
    {"kafka_bootstrap_servers", "kafka_ssl_ca", "kafka_ssl_certificate", "kafka_ssl_key"}
)
"""The fields :func:`clickstream.kafka.kafka_client_config` reads: every Kafka client's
connection. An entry point that makes a Kafka client names them in ``load_settings(uses=...)``."""


def _describe(
    items: list[Any], given: Collection[str] = (), flags: Mapping[str, str] | None = None
) -> str:
    """The errors, one line each, naming the variable, or the flag for a value in ``given``."""
    lines = []
    for item in items:
        name = ".".join(str(part) for part in item["loc"])
        if not name:  # a rule across fields names its variables itself
            lines.append(_message(item))
            continue
        variable = f"{ENV_PREFIX}{name.upper()}"
        if name in given:
            flag = (flags or {}).get(name)
            source = (
                f"{flag} (instead of {variable})"
                if flag
                else f"{variable} (the value given on the command line)"
            )
        else:
            source = variable
        lines.append(f"{source}: {_message(item)}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(
    *,
    role: Role = "admin",
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    uses: frozenset[str] | None = None,
    command: str = "this command",
    flags: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings once, at an entry point.

    A malformed value of a field the command does not use does not stop it: with ``uses``
    given, such a value is left out (the field keeps its default, which the command never
    reads) and one WARNING per value names the variable, the problem and ``command``. This
    lets several services share one ``.env``. A rule across fields (the dead-letter topic
    differs from the events topic) is treated the same way only when the command uses none
    of the fields it concerns.

    Args:
        role: whose credentials to take from the stack outputs (producer, consumer, admin,
            reader).
        overrides: values from CLI flags; ``None`` values are ignored.
        environ: the environment to read (defaults to ``os.environ``).
        uses: the fields the command reads, directly or through the functions it calls;
            ``None``: every field (all are validated, as for a library caller).
        command: how the warnings name the command, e.g. ``"clickstream.produce"``.
        flags: the command line's flag for each field of ``overrides`` (normally
            :data:`SETTING_FLAGS`), so that an error about a value given there names the flag.

    Raises:
        ConfigError: a value the command uses is malformed; the message names the
            ``CLICKSTREAM_*`` variable.
        ValueError: ``uses`` names a field that does not exist (a programming error).
    """
    if uses is not None and not uses <= Settings.model_fields.keys():
        unknown = ", ".join(sorted(uses - Settings.model_fields.keys()))
        msg = f"uses names fields that Settings does not have: {unknown}"
        raise ValueError(msg)
    env = os.environ if environ is None else environ
    stack_values: dict[str, Any] = {}
    outputs_path = env.get(f"{ENV_PREFIX}STACK_OUTPUTS", "")
    pulumi_stack = env.get(f"{ENV_PREFIX}PULUMI_STACK", "")
    if outputs_path or pulumi_stack:
        from clickstream import stack_outputs  # noqa: PLC0415 - only when configured

        outputs = stack_outputs.read_stack_outputs(
            path=outputs_path or None, stack=pulumi_stack or None
        )
        stack_values = stack_outputs.settings_values(outputs, role=role)
    explicit = {key: value for key, value in (overrides or {}).items() if value is not None}
    env_values = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in env.items()
        if key.upper().startswith(ENV_PREFIX)
        and key[len(ENV_PREFIX) :].lower() in Settings.model_fields
    }
    merged = {**stack_values, **env_values, **explicit}
    used = frozenset(Settings.model_fields) if uses is None else uses

    # Each pass leaves out the values whose only errors concern unused fields. A rule across
    # fields runs only once every field passed, so it can fail on a later pass. Every pass
    # removes at least one value, so this ends.
    while True:
        try:
            return Settings(**merged)
        except ValidationError as exc:
            failure = exc
        items = failure.errors()
        errors = [item for item in items if _fields_of(item) & used]
        unused = [item for item in items if not _fields_of(item) & used]
        dropped = False
        for item in unused:
            for name in sorted(_fields_of(item) & merged.keys()):
                del merged[name]
                dropped = True
                logger.warning(
                    "%s%s is ignored by %s, which does not use it: %s",
                    ENV_PREFIX,
                    name.upper(),
                    command,
                    _message(item),
                )
        if errors or not dropped:
            raise ConfigError(_describe(errors or items, explicit, flags)) from failure

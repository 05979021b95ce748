"""Typed settings, built once at each entry point.

Every value comes, highest precedence first, from: explicit overrides (CLI flags),
``CLICKSTREAM_*`` environment variables, the Pulumi stack outputs named by
``CLICKSTREAM_STACK_OUTPUTS`` (see :mod:`clickstream.stack_outputs`), and the defaults below.
Library code receives a :class:`Settings` object and never reads the environment itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from clickstream.errors import ConfigError

__all__ = ["ENV_PREFIX", "Role", "Settings", "is_kafka_name", "load_settings"]

ENV_PREFIX = "CLICKSTREAM_"

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
            msg = (
                f"the dead-letter topic ({ENV_PREFIX}DLQ_TOPIC, --dlq-topic) must differ from "
                f"the events topic ({ENV_PREFIX}TOPIC, --topic); both are {self.topic!r}"
            )
            raise ValueError(msg)
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


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        # A rule across fields names its variables itself.
        lines.append(f"{ENV_PREFIX}{name.upper()}: {message}" if name else message)
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(
    *,
    role: Role = "admin",
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings once, at an entry point.

    Args:
        role: whose credentials to take from the stack outputs (producer, consumer, admin,
            reader).
        overrides: values from CLI flags; ``None`` values are ignored.
        environ: the environment to read (defaults to ``os.environ``).

    Raises:
        ConfigError: a value is malformed; the message names the ``CLICKSTREAM_*`` variable.
    """
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

    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc

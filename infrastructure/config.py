"""Stack configuration: read once from ``pulumi config``, validated, frozen. No resources here.

Set values with ``pulumi config set <key> <value>`` (the keys live in the ``clickstream``
namespace, so ``partitions`` means ``clickstream:partitions``). The Aiven API token is the
provider's own setting: ``pulumi config set --secret aiven:apiToken <token>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Final

import pulumi

from clickstream.errors import ConfigError
from clickstream.search.indices import validate_prefix
from clickstream.settings import is_kafka_name

__all__ = ["InfraConfig", "load_config"]

# Aiven service names: lower-case letters, digits and dashes, starting with a letter.
_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
# Aiven project names (the project must already exist; this only catches typos early).
_PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Kafka topic and group names: the characters Kafka itself accepts.
# Aiven cloud names look like google-europe-west1, aws-eu-central-1, azure-germany-westcentral.
_CLOUD_NAME = re.compile(r"^[a-z]+-[a-z0-9-]+$")
# Plans look like startup-2, business-4, or hobbyist (no dash).
_PLAN_NAME = re.compile(r"^[a-z]+(-[a-z0-9]+)*$")
_VERSION = re.compile(r"^\d+(\.\d+)?$")
_USER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
# PostgreSQL roles: no dash (the grants in docs/deploy-aiven.md name them unquoted), and not a
# name PostgreSQL reserves (pg_*, public) or Aiven uses itself.
_PG_USER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_RESERVED_PG_USERS: Final = frozenset({"public", "postgres", "avnadmin", "none", "current_user"})
_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_HOUR_MS: Final = 3_600_000
# The Aiven provider reads its API token from this setting; it must be stored as a secret.
_AIVEN_AUTH_SETTING: Final = "aiven:apiToken"


@dataclass(frozen=True, slots=True, kw_only=True)
class InfraConfig:
    """Everything the program needs, with the defaults of a small production deployment.

    Construction validates every field at once and raises :class:`ConfigError` listing each
    problem with the ``pulumi config set`` key to fix.
    """

    aiven_project: str
    service_prefix: str
    cloud: str = "google-europe-west1"
    kafka_plan: str = "startup-2"
    kafka_version: str = "4.1"
    pg_plan: str = "startup-4"
    pg_version: str = "17"
    opensearch_plan: str = "startup-4"
    opensearch_version: str = "2.19"
    topic: str = "clickstream.events"
    dlq_topic: str = "clickstream.events.dlq"
    consumer_group: str = "clickstream-consumer"
    partitions: int = 6
    dlq_partitions: int = 1
    replication: int = 3
    retention_hours: int = 168
    dlq_retention_hours: int = 720
    index_prefix: str = "clickstream"
    database_name: str = "clickstream"
    producer_user: str = "clickstream-producer"
    consumer_user: str = "clickstream-consumer"
    pg_app_user: str = "clickstream_app"
    pg_owner_user: str = "clickstream_owner"
    pg_reader_user: str = "clickstream_reader"
    opensearch_user: str = "clickstream-search"
    termination_protection: bool = True

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ConfigError("invalid stack configuration:\n  " + "\n  ".join(problems))

    @property
    def retention_ms(self) -> int:
        """Retention of the events topic, in milliseconds (Kafka's ``retention.ms``)."""
        return self.retention_hours * _HOUR_MS

    @property
    def dlq_retention_ms(self) -> int:
        """Retention of the dead-letter topic, in milliseconds."""
        return self.dlq_retention_hours * _HOUR_MS

    @property
    def min_insync_replicas(self) -> int:
        """``min.insync.replicas`` for the topics: one broker may be down without losing writes."""
        return max(1, self.replication - 1)

    def service_name(self, kind: str) -> str:
        """The Aiven service name of one service kind (``kafka``, ``pg``, ``opensearch``)."""
        return f"{self.service_prefix}-{kind}"

    def _problems(self) -> list[str]:
        found: list[str] = []

        def check(ok: bool, key: str, expectation: str) -> None:
            if not ok:
                value = getattr(self, _FIELD_OF_KEY[key])
                found.append(f"{key}: {expectation}, got {value!r} (pulumi config set {key} ...)")

        check(
            bool(_PROJECT_NAME.match(self.aiven_project)), "aivenProject", "an Aiven project name"
        )
        check(
            bool(_SERVICE_NAME.match(self.service_prefix)) and len(self.service_prefix) <= 52,
            "servicePrefix",
            "lower-case letters, digits and dashes, starting with a letter, at most 52 chars",
        )
        check(
            bool(_CLOUD_NAME.match(self.cloud)), "cloud", "an Aiven cloud like google-europe-west1"
        )
        for key in ("kafkaPlan", "pgPlan", "opensearchPlan"):
            check(
                bool(_PLAN_NAME.match(getattr(self, _FIELD_OF_KEY[key]))),
                key,
                "an Aiven plan like startup-2 or business-4",
            )
        for key in ("kafkaVersion", "pgVersion", "opensearchVersion"):
            check(
                bool(_VERSION.match(getattr(self, _FIELD_OF_KEY[key]))),
                key,
                "a major or major.minor version like 4.1, 17 or 2.19",
            )
        # Schema public belongs to the database's owner only from PostgreSQL 15: before, the
        # grants of docs/deploy-aiven.md step 4a cannot keep other users from creating tables.
        check(
            not _VERSION.match(self.pg_version) or int(self.pg_version.split(".")[0]) >= 15,
            "pgVersion",
            "PostgreSQL 15 or later",
        )
        for key in ("topic", "dlqTopic", "consumerGroup"):
            check(
                is_kafka_name(getattr(self, _FIELD_OF_KEY[key])),
                key,
                "1-249 of the characters a-z A-Z 0-9 . _ -",
            )
        check(self.topic != self.dlq_topic, "dlqTopic", "a topic other than the events topic")
        check(1 <= self.partitions <= 1000, "partitions", "an integer from 1 to 1000")
        check(1 <= self.dlq_partitions <= 1000, "dlqPartitions", "an integer from 1 to 1000")
        # Aiven refuses replication 1; 3 survives one broker down with min.insync.replicas 2.
        check(2 <= self.replication <= 10, "replication", "an integer from 2 to 10")
        check(self.retention_hours >= 1, "retentionHours", "a positive number of hours")
        check(self.dlq_retention_hours >= 1, "dlqRetentionHours", "a positive number of hours")
        try:
            validate_prefix(self.index_prefix)  # the consumer's own rule: one source of truth
            prefix_ok = True
        except ConfigError:
            prefix_ok = False
        check(
            prefix_ok,
            "indexPrefix",
            "1-100 of lower case a-z 0-9 . _ -, starting with a letter or digit",
        )
        check(bool(_DATABASE_NAME.match(self.database_name)), "databaseName", "a-z 0-9 _")
        for key in ("producerUser", "consumerUser", "opensearchUser"):
            name = getattr(self, _FIELD_OF_KEY[key])
            check(
                bool(_USER_NAME.match(name)) and name != "avnadmin",
                key,
                "a-z 0-9 _ -, starting with a letter, at most 40 chars, and not avnadmin",
            )
        for key in ("pgAppUser", "pgOwnerUser", "pgReaderUser"):
            name = getattr(self, _FIELD_OF_KEY[key])
            check(
                bool(_PG_USER_NAME.match(name))
                and not name.startswith("pg_")
                and name not in _RESERVED_PG_USERS,
                key,
                "a-z 0-9 _, starting with a letter, at most 40 chars, not starting with pg_ "
                "(PostgreSQL reserves those) and none of public, postgres, avnadmin",
            )
        check(self.producer_user != self.consumer_user, "consumerUser", "not the producer's user")
        check(self.pg_app_user != self.pg_owner_user, "pgOwnerUser", "not the application user")
        check(
            self.pg_reader_user not in (self.pg_app_user, self.pg_owner_user),
            "pgReaderUser",
            "not the application user nor the schema owner",
        )
        return found


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


# pulumi config key (camelCase, Pulumi's convention) -> dataclass field.
_FIELD_OF_KEY: Final[dict[str, str]] = {_camel(f.name): f.name for f in fields(InfraConfig)}


def load_config(config: pulumi.Config | None = None, *, stack: str | None = None) -> InfraConfig:
    """Read the stack configuration, falling back to the defaults of :class:`InfraConfig`.

    Args:
        config: the ``clickstream`` configuration namespace (default: the current project's).
        stack: the stack name, used for the default ``servicePrefix`` (``clickstream-<stack>``)
            so that two stacks in one Aiven project do not collide (default: the current stack).

    Raises:
        ConfigError: ``aivenProject`` is missing, a value is out of range, or the Aiven API
            token is stored in plain text instead of as a secret.
        pulumi.ConfigTypeError: a number or boolean setting does not parse.
    """
    config = config or pulumi.Config()
    stack = stack or pulumi.get_stack()
    setting = _AIVEN_AUTH_SETTING
    # The language host loads the secret keys from PULUMI_CONFIG_SECRET_KEYS; read both.
    secret = pulumi.runtime.is_config_secret(setting) or (
        setting in pulumi.runtime.get_config_secret_keys_env()
    )
    if pulumi.runtime.get_config(setting) is not None and not secret:
        msg = (
            f"{setting} is stored in plain text; run `pulumi config rm {setting}` and "
            f"`pulumi config set --secret {setting} <token>`"
        )
        raise ConfigError(msg)
    project = config.get("aivenProject")
    if not project:
        msg = (
            "aivenProject is not set: run `pulumi config set aivenProject <your Aiven project>` "
            "(see Pulumi.example.yaml)"
        )
        raise ConfigError(msg)

    values: dict[str, Any] = {
        "aiven_project": project,
        "service_prefix": "clickstream-" + re.sub(r"[^a-z0-9-]+", "-", stack.lower()),
    }
    for item in fields(InfraConfig):
        key = _camel(item.name)
        value: object
        if item.type == "bool":
            value = config.get_bool(key)
        elif item.type == "int":
            value = config.get_int(key)
        else:
            value = config.get(key)
        if value is not None and item.name != "aiven_project":
            values[item.name] = value
    return InfraConfig(**values)

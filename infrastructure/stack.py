"""The clickstream services on Aiven, as one Pulumi component, and the outputs the library reads.

Least privilege, by construction:

- Kafka authenticates clients by certificate only (no SASL), topic auto-creation is off, and
  the wildcard ``avnadmin`` ACL Aiven adds by default is not created. Topics are created here,
  through the Aiven API, so no Kafka client needs ``Create``/``Alter``/``Delete``.
- Each Kafka client has its own service user and Kafka-native ACLs (``KafkaNativeAcl``, which,
  unlike Aiven's topic ACLs, can name one consumer group): the producer may only write the
  events topic; the consumer may read the events topic, write the dead-letter topic and use
  its one consumer group.
- PostgreSQL has a schema owner (runs migrations), an application user (rows only) and a
  reader (``SELECT`` only, for the dashboard); the table grants are SQL, which Aiven's API
  cannot issue, see ``docs/deploy-aiven.md``.
- OpenSearch has index ACLs on, and one user allowed only on ``<indexPrefix>*``.
- No output carries an ``avnadmin`` credential.

Deletion protection: the services use Aiven's own ``termination_protection`` (enforced by
Aiven). Topics and the database use Pulumi's ``protect`` option instead, because the
provider's ``termination_protection`` on those two resources is deprecated (it was only ever
checked client-side, like ``protect``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, urlsplit, urlunsplit

import pulumi
import pulumi_aiven as aiven

from clickstream.dead_letters import READER_GROUP_PREFIX
from clickstream.kafka import DLQ_MAX_MESSAGE_BYTES
from clickstream.stack_outputs import OutputKey
from infrastructure.config import InfraConfig

__all__ = ["ClickstreamServices", "KafkaGrant", "build_stack", "kafka_grants"]

_COMPONENT_TYPE: Final = "clickstream:aiven:ClickstreamServices"


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaGrant:
    """One Kafka-native ALLOW rule: ``principal`` may do ``operation`` on a resource.

    ``principal`` is the Aiven service user name (the ACL's principal is ``User:<name>``). The
    resource is the one named (``LITERAL``), or every one whose name starts so (``PREFIXED``).
    """

    principal: str
    resource_type: str
    resource_name: str
    operation: str
    pattern_type: str = "LITERAL"

    @property
    def logical_name(self) -> str:
        """A stable Pulumi resource name for the rule."""
        parts = (self.principal, self.operation, self.resource_type, self.resource_name)
        suffix = "" if self.pattern_type == "LITERAL" else f"-{self.pattern_type}"
        return ("acl-" + "-".join(parts) + suffix).lower()


def kafka_grants(cfg: InfraConfig) -> list[KafkaGrant]:
    """The complete list of Kafka permissions of the stack, and nothing else.

    ``Read`` and ``Write`` imply ``Describe`` in Kafka, and since Kafka 3.0 ``Write`` on a topic
    also allows idempotent producing, so these are enough for idempotent producers and for
    consumers that commit offsets to their group.
    """
    producer, consumer = cfg.producer_user, cfg.consumer_user
    return [
        KafkaGrant(
            principal=producer, resource_type="Topic", resource_name=cfg.topic, operation="Write"
        ),
        KafkaGrant(
            principal=consumer, resource_type="Topic", resource_name=cfg.topic, operation="Read"
        ),
        KafkaGrant(
            principal=consumer,
            resource_type="Group",
            resource_name=cfg.consumer_group,
            operation="Read",
        ),
        KafkaGrant(
            principal=consumer,
            resource_type="Topic",
            resource_name=cfg.dlq_topic,
            operation="Write",
        ),
        # To read its dead letters back (python -m clickstream.dead_letters, by assignment:
        # nothing committed). The reader's group id is new each run; librdkafka still looks up
        # its coordinator, which takes Describe on the group: on those ids only.
        KafkaGrant(
            principal=consumer,
            resource_type="Topic",
            resource_name=cfg.dlq_topic,
            operation="Read",
        ),
        KafkaGrant(
            principal=consumer,
            resource_type="Group",
            resource_name=READER_GROUP_PREFIX,
            operation="Describe",
            pattern_type="PREFIXED",
        ),
    ]


def postgres_uri(*, user: str, password: str, host: str, port: int, database: str) -> str:
    """A libpq URI in Aiven's own form, ``postgres://user:pw@host:port/db?sslmode=require``."""
    return (
        f"postgres://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/"
        f"{quote(database, safe='')}?sslmode=require"
    )


def https_uri(*, user: str, password: str, host: str, port: int) -> str:
    """``https://user:pw@host:port`` with the credentials percent-encoded."""
    return f"https://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}"


def with_credentials(uri: str, *, user: str, password: str) -> str:
    """Replace the credentials in ``uri`` (Aiven puts ``avnadmin``'s there) by ``user``'s."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _protected(child: pulumi.ResourceOptions, cfg: InfraConfig) -> pulumi.ResourceOptions:
    """``child`` plus Pulumi's ``protect`` when termination protection is configured."""
    return pulumi.ResourceOptions.merge(
        child, pulumi.ResourceOptions(protect=cfg.termination_protection)
    )


class ClickstreamServices(pulumi.ComponentResource):
    """Kafka with topics, users and ACLs; PostgreSQL with database and users; OpenSearch.

    Attributes:
        outputs: one ``Output[str]`` per :class:`OutputKey`; secrets are marked secret.
    """

    outputs: dict[OutputKey, pulumi.Output[str]]

    def __init__(
        self, name: str, cfg: InfraConfig, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        """Declare every resource as a child of this component."""
        super().__init__(_COMPONENT_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        kafka_outputs = self._kafka(cfg, child)
        pg_outputs = self._postgres(cfg, child)
        search_outputs = self._opensearch(cfg, child)
        self.outputs = {**kafka_outputs, **pg_outputs, **search_outputs}
        self.register_outputs({key.value: value for key, value in self.outputs.items()})

    def _kafka(
        self, cfg: InfraConfig, child: pulumi.ResourceOptions
    ) -> dict[OutputKey, pulumi.Output[str]]:
        protected = _protected(child, cfg)
        kafka = aiven.Kafka(
            "kafka",
            project=cfg.aiven_project,
            service_name=cfg.service_name("kafka"),
            cloud_name=cfg.cloud,
            plan=cfg.kafka_plan,
            termination_protection=cfg.termination_protection,
            # No wildcard avnadmin ACL: only the rules below grant anything.
            default_acl=False,
            kafka_user_config=aiven.KafkaKafkaUserConfigArgs(
                kafka_version=cfg.kafka_version,
                kafka_authentication_methods=aiven.KafkaKafkaUserConfigKafkaAuthenticationMethodsArgs(
                    certificate=True, sasl=False
                ),
                kafka=aiven.KafkaKafkaUserConfigKafkaArgs(auto_create_topics_enable=False),
            ),
            opts=child,
        )
        topics = {
            "events": (cfg.topic, cfg.partitions, cfg.retention_ms, None),
            # Room for any message the events topic took, plus the dead letter's headers.
            "dead-letters": (
                cfg.dlq_topic,
                cfg.dlq_partitions,
                cfg.dlq_retention_ms,
                str(DLQ_MAX_MESSAGE_BYTES),
            ),
        }
        for logical, (topic, partitions, retention_ms, max_bytes) in topics.items():
            aiven.KafkaTopic(
                f"topic-{logical}",
                project=cfg.aiven_project,
                service_name=kafka.service_name,
                topic_name=topic,
                partitions=partitions,
                replication=cfg.replication,
                config=aiven.KafkaTopicConfigArgs(
                    retention_ms=str(retention_ms),
                    cleanup_policy="delete",
                    min_insync_replicas=str(cfg.min_insync_replicas),
                    max_message_bytes=max_bytes,
                ),
                opts=protected,
            )
        users = {
            name: aiven.KafkaUser(
                f"kafka-user-{role}",
                project=cfg.aiven_project,
                service_name=kafka.service_name,
                username=name,
                opts=child,
            )
            for role, name in (("producer", cfg.producer_user), ("consumer", cfg.consumer_user))
        }
        for grant in kafka_grants(cfg):
            aiven.KafkaNativeAcl(
                grant.logical_name,
                project=cfg.aiven_project,
                service_name=kafka.service_name,
                # Depending on the user makes the rule go after it is created, before it is gone.
                principal=users[grant.principal].username.apply(lambda name: f"User:{name}"),
                resource_type=grant.resource_type,
                resource_name_=grant.resource_name,
                pattern_type=grant.pattern_type,
                operation=grant.operation,
                permission_type="ALLOW",
                host="*",
                opts=child,
            )
        project = aiven.get_project_output(
            project=cfg.aiven_project, opts=pulumi.InvokeOptions(parent=self)
        )
        producer, consumer = users[cfg.producer_user], users[cfg.consumer_user]
        return {
            OutputKey.KAFKA_BOOTSTRAP: pulumi.Output.concat(
                kafka.service_host, ":", kafka.service_port.apply(str)
            ),
            OutputKey.KAFKA_CA: project.ca_cert,
            OutputKey.KAFKA_PRODUCER_CERT: pulumi.Output.secret(producer.access_cert),
            OutputKey.KAFKA_PRODUCER_KEY: pulumi.Output.secret(producer.access_key),
            OutputKey.KAFKA_CONSUMER_CERT: pulumi.Output.secret(consumer.access_cert),
            OutputKey.KAFKA_CONSUMER_KEY: pulumi.Output.secret(consumer.access_key),
            OutputKey.TOPIC: pulumi.Output.from_input(cfg.topic),
            OutputKey.DLQ_TOPIC: pulumi.Output.from_input(cfg.dlq_topic),
            OutputKey.CONSUMER_GROUP: pulumi.Output.from_input(cfg.consumer_group),
        }

    def _postgres(
        self, cfg: InfraConfig, child: pulumi.ResourceOptions
    ) -> dict[OutputKey, pulumi.Output[str]]:
        pg = aiven.Pg(
            "pg",
            project=cfg.aiven_project,
            service_name=cfg.service_name("pg"),
            cloud_name=cfg.cloud,
            plan=cfg.pg_plan,
            termination_protection=cfg.termination_protection,
            pg_user_config=aiven.PgPgUserConfigArgs(pg_version=cfg.pg_version),
            opts=child,
        )
        database = aiven.PgDatabase(
            "pg-database",
            project=cfg.aiven_project,
            service_name=pg.service_name,
            database_name=cfg.database_name,
            opts=_protected(child, cfg),
        )

        def uri_of(user: aiven.PgUser) -> pulumi.Output[str]:
            uri = pulumi.Output.all(
                user.username,
                user.password,
                pg.service_host,
                pg.service_port,
                database.database_name,
            ).apply(
                lambda v: postgres_uri(
                    user=v[0], password=v[1], host=v[2], port=v[3], database=v[4]
                )
            )
            return pulumi.Output.secret(uri)

        users = {
            OutputKey.PG_OWNER_URI: ("owner", cfg.pg_owner_user),
            OutputKey.PG_APP_URI: ("app", cfg.pg_app_user),
            OutputKey.PG_READER_URI: ("reader", cfg.pg_reader_user),
        }
        return {
            key: uri_of(
                aiven.PgUser(
                    f"pg-user-{role}",
                    project=cfg.aiven_project,
                    service_name=pg.service_name,
                    username=username,
                    # After the database, so that a destroy drops the database (and the
                    # objects these roles own or were granted in it) before the roles:
                    # PostgreSQL refuses DROP ROLE while objects depend on the role.
                    opts=pulumi.ResourceOptions.merge(
                        child, pulumi.ResourceOptions(depends_on=[database])
                    ),
                )
            )
            for key, (role, username) in users.items()
        }

    def _opensearch(
        self, cfg: InfraConfig, child: pulumi.ResourceOptions
    ) -> dict[OutputKey, pulumi.Output[str]]:
        search = aiven.OpenSearch(
            "opensearch",
            project=cfg.aiven_project,
            service_name=cfg.service_name("opensearch"),
            cloud_name=cfg.cloud,
            plan=cfg.opensearch_plan,
            termination_protection=cfg.termination_protection,
            opensearch_user_config=aiven.OpenSearchOpensearchUserConfigArgs(
                opensearch_version=cfg.opensearch_version,
                opensearch_dashboards=aiven.OpenSearchOpensearchUserConfigOpensearchDashboardsArgs(
                    enabled=True
                ),
            ),
            opts=child,
        )
        acl = aiven.OpenSearchAclConfig(
            "opensearch-acl",
            project=cfg.aiven_project,
            service_name=search.service_name,
            enabled=True,
            # The bulk sink posts to /_bulk; extended ACLs let it through when every action
            # targets an allowed index (and still refuse the request otherwise).
            extended_acl=True,
            opts=child,
        )
        # Created after ACLs are on: users that exist when ACLs are first enabled receive a
        # full-access rule from Aiven.
        user = aiven.OpensearchUser(
            "opensearch-user",
            project=cfg.aiven_project,
            service_name=search.service_name,
            username=cfg.opensearch_user,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[acl])),
        )
        after_acl = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[acl]))
        aiven.OpenSearchAclRule(
            "opensearch-acl-rule",
            project=cfg.aiven_project,
            service_name=search.service_name,
            username=user.username,
            index=f"{cfg.index_prefix}*",
            # admin on the project's indices only: creating indices, mappings and aliases
            # needs it; every other index stays implicitly denied.
            permission="admin",
            opts=after_acl,
        )
        aiven.OpenSearchAclRule(
            "opensearch-acl-rule-index-template",
            project=cfg.aiven_project,
            service_name=search.service_name,
            username=user.username,
            # A top-level API: Aiven grants one only by a rule naming it (index rules never
            # do). The consumer reads the index templates at start and puts them when they
            # changed; the rule also grants the service's other templates. (_bulk, _mget and
            # _msearch, which Dashboards uses, need no rule: with extended ACLs Aiven checks
            # the indices they name against the index rule.)
            index="_index_template",
            permission="admin",
            opts=after_acl,
        )
        search_uri = pulumi.Output.all(
            user.username, user.password, search.service_host, search.service_port
        ).apply(lambda v: https_uri(user=v[0], password=v[1], host=v[2], port=v[3]))
        # Output types are dicts keyed by the snake_case names (a plain dict under mocks).
        dashboards_uri = pulumi.Output.all(search.opensearches, user.username, user.password).apply(
            lambda v: with_credentials(
                v[0][0]["opensearch_dashboards_uri"], user=v[1], password=v[2]
            )
        )
        return {
            OutputKey.OPENSEARCH_URI: pulumi.Output.secret(search_uri),
            OutputKey.DASHBOARDS_URI: pulumi.Output.secret(dashboards_uri),
            OutputKey.OPENSEARCH_INDEX_PREFIX: pulumi.Output.from_input(cfg.index_prefix),
        }


def build_stack(
    cfg: InfraConfig, *, name: str = "clickstream"
) -> Mapping[OutputKey, pulumi.Output[str]]:
    """Declare the clickstream services and return the stack outputs, one per :class:`OutputKey`.

    The caller exports them (``pulumi.export(key.value, output)``); secrets are already marked.
    """
    return ClickstreamServices(name, cfg).outputs

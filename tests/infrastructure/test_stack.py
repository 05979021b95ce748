"""The Pulumi program under Pulumi's mocks: resources, least privilege, secrets, the contract."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aiven as aiven
import pytest

from clickstream.stack_outputs import OutputKey
from infrastructure.config import InfraConfig
from infrastructure.stack import build_stack
from tests.infrastructure.conftest import (
    CA_PEM,
    KAFKA_HOST,
    KAFKA_PORT,
    OS_HOST,
    OS_PORT,
    PG_HOST,
    PG_PORT,
    cert_of,
    key_of,
)

REPO = Path(__file__).resolve().parents[2]
KAFKA = "aiven:index/kafka:Kafka"
TOPIC = "aiven:index/kafkaTopic:KafkaTopic"
KAFKA_USER = "aiven:index/kafkaUser:KafkaUser"
NATIVE_ACL = "aiven:index/kafkaNativeAcl:KafkaNativeAcl"
AIVEN_ACL = "aiven:index/kafkaAcl:KafkaAcl"
PG = "aiven:index/pg:Pg"
PG_DATABASE = "aiven:index/pgDatabase:PgDatabase"
PG_USER = "aiven:index/pgUser:PgUser"
OPENSEARCH = "aiven:index/openSearch:OpenSearch"
OS_USER = "aiven:index/opensearchUser:OpensearchUser"
OS_ACL_CONFIG = "aiven:index/openSearchAclConfig:OpenSearchAclConfig"
OS_ACL_RULE = "aiven:index/openSearchAclRule:OpenSearchAclRule"
COMPONENT = "clickstream:aiven:ClickstreamServices"

# Settings a test can tell apart from the defaults.
CFG = InfraConfig(
    aiven_project="acme-analytics",
    service_prefix="clickstream-dev",
    cloud="aws-eu-central-1",
    kafka_plan="business-4",
    kafka_version="3.9",
    pg_plan="business-8",
    pg_version="16",
    opensearch_plan="business-8",
    opensearch_version="2.19",
    partitions=12,
    dlq_partitions=2,
    replication=3,
    retention_hours=48,
    dlq_retention_hours=240,
    index_prefix="clicks",
)

# Every output that carries a credential (hand-listed, not taken from the program).
SECRET_OUTPUTS = {
    "kafka_producer_cert",
    "kafka_producer_key",
    "kafka_consumer_cert",
    "kafka_consumer_key",
    "pg_app_uri",
    "pg_owner_uri",
    "pg_reader_uri",
    "opensearch_uri",
    "opensearch_dashboards_uri",
}


@pytest.fixture
def deployed(run_program):
    return run_program(lambda: build_stack(CFG))


def only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


def test_kafka_service_takes_certificates_only_and_creates_no_topics(deployed):
    kafka = only(deployed.mocks.of_type(KAFKA)).inputs
    assert kafka["project"] == "acme-analytics"
    assert kafka["serviceName"] == "clickstream-dev-kafka"
    assert kafka["cloudName"] == "aws-eu-central-1"
    assert kafka["plan"] == "business-4"
    assert kafka["terminationProtection"] is True
    assert kafka["defaultAcl"] is False
    user_config = kafka["kafkaUserConfig"]
    assert user_config["kafkaVersion"] == "3.9"
    assert user_config["kafkaAuthenticationMethods"] == {"certificate": True, "sasl": False}
    assert user_config["kafka"]["autoCreateTopicsEnable"] is False


def test_topics_have_the_configured_partitions_replication_and_retention(deployed):
    topics = {t.inputs["topicName"]: t.inputs for t in deployed.mocks.of_type(TOPIC)}
    assert set(topics) == {"clickstream.events", "clickstream.events.dlq"}
    events, dead = topics["clickstream.events"], topics["clickstream.events.dlq"]
    assert (events["partitions"], events["replication"]) == (12, 3)
    assert (dead["partitions"], dead["replication"]) == (2, 3)
    assert events["config"]["retentionMs"] == "172800000"  # 48 h
    assert dead["config"]["retentionMs"] == "864000000"  # 240 h
    assert events["config"]["minInsyncReplicas"] == "2"
    assert events["config"]["cleanupPolicy"] == "delete"
    # Dead letters carry whole messages of the events topic (up to Kafka's default 1 MiB)
    # plus their headers: the dead-letter topic takes 2 MiB, the events topic the default.
    assert dead["config"]["maxMessageBytes"] == str(2 * 1024 * 1024)
    assert "maxMessageBytes" not in events["config"]
    assert events["serviceName"] == "clickstream-dev-kafka"


def allowed(acls: list[dict[str, Any]], user: str, operation: str, kind: str, name: str) -> bool:
    """Kafka's authorizer for ALLOW-only rules: Read/Write/... imply Describe; a PREFIXED rule
    covers every name that starts with its own."""
    implied = {"Describe": {"Describe", "Read", "Write", "Delete", "Alter", "All"}}
    granting = implied.get(operation, {operation}) | {"All"}
    return any(
        acl["principal"] == f"User:{user}"
        and acl["resourceType"] == kind
        and (
            acl["resourceName"] == name
            if acl["patternType"] == "LITERAL"
            else acl["patternType"] == "PREFIXED" and name.startswith(acl["resourceName"])
        )
        and acl["operation"] in granting
        for acl in acls
    )


def test_kafka_acls_are_exactly_the_least_privileges(deployed):
    acls = [a.inputs for a in deployed.mocks.of_type(NATIVE_ACL)]
    assert {
        (a["principal"], a["resourceType"], a["resourceName"], a["operation"]) for a in acls
    } == {
        ("User:clickstream-producer", "Topic", "clickstream.events", "Write"),
        ("User:clickstream-consumer", "Topic", "clickstream.events", "Read"),
        ("User:clickstream-consumer", "Topic", "clickstream.events.dlq", "Write"),
        # To read its dead letters back (python -m clickstream.dead_letters).
        ("User:clickstream-consumer", "Topic", "clickstream.events.dlq", "Read"),
        ("User:clickstream-consumer", "Group", "clickstream-consumer", "Read"),
        # The dead-letter reader's own group ids (new each run): only to find their coordinator.
        ("User:clickstream-consumer", "Group", "clickstream-dead-letters-", "Describe"),
    }
    assert len(acls) == 6
    for acl in acls:
        prefixed = acl["resourceName"] == "clickstream-dead-letters-"
        assert acl["patternType"] == ("PREFIXED" if prefixed else "LITERAL")
        assert acl["permissionType"] == "ALLOW"
        assert acl["host"] == "*"
        assert acl["serviceName"] == "clickstream-dev-kafka"
    # Aiven's own topic ACLs would allow every consumer group: none are used.
    assert deployed.mocks.of_type(AIVEN_ACL) == []

    producer, consumer = "clickstream-producer", "clickstream-consumer"
    events, dead, group = "clickstream.events", "clickstream.events.dlq", "clickstream-consumer"
    assert allowed(acls, producer, "Write", "Topic", events)
    assert allowed(acls, producer, "Describe", "Topic", events)
    assert not allowed(acls, producer, "Read", "Topic", events)
    assert not allowed(acls, producer, "Read", "Group", group)
    assert not allowed(acls, producer, "Write", "Topic", dead)
    assert allowed(acls, consumer, "Read", "Topic", events)
    assert allowed(acls, consumer, "Read", "Group", group)
    assert allowed(acls, consumer, "Write", "Topic", dead)
    assert not allowed(acls, consumer, "Write", "Topic", events)
    assert allowed(acls, consumer, "Read", "Topic", dead)
    assert not allowed(acls, producer, "Read", "Topic", dead)
    assert not allowed(acls, consumer, "Read", "Group", "some-other-group")
    reader = "clickstream-dead-letters-0b6f3c2e-5d1a-4b7e-9c8f-2a4d6e8f0a1c"
    assert allowed(acls, consumer, "Describe", "Group", reader)
    assert not allowed(acls, consumer, "Read", "Group", reader)  # no joining, no commits
    assert not allowed(acls, producer, "Describe", "Group", reader)
    assert not allowed(acls, consumer, "Describe", "Group", "some-other-group")
    for user in (producer, consumer, "avnadmin"):
        for operation in ("Create", "Delete", "Alter", "AlterConfigs", "All", "ClusterAction"):
            for kind, name in (("Topic", events), ("Topic", dead), ("Cluster", "kafka-cluster")):
                assert not allowed(acls, user, operation, kind, name)


def test_each_kafka_client_has_its_own_service_user_and_nobody_uses_avnadmin(deployed):
    users = sorted(u.inputs["username"] for u in deployed.mocks.of_type(KAFKA_USER))
    assert users == ["clickstream-consumer", "clickstream-producer"]
    for item in deployed.created:
        assert item.inputs.get("username") != "avnadmin", item
        assert item.inputs.get("principal") != "User:avnadmin", item
    for name, value in deployed.outputs.items():
        assert "avnadmin" not in value, name
        assert "admin-secret" not in value, name


def test_postgres_has_a_database_an_owner_and_an_application_user(deployed):
    pg = only(deployed.mocks.of_type(PG)).inputs
    assert pg["serviceName"] == "clickstream-dev-pg"
    assert (pg["plan"], pg["cloudName"]) == ("business-8", "aws-eu-central-1")
    assert pg["pgUserConfig"]["pgVersion"] == "16"
    assert pg["terminationProtection"] is True
    database = only(deployed.mocks.of_type(PG_DATABASE)).inputs
    assert database["databaseName"] == "clickstream"
    users = sorted(u.inputs["username"] for u in deployed.mocks.of_type(PG_USER))
    assert users == ["clickstream_app", "clickstream_owner", "clickstream_reader"]


def test_no_argument_is_one_the_installed_provider_deprecates(deployed):
    # The installed pulumi_aiven marks deprecated arguments on its *Args classes
    # (``termination_protection`` of KafkaTopic and PgDatabase, ``karapace`` of Kafka, ...).
    args_of = {
        KAFKA: aiven.KafkaArgs,
        TOPIC: aiven.KafkaTopicArgs,
        KAFKA_USER: aiven.KafkaUserArgs,
        NATIVE_ACL: aiven.KafkaNativeAclArgs,
        PG: aiven.PgArgs,
        PG_DATABASE: aiven.PgDatabaseArgs,
        PG_USER: aiven.PgUserArgs,
        OPENSEARCH: aiven.OpenSearchArgs,
        OS_USER: aiven.OpensearchUserArgs,
        OS_ACL_CONFIG: aiven.OpenSearchAclConfigArgs,
        OS_ACL_RULE: aiven.OpenSearchAclRuleArgs,
        # The user configs, nested one level down.
        f"{KAFKA}.kafkaUserConfig": aiven.KafkaKafkaUserConfigArgs,
        f"{PG}.pgUserConfig": aiven.PgPgUserConfigArgs,
        f"{OPENSEARCH}.opensearchUserConfig": aiven.OpenSearchOpensearchUserConfigArgs,
    }
    used: list[str] = []
    for item in deployed.created:
        if item.typ == COMPONENT:
            continue
        for name, value in item.inputs.items():
            if name not in ("__defaults", "__self__"):
                used.append(f"{item.typ}:{name}")
            if isinstance(value, dict) and f"{item.typ}.{name}" in args_of:
                used.extend(f"{item.typ}.{name}:{inner}" for inner in value)
    deprecated = {
        f"{where}:{prop.fget.__dict__['_pulumi_name']}"
        for where, args in args_of.items()
        for prop in vars(args).values()
        if isinstance(prop, property) and "_pulumi_deprecated_callable" in prop.fget.__dict__
    }
    assert f"{TOPIC}:terminationProtection" in deprecated  # the check sees what it looks for
    assert sorted(set(used) & deprecated) == []


def test_topics_and_database_are_protected_by_pulumi_and_services_by_aiven(deployed):
    protected = {(r.typ, r.name) for r in deployed.registrations if r.protect}
    assert protected == {
        (TOPIC, "topic-events"),
        (TOPIC, "topic-dead-letters"),
        (PG_DATABASE, "pg-database"),
    }
    with_flag = {i.typ for i in deployed.created if i.inputs.get("terminationProtection")}
    assert with_flag == {KAFKA, PG, OPENSEARCH}


def test_opensearch_has_dashboards_and_one_user_limited_to_the_project_indices(deployed):
    search = only(deployed.mocks.of_type(OPENSEARCH)).inputs
    assert search["serviceName"] == "clickstream-dev-opensearch"
    assert search["plan"] == "business-8"
    assert search["terminationProtection"] is True
    assert search["opensearchUserConfig"]["opensearchVersion"] == "2.19"
    assert search["opensearchUserConfig"]["opensearchDashboards"]["enabled"] is True
    acl_config = only(deployed.mocks.of_type(OS_ACL_CONFIG)).inputs
    assert acl_config["enabled"] is True
    assert acl_config["extendedAcl"] is True
    rules = {
        (r.inputs["username"], r.inputs["index"], r.inputs["permission"])
        for r in deployed.mocks.of_type(OS_ACL_RULE)
    }
    # The project's indices, and the one top-level API the consumer needs at start (on
    # Aiven, index rules never grant an API whose path starts with "_").
    assert rules == {
        ("clickstream-search", "clicks*", "admin"),
        ("clickstream-search", "_index_template", "admin"),
    }
    assert only(deployed.mocks.of_type(OS_USER)).inputs["username"] == "clickstream-search"


def test_opensearch_user_is_created_after_acls_are_enabled(deployed):
    acl_urn = deployed.urn_of(OS_ACL_CONFIG, "opensearch-acl")
    (user,) = [r for r in deployed.registrations if r.typ == OS_USER]
    assert acl_urn in user.dependencies


def test_postgresql_users_depend_on_the_database_so_a_destroy_drops_it_first(deployed):
    # Pulumi deletes in reverse dependency order; PostgreSQL refuses to drop a role that owns
    # or was granted objects in a database that still exists.
    database_urn = deployed.urn_of(PG_DATABASE, "pg-database")
    users = [r for r in deployed.registrations if r.typ == PG_USER]
    assert len(users) == 3
    for user in users:
        assert database_urn in user.dependencies, user.name


def test_every_resource_belongs_to_the_component(deployed):
    component_urn = deployed.urn_of(COMPONENT, "clickstream")
    children = [r for r in deployed.registrations if r.typ != COMPONENT]
    assert len(children) == 21  # kafka, 2 topics, 2 users, 6 acls, pg, db, 3 users, os, 4
    for registration in children:
        assert registration.parent == component_urn, registration.name


def test_outputs_are_exactly_the_library_contract(deployed):
    assert set(deployed.outputs) == {key.value for key in OutputKey}


def test_credentials_are_secret_and_the_rest_is_not(deployed):
    assert {name for name, secret in deployed.secret.items() if secret} == SECRET_OUTPUTS


def test_output_values(deployed):
    out = deployed.outputs
    assert out["kafka_bootstrap"] == f"{KAFKA_HOST}:{KAFKA_PORT}"
    assert out["kafka_ca"] == CA_PEM
    assert out["kafka_producer_cert"] == cert_of("clickstream-producer")
    assert out["kafka_producer_key"] == key_of("clickstream-producer")
    assert out["kafka_consumer_cert"] == cert_of("clickstream-consumer")
    assert out["kafka_consumer_key"] == key_of("clickstream-consumer")
    assert out["kafka_topic"] == "clickstream.events"
    assert out["kafka_dlq_topic"] == "clickstream.events.dlq"
    assert out["kafka_consumer_group"] == "clickstream-consumer"
    # Passwords "app:p@ss/1", "owner pw#2", "search%pw?3", percent-encoded by hand.
    assert out["pg_app_uri"] == (
        f"postgres://clickstream_app:app%3Ap%40ss%2F1@{PG_HOST}:{PG_PORT}/clickstream"
        "?sslmode=require"
    )
    assert out["pg_owner_uri"] == (
        f"postgres://clickstream_owner:owner%20pw%232@{PG_HOST}:{PG_PORT}/clickstream"
        "?sslmode=require"
    )
    # Password "read=only&4".
    assert out["pg_reader_uri"] == (
        f"postgres://clickstream_reader:read%3Donly%264@{PG_HOST}:{PG_PORT}/clickstream"
        "?sslmode=require"
    )
    assert (
        out["opensearch_uri"] == f"https://clickstream-search:search%25pw%3F3@{OS_HOST}:{OS_PORT}"
    )
    assert out["opensearch_dashboards_uri"] == (
        f"https://clickstream-search:search%25pw%3F3@{OS_HOST}:443"
    )
    assert out["opensearch_index_prefix"] == "clicks"


def test_termination_protection_can_be_turned_off_for_throwaway_stacks(run_program):
    cfg = InfraConfig(
        aiven_project="acme-analytics",
        service_prefix="clickstream-ci",
        termination_protection=False,
    )
    deployed = run_program(lambda: build_stack(cfg))
    protected = [item for item in deployed.created if item.inputs.get("terminationProtection")]
    assert protected == []
    assert len([i for i in deployed.created if "terminationProtection" in i.inputs]) == 3
    assert [r.name for r in deployed.registrations if r.protect] == []


def test_main_reads_the_stack_config_and_exports_every_output(
    run_program, pulumi_config, monkeypatch
):
    pulumi_config(
        {
            "clickstream:aivenProject": "acme-analytics",
            "clickstream:partitions": "24",
            "clickstream:indexPrefix": "shop",
            "aiven:apiToken": "token-value",
        },
        ["aiven:apiToken"],
    )
    exported: dict[str, pulumi.Output[Any]] = {}
    monkeypatch.setattr(pulumi, "export", exported.__setitem__)

    def program() -> dict[str, pulumi.Output[Any]]:
        runpy.run_path(str(REPO / "infrastructure" / "__main__.py"), run_name="__main__")
        return exported

    deployed = run_program(program)
    assert set(deployed.outputs) == {key.value for key in OutputKey}
    assert {name for name, secret in deployed.secret.items() if secret} == SECRET_OUTPUTS
    events = only([t for t in deployed.mocks.of_type(TOPIC) if t.inputs["partitions"] == 24])
    assert events.inputs["topicName"] == "clickstream.events"
    kafka = only(deployed.mocks.of_type(KAFKA)).inputs
    assert kafka["serviceName"] == "clickstream-dev-kafka"  # stack "dev"
    assert kafka["project"] == "acme-analytics"
    assert deployed.outputs["opensearch_index_prefix"] == "shop"

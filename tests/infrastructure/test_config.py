"""Stack configuration: defaults, reading ``pulumi config``, and validation messages."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pulumi
import pytest
import yaml

from clickstream.errors import ConfigError
from infrastructure.config import InfraConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_a_small_protected_deployment():
    cfg = InfraConfig(aiven_project="acme", service_prefix="clickstream-dev")
    assert cfg.topic == "clickstream.events"
    assert cfg.dlq_topic == "clickstream.events.dlq"
    assert cfg.consumer_group == "clickstream-consumer"
    assert (cfg.partitions, cfg.replication) == (6, 3)
    assert cfg.retention_ms == 7 * 24 * 3600 * 1000
    assert cfg.dlq_retention_ms == 30 * 24 * 3600 * 1000
    assert cfg.min_insync_replicas == 2
    assert cfg.termination_protection is True
    assert cfg.index_prefix == "clickstream"
    assert cfg.service_name("kafka") == "clickstream-dev-kafka"


def test_min_insync_replicas_leaves_room_for_one_broker_down():
    assert (
        InfraConfig(aiven_project="a", service_prefix="s", replication=2).min_insync_replicas == 1
    )
    assert (
        InfraConfig(aiven_project="a", service_prefix="s", replication=5).min_insync_replicas == 4
    )


def test_every_problem_is_reported_at_once_with_the_key_to_fix():
    with pytest.raises(ConfigError) as caught:
        InfraConfig(
            aiven_project="acme",
            service_prefix="Clickstream_Dev",
            partitions=0,
            replication=1,
            retention_hours=0,
            topic="events with spaces",
            index_prefix="Clicks*",
            pg_app_user="avnadmin",
        )
    message = str(caught.value)
    for key in (
        "servicePrefix",
        "partitions",
        "replication",
        "retentionHours",
        "topic",
        "indexPrefix",
        "pgAppUser",
    ):
        assert f"\n  {key}: " in message, key
    assert "got 0 (pulumi config set partitions ...)" in message
    assert "an integer from 2 to 10, got 1" in message
    assert "aivenProject" not in message


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"dlq_topic": "clickstream.events"}, "dlqTopic"),
        ({"consumer_user": "clickstream-producer"}, "consumerUser"),
        ({"pg_owner_user": "clickstream_app"}, "pgOwnerUser"),
        ({"pg_reader_user": "clickstream_app"}, "pgReaderUser"),
        ({"pg_reader_user": "clickstream_owner"}, "pgReaderUser"),
        ({"pg_reader_user": "avnadmin"}, "pgReaderUser"),
        ({"kafka_version": "latest"}, "kafkaVersion"),
        ({"pg_version": "14"}, "pgVersion"),  # step 4a's grants need 15 or later
        ({"kafka_plan": "Startup-2"}, "kafkaPlan"),
        ({"kafka_plan": "startup 2"}, "kafkaPlan"),
        ({"cloud": "europe"}, "cloud"),
        ({"database_name": "click-stream"}, "databaseName"),
    ],
)
def test_one_bad_value(changes, key):
    with pytest.raises(ConfigError, match=rf"\n  {key}: "):
        InfraConfig(aiven_project="acme", service_prefix="clickstream-dev", **changes)


def test_load_config_reads_the_clickstream_namespace(pulumi_config):
    pulumi_config(
        {
            "clickstream:aivenProject": "acme",
            "clickstream:cloud": "aws-eu-west-1",
            "clickstream:partitions": "24",
            "clickstream:retentionHours": "72",
            "clickstream:terminationProtection": "false",
            "clickstream:indexPrefix": "shop",
            "aiven:apiToken": "t",
        },
        ["aiven:apiToken"],
    )
    cfg = load_config(pulumi.Config("clickstream"), stack="Prod_EU")
    assert cfg.aiven_project == "acme"
    assert cfg.cloud == "aws-eu-west-1"
    assert cfg.partitions == 24
    assert cfg.retention_ms == 72 * 3600 * 1000
    assert cfg.termination_protection is False
    assert cfg.index_prefix == "shop"
    assert cfg.service_prefix == "clickstream-prod-eu"
    assert cfg.kafka_plan == "startup-2"  # default kept


def test_load_config_requires_the_aiven_project(pulumi_config):
    pulumi_config({}, [])
    with pytest.raises(ConfigError, match="pulumi config set aivenProject"):
        load_config(pulumi.Config("clickstream"), stack="dev")


def test_load_config_refuses_a_plain_text_api_token(pulumi_config):
    pulumi_config({"clickstream:aivenProject": "acme", "aiven:apiToken": "t"}, [])
    with pytest.raises(ConfigError, match="pulumi config set --secret aiven:apiToken"):
        load_config(pulumi.Config("clickstream"), stack="dev")


def test_load_config_rejects_a_number_that_does_not_parse(pulumi_config):
    pulumi_config({"clickstream:aivenProject": "acme", "clickstream:partitions": "six"}, [])
    with pytest.raises(pulumi.ConfigTypeError):
        load_config(pulumi.Config("clickstream"), stack="dev")


def test_the_example_stack_file_names_real_keys_and_shows_the_defaults(pulumi_config):
    example = yaml.safe_load((REPO / "Pulumi.example.yaml").read_text(encoding="utf-8"))
    values = example["config"]
    assert all(key.startswith("clickstream:") for key in values)
    pulumi_config(
        {
            key: str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in values.items()
        },
        [],
    )
    loaded = load_config(pulumi.Config("clickstream"), stack="dev")
    assert loaded == InfraConfig(aiven_project="my-aiven-project", service_prefix="clickstream-dev")
    known = {"clickstream:" + name for name in ("aivenProject", "servicePrefix")}
    known |= {f"clickstream:{key}" for key in _config_keys()}
    assert set(values) <= known


def _config_keys() -> set[str]:
    def camel(name: str) -> str:
        head, *rest = name.split("_")
        return head + "".join(part.capitalize() for part in rest)

    return {camel(item.name) for item in fields(InfraConfig)}

"""The contract end to end: mocked stack outputs -> JSON file -> library settings per role.

The JSON is what ``pulumi stack output --json --show-secrets`` prints for the stack; the
library reads it through ``CLICKSTREAM_STACK_OUTPUTS`` exactly as an operator would.
"""

from __future__ import annotations

import json

import pytest

from clickstream.settings import load_settings
from clickstream.stack_outputs import read_stack_outputs
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

APP_DB = (
    f"postgresql+psycopg://clickstream_app:app%3Ap%40ss%2F1@{PG_HOST}:{PG_PORT}/clickstream"
    "?sslmode=require"
)
OWNER_DB = (
    f"postgresql+psycopg://clickstream_owner:owner%20pw%232@{PG_HOST}:{PG_PORT}/clickstream"
    "?sslmode=require"
)
READER_DB = (
    f"postgresql+psycopg://clickstream_reader:read%3Donly%264@{PG_HOST}:{PG_PORT}/clickstream"
    "?sslmode=require"
)
SEARCH = f"https://clickstream-search:search%25pw%3F3@{OS_HOST}:{OS_PORT}"
DASHBOARDS = f"https://clickstream-search:search%25pw%3F3@{OS_HOST}:443"


@pytest.fixture
def outputs_file(run_program, tmp_path):
    cfg = InfraConfig(aiven_project="acme-analytics", service_prefix="clickstream-dev")
    deployed = run_program(lambda: build_stack(cfg))
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(deployed.outputs, indent=4) + "\n", encoding="utf-8")
    return path


def test_the_file_reads_back_as_the_outputs(outputs_file):
    outputs = read_stack_outputs(path=str(outputs_file), stack=None)
    assert outputs["kafka_bootstrap"] == f"{KAFKA_HOST}:{KAFKA_PORT}"
    assert len(outputs) == 15


def test_producer_settings(outputs_file):
    settings = load_settings(
        role="producer", environ={"CLICKSTREAM_STACK_OUTPUTS": str(outputs_file)}
    )
    assert settings.kafka_bootstrap_servers == f"{KAFKA_HOST}:{KAFKA_PORT}"
    assert settings.kafka_ssl_ca is not None
    assert settings.kafka_ssl_ca.get_secret_value() == CA_PEM
    assert settings.kafka_ssl_certificate is not None
    assert settings.kafka_ssl_certificate.get_secret_value() == cert_of("clickstream-producer")
    assert settings.kafka_ssl_key is not None
    assert settings.kafka_ssl_key.get_secret_value() == key_of("clickstream-producer")
    assert settings.topic == "clickstream.events"
    assert settings.dlq_topic == "clickstream.events.dlq"
    # The producer gets no database or search credentials: the defaults stay.
    assert settings.database_url.get_secret_value() == "sqlite:///clickstream.db"
    assert settings.opensearch_url.get_secret_value() == ""
    assert settings.dashboards_url.get_secret_value() == ""


def test_consumer_settings(outputs_file):
    settings = load_settings(
        role="consumer", environ={"CLICKSTREAM_STACK_OUTPUTS": str(outputs_file)}
    )
    assert settings.kafka_ssl_certificate is not None
    assert settings.kafka_ssl_certificate.get_secret_value() == cert_of("clickstream-consumer")
    assert settings.kafka_ssl_key is not None
    assert settings.kafka_ssl_key.get_secret_value() == key_of("clickstream-consumer")
    assert settings.consumer_group == "clickstream-consumer"
    assert settings.database_url.get_secret_value() == APP_DB
    assert settings.opensearch_url.get_secret_value() == SEARCH
    assert settings.opensearch_index_prefix == "clickstream"
    assert settings.dashboards_url.get_secret_value() == ""


def test_admin_settings_have_no_kafka_identity(outputs_file):
    settings = load_settings(role="admin", environ={"CLICKSTREAM_STACK_OUTPUTS": str(outputs_file)})
    assert settings.kafka_ssl_certificate is None
    assert settings.kafka_ssl_key is None
    assert settings.kafka_ssl_ca is not None
    assert settings.database_url.get_secret_value() == OWNER_DB
    assert settings.opensearch_url.get_secret_value() == SEARCH
    assert settings.dashboards_url.get_secret_value() == DASHBOARDS


def test_reader_settings_can_only_read_the_database(outputs_file):
    # The read side (the dashboard) gets the SELECT-only user, and no certificate or
    # OpenSearch credential. Role "reader" is not yet in clickstream.settings.Role.
    settings = load_settings(
        role="reader",
        environ={"CLICKSTREAM_STACK_OUTPUTS": str(outputs_file)},
    )
    assert settings.database_url.get_secret_value() == READER_DB
    assert settings.kafka_ssl_certificate is None
    assert settings.kafka_ssl_key is None
    assert settings.opensearch_url.get_secret_value() == ""
    assert settings.dashboards_url.get_secret_value() == ""


def test_environment_beats_stack_outputs_and_flags_beat_the_environment(outputs_file):
    environ = {
        "CLICKSTREAM_STACK_OUTPUTS": str(outputs_file),
        "CLICKSTREAM_TOPIC": "replay.events",
        "CLICKSTREAM_CONSUMER_GROUP": "env-group",
        "CLICKSTREAM_DATABASE_URL": "postgresql+psycopg://me:pw@127.0.0.1:15432/local",
    }
    settings = load_settings(
        role="consumer", environ=environ, overrides={"consumer_group": "flag-group", "topic": None}
    )
    assert settings.topic == "replay.events"  # env over outputs; a None flag is ignored
    assert settings.consumer_group == "flag-group"  # flag over env
    assert settings.database_url.get_secret_value() == (
        "postgresql+psycopg://me:pw@127.0.0.1:15432/local"
    )
    assert settings.dlq_topic == "clickstream.events.dlq"  # untouched: from the outputs

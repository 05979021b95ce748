"""Reading stack outputs and mapping them to settings, per role; no Pulumi, no network."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from clickstream.errors import ConfigError
from clickstream.stack_outputs import OutputKey, read_stack_outputs, settings_values

CA = "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n"
OUTPUTS = {
    "kafka_bootstrap": "k.example.com:24951",
    "kafka_ca": CA,
    "kafka_producer_cert": "PRODUCER CERT",
    "kafka_producer_key": "PRODUCER KEY",
    "kafka_consumer_cert": "CONSUMER CERT",
    "kafka_consumer_key": "CONSUMER KEY",
    "kafka_topic": "clickstream.events",
    "kafka_dlq_topic": "clickstream.events.dlq",
    "kafka_consumer_group": "clickstream-consumer",
    "pg_app_uri": "postgres://app:apw@pg.example.com:24947/clickstream?sslmode=require",
    "pg_owner_uri": "postgres://owner:opw@pg.example.com:24947/clickstream?sslmode=require",
    "pg_reader_uri": "postgres://reader:rpw@pg.example.com:24947/clickstream?sslmode=require",
    "opensearch_uri": "https://search:spw@os.example.com:24949",
    "opensearch_index_prefix": "clickstream",
    "opensearch_dashboards_uri": "https://search:spw@os.example.com:443",
}
COMMON = {
    "kafka_bootstrap_servers": "k.example.com:24951",
    "kafka_ssl_ca": CA,
    "topic": "clickstream.events",
    "dlq_topic": "clickstream.events.dlq",
    "consumer_group": "clickstream-consumer",
    "opensearch_index_prefix": "clickstream",
}


def test_output_names_are_the_documented_ones():
    assert {key.value for key in OutputKey} == set(OUTPUTS)


def test_producer_gets_its_certificate_and_no_database_or_search():
    assert settings_values(OUTPUTS, role="producer") == {
        **COMMON,
        "kafka_ssl_certificate": "PRODUCER CERT",
        "kafka_ssl_key": "PRODUCER KEY",
    }


def test_consumer_gets_its_certificate_the_app_database_user_and_search():
    assert settings_values(OUTPUTS, role="consumer") == {
        **COMMON,
        "kafka_ssl_certificate": "CONSUMER CERT",
        "kafka_ssl_key": "CONSUMER KEY",
        "database_url": (
            "postgresql+psycopg://app:apw@pg.example.com:24947/clickstream?sslmode=require"
        ),
        "opensearch_url": "https://search:spw@os.example.com:24949",
    }


def test_admin_gets_no_kafka_certificate_the_schema_owner_and_dashboards():
    assert settings_values(OUTPUTS, role="admin") == {
        **COMMON,
        "database_url": (
            "postgresql+psycopg://owner:opw@pg.example.com:24947/clickstream?sslmode=require"
        ),
        "opensearch_url": "https://search:spw@os.example.com:24949",
        "dashboards_url": "https://search:spw@os.example.com:443",
    }


def test_reader_gets_the_read_only_database_user_and_no_other_credential():
    assert settings_values(OUTPUTS, role="reader") == {
        **COMMON,
        "database_url": (
            "postgresql+psycopg://reader:rpw@pg.example.com:24947/clickstream?sslmode=require"
        ),
    }


def test_reader_never_falls_back_to_a_user_that_may_write():
    outputs = {k: v for k, v in OUTPUTS.items() if k != "pg_reader_uri"}
    assert "database_url" not in settings_values(outputs, role="reader")


def test_admin_falls_back_to_the_app_user_without_an_owner_uri():
    outputs = {k: v for k, v in OUTPUTS.items() if k != "pg_owner_uri"}
    assert settings_values(outputs, role="admin")["database_url"] == (
        "postgresql+psycopg://app:apw@pg.example.com:24947/clickstream?sslmode=require"
    )


@pytest.mark.parametrize(
    ("uri", "url"),
    [
        (
            "postgres://u:p@h:5432/d?sslmode=require",
            "postgresql+psycopg://u:p@h:5432/d?sslmode=require",
        ),
        ("postgresql://u:p@h:5432/d", "postgresql+psycopg://u:p@h:5432/d"),
        ("postgresql+psycopg://u:p@h:5432/d", "postgresql+psycopg://u:p@h:5432/d"),
    ],
)
def test_database_uri_becomes_a_psycopg_sqlalchemy_url(uri, url):
    assert settings_values({"pg_app_uri": uri}, role="consumer") == {"database_url": url}


@pytest.mark.parametrize("uri", ["mysql://u:p@h/d", "not a uri"])
def test_a_database_uri_that_is_not_postgres_is_refused(uri):
    with pytest.raises(ConfigError, match="pg_"):
        settings_values({"pg_app_uri": uri}, role="consumer")


def test_missing_outputs_are_left_to_the_environment_and_defaults():
    local = {"kafka_bootstrap": "127.0.0.1:19092", "kafka_topic": "t"}
    assert settings_values(local, role="consumer") == {
        "kafka_bootstrap_servers": "127.0.0.1:19092",
        "topic": "t",
    }


def test_unknown_outputs_are_ignored():
    assert settings_values({"something_else": "x"}, role="producer") == {}


def test_a_certificate_without_its_key_is_refused():
    outputs = {"kafka_consumer_cert": "CERT"}
    with pytest.raises(ConfigError, match="'kafka_consumer_key' is missing"):
        settings_values(outputs, role="consumer")


def test_a_value_that_is_not_a_string_is_refused():
    with pytest.raises(ConfigError, match="'kafka_topic' must be a string, got int"):
        settings_values({"kafka_topic": 3}, role="producer")


def test_an_unknown_role_is_refused():
    with pytest.raises(ConfigError, match="unknown role"):
        settings_values(OUTPUTS, role="operator")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "outputs.json"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_read_a_file(tmp_path):
    path = write(tmp_path, json.dumps(OUTPUTS, indent=4))
    assert read_stack_outputs(path=path, stack=None) == OUTPUTS


def test_the_file_wins_over_the_stack(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no pulumi: it must not be needed
    path = write(tmp_path, json.dumps(OUTPUTS))
    assert read_stack_outputs(path=path, stack="dev") == OUTPUTS


def test_a_missing_file_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match=r"CLICKSTREAM_STACK_OUTPUTS=.*cannot read"):
        read_stack_outputs(path=str(tmp_path / "nope.json"), stack=None)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ("{}", "no outputs"),
    ],
)
def test_a_bad_file_names_the_variable(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match) as caught:
        read_stack_outputs(path=write(tmp_path, text), stack=None)
    assert "CLICKSTREAM_STACK_OUTPUTS" in str(caught.value)


def test_hidden_secrets_say_to_use_show_secrets(tmp_path):
    hidden = {**OUTPUTS, "kafka_producer_key": "[secret]", "pg_app_uri": "[secret]"}
    with pytest.raises(ConfigError, match=r"\(kafka_producer_key, pg_app_uri\).*--show-secrets"):
        read_stack_outputs(path=write(tmp_path, json.dumps(hidden)), stack=None)


def test_nothing_given_is_an_error():
    with pytest.raises(ConfigError, match="CLICKSTREAM_STACK_OUTPUTS"):
        read_stack_outputs(path=None, stack=None)


def test_a_stack_without_the_cli_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        read_stack_outputs(path=None, stack="dev")
    message = str(caught.value)
    assert "pulumi stack output --json --show-secrets --stack dev > outputs.json" in message
    assert "CLICKSTREAM_STACK_OUTPUTS=outputs.json" in message


def fake_pulumi(bin_dir: Path, *, stdout: str, exit_code: int = 0, stderr: str = "") -> Path:
    """A stand-in ``pulumi`` executable that records its arguments and prints ``stdout``."""
    (bin_dir / "stdout.txt").write_text(stdout, encoding="utf-8")
    (bin_dir / "stderr.txt").write_text(stderr, encoding="utf-8")
    script = bin_dir / "pulumi"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > "{bin_dir}/argv.txt"\n'
        f'cat "{bin_dir}/stdout.txt"\n'
        f'cat "{bin_dir}/stderr.txt" >&2\n'
        f"exit {exit_code}\n",
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir / "argv.txt"


def test_a_stack_runs_the_cli_with_show_secrets(tmp_path, monkeypatch):
    argv_file = fake_pulumi(tmp_path, stdout=json.dumps(OUTPUTS))
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + "/usr/bin:/bin")
    assert read_stack_outputs(path=None, stack="acme/clickstream/prod") == OUTPUTS
    assert argv_file.read_text(encoding="utf-8").split("\n")[:7] == [
        "stack",
        "output",
        "--json",
        "--show-secrets",
        "--stack",
        "acme/clickstream/prod",
        "",
    ]


def test_a_failing_cli_reports_its_message(tmp_path, monkeypatch):
    fake_pulumi(tmp_path, stdout="", exit_code=255, stderr="error: no stack named 'prod' found\n")
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + "/usr/bin:/bin")
    with pytest.raises(ConfigError, match="exited with 255: error: no stack named 'prod' found"):
        read_stack_outputs(path=None, stack="prod")

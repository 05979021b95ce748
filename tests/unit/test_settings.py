"""Settings: bounds that keep the consumer's time arithmetic inside what a datetime holds, and
each command validating only the settings it uses."""

from __future__ import annotations

import importlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from alembic import command
from alembic.config import Config

from clickstream.db.migrate import MIGRATIONS_DIR
from clickstream.errors import ConfigError
from clickstream.settings import SETTING_FLAGS, Settings, load_settings


@pytest.mark.parametrize(
    ("variable", "most"),
    [
        ("CLICKSTREAM_FUTURE_TOLERANCE_SECONDS", 86400),
        ("CLICKSTREAM_SESSION_GAP_SECONDS", 86400),
        ("CLICKSTREAM_SESSION_MAX_SECONDS", 7 * 86400),
    ],
)
def test_time_settings_are_bounded_and_the_error_names_the_variable(
    variable: str, most: int
) -> None:
    name = variable.removeprefix("CLICKSTREAM_").lower()
    assert getattr(load_settings(environ={variable: str(most)}), name) == most
    # Unbounded, 2.6e11 s of tolerance made now + tolerance overflow for every message, and a
    # gap of 7e10 s made the session window overflow: the consumer stopped on every retry.
    for too_much in (most + 1, 10**14):
        with pytest.raises(ConfigError, match=variable):
            load_settings(environ={variable: str(too_much)})


def test_defaults_are_the_contract_s() -> None:
    settings = load_settings(environ={})
    assert settings.future_tolerance_seconds == 300
    assert (settings.session_gap_seconds, settings.session_max_seconds) == (1800, 86400)


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"CLICKSTREAM_TOPIC": ""}, "CLICKSTREAM_TOPIC: "),
        ({"CLICKSTREAM_TOPIC": "bad/name"}, "Kafka topic name"),
        ({"CLICKSTREAM_DLQ_TOPIC": "x" * 250}, "CLICKSTREAM_DLQ_TOPIC: "),
        ({"CLICKSTREAM_DLQ_TOPIC": ".."}, "CLICKSTREAM_DLQ_TOPIC: "),
        ({"CLICKSTREAM_CONSUMER_GROUP": ""}, "CLICKSTREAM_CONSUMER_GROUP: "),
        # Dead letters written to the events topic would be consumed and refused again forever.
        (
            {"CLICKSTREAM_TOPIC": "same", "CLICKSTREAM_DLQ_TOPIC": "same"},
            "must differ from the events topic",
        ),
    ],
)
def test_topic_names_are_kafka_s_and_distinct(environ: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_settings(environ=environ)


def test_every_character_kafka_allows_in_a_topic_name_is_accepted() -> None:
    name = "Events_2024-v1." + "x" * 234  # 249 characters
    assert load_settings(environ={"CLICKSTREAM_TOPIC": name}).topic == name


# -- a command validates the settings it uses ----------------------------------------------


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_malformed_setting_the_command_does_not_use_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {
        "CLICKSTREAM_DATABASE_URL": "nonsense",
        "CLICKSTREAM_OPENSEARCH_SHARDS": "0",
        "CLICKSTREAM_TOPIC": "mine",
    }
    with caplog.at_level(logging.WARNING, logger="clickstream.settings"):
        settings = load_settings(
            environ=environ, uses=frozenset({"topic"}), command="clickstream.produce"
        )
    assert settings.topic == "mine"
    # Left out: the defaults, which this command never reads.
    assert settings.database_url.get_secret_value() == "sqlite:///clickstream.db"
    assert settings.opensearch_shards == 1
    assert sorted(_warnings(caplog)) == [
        "CLICKSTREAM_DATABASE_URL is ignored by clickstream.produce, which does not use it: "
        "expected a SQLAlchemy URL such as postgresql+psycopg://user:pw@host:5432/db",
        "CLICKSTREAM_OPENSEARCH_SHARDS is ignored by clickstream.produce, which does not use "
        "it: Input should be greater than or equal to 1",
    ]


def test_a_malformed_setting_the_command_uses_is_the_same_error_as_before(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {"CLICKSTREAM_DATABASE_URL": "nonsense", "CLICKSTREAM_SESSION_GAP_SECONDS": "x"}
    expected = (
        "invalid settings:\n"
        "  CLICKSTREAM_DATABASE_URL: expected a SQLAlchemy URL such as "
        "postgresql+psycopg://user:pw@host:5432/db"
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(environ=environ, uses=frozenset({"database_url"}))
    assert str(raised.value) == expected
    # Without uses every field is used, as for a library caller: both errors, as before.
    with pytest.raises(ConfigError) as raised:
        load_settings(environ=environ)
    assert str(raised.value) == (
        expected + "\n  CLICKSTREAM_SESSION_GAP_SECONDS: Input should be a valid integer, "
        "unable to parse string as an integer"
    )


def test_distinct_topics_unused_by_the_command_are_both_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {"CLICKSTREAM_TOPIC": "same", "CLICKSTREAM_DLQ_TOPIC": "same"}
    with caplog.at_level(logging.WARNING, logger="clickstream.settings"):
        settings = load_settings(
            environ=environ, uses=frozenset({"database_url"}), command="clickstream.dashboard"
        )
    assert (settings.topic, settings.dlq_topic) == ("clickstream.events", "clickstream.events.dlq")
    rule = (
        "which does not use it: the dead-letter topic (CLICKSTREAM_DLQ_TOPIC, --dlq-topic) must "
        "differ from the events topic (CLICKSTREAM_TOPIC, --topic); both are 'same'"
    )
    assert sorted(_warnings(caplog)) == [
        f"CLICKSTREAM_DLQ_TOPIC is ignored by clickstream.dashboard, {rule}",
        f"CLICKSTREAM_TOPIC is ignored by clickstream.dashboard, {rule}",
    ]


@pytest.mark.parametrize("used", ["topic", "dlq_topic"])
def test_distinct_topics_stay_an_error_for_a_command_that_uses_one_of_them(used: str) -> None:
    environ = {"CLICKSTREAM_TOPIC": "same", "CLICKSTREAM_DLQ_TOPIC": "same"}
    with pytest.raises(ConfigError, match="must differ from the events topic"):
        load_settings(environ=environ, uses=frozenset({used}))


def test_a_rule_across_fields_is_checked_again_once_unused_values_are_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The events topic is unused and malformed, so it falls back to clickstream.events, which
    # is the dead-letter topic this command uses: the pair breaks the rule.
    environ = {"CLICKSTREAM_TOPIC": "bad/name", "CLICKSTREAM_DLQ_TOPIC": "clickstream.events"}
    with (
        caplog.at_level(logging.WARNING, logger="clickstream.settings"),
        pytest.raises(ConfigError, match=re.escape("both are 'clickstream.events'")),
    ):
        load_settings(environ=environ, uses=frozenset({"dlq_topic"}))
    assert len(_warnings(caplog)) == 1
    assert _warnings(caplog)[0].startswith("CLICKSTREAM_TOPIC is ignored by this command")


def test_an_error_on_a_used_field_is_raised_and_unused_ones_are_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {"CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS": "nope", "CLICKSTREAM_DATABASE_URL": "x"}
    with (
        caplog.at_level(logging.WARNING, logger="clickstream.settings"),
        pytest.raises(ConfigError) as raised,
    ):
        load_settings(environ=environ, uses=frozenset({"kafka_bootstrap_servers"}))
    assert str(raised.value) == (
        "invalid settings:\n  CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS: expected "
        "host:port[,host:port...], got 'nope'"
    )
    assert [w.split(",")[0] for w in _warnings(caplog)] == [
        "CLICKSTREAM_DATABASE_URL is ignored by this command"
    ]


def test_uses_must_name_fields_of_settings() -> None:
    with pytest.raises(ValueError, match="databse_url"):
        load_settings(environ={}, uses=frozenset({"databse_url"}))


# -- every entry point names what it reads ---------------------------------------------------

# A value no field accepts, for every field a string can make malformed.
_MALFORMED: dict[str, str] = {
    "kafka_bootstrap_servers": "no-port",
    "topic": "bad/name",
    "dlq_topic": "bad/name",
    "consumer_group": "",
    "database_url": "nonsense",
    "opensearch_shards": "0",
    "opensearch_replicas": "-1",
    "opensearch_retention_days": "0",
    "session_gap_seconds": "x",
    "session_max_seconds": "0",
    "future_tolerance_seconds": "-1",
}
# Any text is a valid PEM/URL/prefix here (they are checked where they are used).
_ANY_TEXT = {
    "kafka_ssl_ca",
    "kafka_ssl_certificate",
    "kafka_ssl_key",
    "opensearch_url",
    "opensearch_index_prefix",
    "dashboards_url",
}
_KAFKA = {"kafka_bootstrap_servers", "kafka_ssl_ca", "kafka_ssl_certificate", "kafka_ssl_key"}
_OPENSEARCH = {
    "opensearch_url",
    "opensearch_index_prefix",
    "opensearch_shards",
    "opensearch_replicas",
    "opensearch_retention_days",
}
_ALL = set(Settings.model_fields)


def test_the_malformed_values_cover_every_field() -> None:
    assert set(_MALFORMED) | _ANY_TEXT == _ALL
    for name, value in _MALFORMED.items():
        with pytest.raises(ConfigError, match=f"CLICKSTREAM_{name.upper()}"):
            load_settings(environ={f"CLICKSTREAM_{name.upper()}": value})


class _Reached(BaseException):
    """Raised once load_settings() returned: the command got past its settings."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings


def _run_migrations_offline() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head", sql=True)  # no sqlalchemy.url: the settings give it


def _entry(module: str, argv: list[str]) -> Callable[[], object]:
    def run() -> object:
        main = importlib.import_module(module).main
        return main(argv)

    return run


# (command, module whose load_settings to watch, how to run it, the fields it reads) — the
# field sets are read from the code each command runs (see the comments at each call).
_ENTRY_POINTS: list[tuple[str, str, Callable[[], object], set[str]]] = [
    (
        "produce",
        "clickstream.produce",
        _entry("clickstream.produce", ["--count", "1"]),
        _KAFKA | {"topic"},
    ),
    (
        "topics",
        "clickstream.topics",
        _entry("clickstream.topics", []),
        _KAFKA | {"topic", "dlq_topic"},
    ),
    (
        "consume",
        "clickstream.consume",
        _entry("clickstream.consume", []),
        _ALL - {"dashboards_url"},
    ),
    (
        "consume --no-opensearch",
        "clickstream.consume",
        _entry("clickstream.consume", ["--no-opensearch"]),
        _ALL - {"dashboards_url"} - _OPENSEARCH,
    ),
    (
        "search setup",
        "clickstream.search.__main__",
        _entry("clickstream.search.__main__", ["setup"]),
        _OPENSEARCH,
    ),
    (
        "search import-dashboards",
        "clickstream.search.__main__",
        _entry("clickstream.search.__main__", ["import-dashboards"]),
        {"dashboards_url", "opensearch_index_prefix"},
    ),
    (
        "search prune-sessions",
        "clickstream.search.__main__",
        _entry("clickstream.search.__main__", ["prune-sessions"]),
        {"opensearch_url", "opensearch_index_prefix"},
    ),
    ("analytics", "clickstream.analytics", _entry("clickstream.analytics", []), {"database_url"}),
    (
        "dashboard",
        "clickstream.dashboard.__main__",
        _entry("clickstream.dashboard.__main__", []),
        {"database_url"},
    ),
    (
        "retention",
        "clickstream.db.retention",
        _entry("clickstream.db.retention", ["--older-than", "30d"]),
        {"database_url"},
    ),
    (
        "events --validate",
        "clickstream.settings",  # imported inside the command
        lambda: importlib.import_module("clickstream.events")._main(["--validate", "-"]),
        {"future_tolerance_seconds"},
    ),
    ("migrations", "clickstream.settings", _run_migrations_offline, {"database_url"}),
    (
        "dead_letters",
        "clickstream.dead_letters",
        _entry("clickstream.dead_letters", ["--last", "1"]),
        _KAFKA | {"dlq_topic"},
    ),
    (
        "dead_letters --replay",
        "clickstream.dead_letters",
        _entry("clickstream.dead_letters", ["--replay", "--all"]),
        _KAFKA | {"dlq_topic", "topic", "future_tolerance_seconds"},
    ),
]


@pytest.mark.parametrize(
    ("module", "run", "reads"),
    [pytest.param(module, run, reads, id=name) for name, module, run, reads in _ENTRY_POINTS],
)
def test_each_entry_point_gets_past_settings_with_every_other_setting_malformed(
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    run: Callable[[], object],
    reads: set[str],
) -> None:
    for key in list(os.environ):
        if key.startswith("CLICKSTREAM_"):
            monkeypatch.delenv(key)
    unused = {name: value for name, value in _MALFORMED.items() if name not in reads}
    for name, value in unused.items():
        monkeypatch.setenv(f"CLICKSTREAM_{name.upper()}", value)
    calls: list[frozenset[str] | None] = []

    def watched(**kwargs: Any) -> Settings:
        calls.append(kwargs.get("uses"))
        raise _Reached(load_settings(**kwargs))

    monkeypatch.setattr(importlib.import_module(module), "load_settings", watched)
    with pytest.raises(_Reached) as reached:
        run()
    assert calls == [frozenset(reads)]
    defaults = Settings()
    for name in unused:
        assert getattr(reached.value.settings, name) == getattr(defaults, name), name


def test_an_error_names_the_flag_that_gave_the_value_or_else_the_variable() -> None:
    def error(**kwargs: Any) -> str:
        with pytest.raises(ConfigError) as caught:
            load_settings(environ={"CLICKSTREAM_DATABASE_URL": "nonsense"}, **kwargs)
        return str(caught.value)

    flagged = error(overrides={"topic": "bad topic!"}, flags=SETTING_FLAGS)
    assert "--topic (instead of CLICKSTREAM_TOPIC): expected a Kafka topic name" in flagged
    # The environment's bad value is named by its variable, beside the flag's.
    assert "\n  CLICKSTREAM_DATABASE_URL: expected a SQLAlchemy URL" in flagged
    unnamed = error(overrides={"topic": "bad topic!"})  # a caller with no flags to name
    assert "CLICKSTREAM_TOPIC (the value given on the command line): expected" in unnamed


@pytest.mark.parametrize(
    ("module", "argv", "named"),
    [
        ("clickstream.produce", ["--count", "1", "--topic", "bad topic!"], "--topic"),
        ("clickstream.consume", ["--bootstrap-servers", "no-port"], "--bootstrap-servers"),
        ("clickstream.topics", ["--dlq-topic", "bad topic!"], "--dlq-topic"),
        ("clickstream.dead_letters", ["--dlq-topic", "bad topic!"], "--dlq-topic"),
        ("clickstream.analytics", ["--database-url", "nonsense"], "--database-url"),
        (
            "clickstream.db.retention",
            ["--older-than", "30d", "--database-url", "x"],
            "--database-url",
        ),
        ("clickstream.dashboard", ["--database-url", "nonsense"], "--database-url"),
    ],
)
def test_each_command_names_the_flag_of_a_bad_value(
    module: str, argv: list[str], named: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
    result = subprocess.run(
        [sys.executable, "-m", module, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0, result.stderr
    field = next(name for name, flag in SETTING_FLAGS.items() if flag == named)
    variable = "CLICKSTREAM_" + field.upper()
    assert f"{named} (instead of {variable}): " in result.stderr + result.stdout

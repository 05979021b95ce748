"""Settings: bounds that keep the consumer's time arithmetic inside what a datetime holds."""

from __future__ import annotations

import pytest

from clickstream.errors import ConfigError
from clickstream.settings import load_settings


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

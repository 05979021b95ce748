"""What a dead letter keeps when the original message is too large for one Kafka message."""

from __future__ import annotations

import logging
import time

import pytest

from clickstream.dead_letters import MAX_KEY_BYTES, KafkaDeadLetterSink, fit
from clickstream.kafka import DLQ_MAX_MESSAGE_BYTES
from clickstream.pipeline import DeadLetter
from clickstream.settings import load_settings


def _letter(key: bytes | None, value: bytes | None) -> DeadLetter:
    return DeadLetter(key, value, "not_json", "the message is not JSON", "events", 3, 42)


def test_a_letter_that_fits_is_unchanged() -> None:
    letter = _letter(b"visitor-1", b"{not json")
    assert fit(letter) is letter
    assert fit(_letter(None, None)) == _letter(None, None)


def test_a_huge_key_keeps_its_first_bytes_and_says_so() -> None:
    key = b"k" * (3 * 1024 * 1024)
    letter = fit(_letter(key, b"{not json"))
    assert letter.key == key[:MAX_KEY_BYTES]
    assert letter.value == b"{not json"
    headers = dict(letter.headers())
    assert headers["key_truncated"] == b"true"
    assert headers["original_key_size"] == str(len(key)).encode()
    assert "truncated" not in headers  # the value was whole
    assert (headers["reason"], headers["source_offset"]) == (b"not_json", b"42")


def test_the_value_keeps_what_fits_beside_the_key() -> None:
    key = b"k" * (MAX_KEY_BYTES + 1)
    value = b"v" * DLQ_MAX_MESSAGE_BYTES
    letter = fit(_letter(key, value))
    assert letter.key is not None and letter.value is not None
    assert len(letter.key) == MAX_KEY_BYTES
    assert value.startswith(letter.value)
    assert len(letter.key) + len(letter.value) <= DLQ_MAX_MESSAGE_BYTES - 60 * 1024
    headers = dict(letter.headers())
    assert headers["truncated"] == b"true"
    assert headers["original_size"] == str(len(value)).encode()
    assert headers["original_key_size"] == str(len(key)).encode()


def test_the_clients_connection_errors_reach_the_log_when_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Nothing listens on port 1: librdkafka reports the refused connection. Without a logger it
    # wrote such lines straight to stderr, about 20 a second while Kafka was down.
    settings = load_settings(environ={}, overrides={"kafka_bootstrap_servers": "127.0.0.1:1"})
    sink = KafkaDeadLetterSink(settings, flush_timeout=0.1)
    deadline = time.monotonic() + 20
    with caplog.at_level(logging.DEBUG, logger="clickstream.librdkafka"):
        while time.monotonic() < deadline and not any(
            r.name == "clickstream.librdkafka" for r in caplog.records
        ):
            sink.serve()
            time.sleep(0.05)
        sink.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "clickstream.librdkafka"]
    assert lines, "no librdkafka line reached the log"
    assert any("127.0.0.1:1" in line for line in lines), lines

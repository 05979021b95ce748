"""What a dead letter keeps when the original message is too large for one Kafka message."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError

from clickstream.dead_letters import MAX_KEY_BYTES, KafkaDeadLetterSink, fit
from clickstream.errors import TransientError
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


class _SharedProducer:
    """Stands in for the client so that two sends interleave as the two threads' can."""

    def __init__(self) -> None:
        self.pending: list[Any] = []
        self.first_waiting = threading.Event()
        self.second_producing = threading.Event()

    def produce(self, _topic: str, *, on_delivery: Any, **_message: Any) -> None:
        if threading.current_thread().name == "second":
            self.second_producing.set()
        self.pending.append(on_delivery)

    def flush(self, _timeout: float) -> int:
        callbacks, self.pending = self.pending, []
        for callback in callbacks:
            if callback.args[0].reason == "search_rejected":
                callback(KafkaError(KafkaError._MSG_TIMED_OUT), None)
                # The other thread's send may start now; with the lock it waits for this one.
                self.first_waiting.set()
                self.second_producing.wait(2)
            else:
                callback(None, None)
        return 0

    def poll(self, _timeout: float) -> int:
        return 0


def test_a_failed_letter_of_one_thread_is_not_hidden_by_another_threads_send() -> None:
    # The consume loop and the outbox drainer share the sink. A send that started later
    # cleared the delivery failures of the one still waiting, which then returned as if its
    # letter had been delivered, and the drain dropped the session's dead letter.
    settings = load_settings(environ={}, overrides={"kafka_bootstrap_servers": "127.0.0.1:1"})
    sink = KafkaDeadLetterSink(settings, flush_timeout=0.1)
    real, shared = sink._producer, _SharedProducer()
    sink._producer = shared  # type: ignore[assignment]
    letter = DeadLetter(b"k", b"v", "search_rejected", "d", "sessions", -1, -1)
    outcome: list[str] = []

    def first() -> None:
        try:
            sink.send([letter])
            outcome.append("returned")
        except TransientError:
            outcome.append("raised")

    thread = threading.Thread(target=first, name="first")
    thread.start()
    assert shared.first_waiting.wait(10)
    second = threading.Thread(
        target=sink.send,
        args=([DeadLetter(b"k", b"v", "schema", "d", "events", 0, 1)],),
        name="second",
    )
    second.start()
    thread.join(10)
    second.join(10)
    sink._producer = real
    sink.close()
    assert outcome == ["raised"]

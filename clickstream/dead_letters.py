"""Kafka adapter for the dead-letter topic: invalid input is kept, never dropped."""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Sequence
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from clickstream.errors import DeliveryError, TransientError
from clickstream.kafka import (
    DLQ_MAX_MESSAGE_BYTES,
    kafka_client_config,
    librdkafka_logger,
    require_topic,
)
from clickstream.pipeline import DeadLetter
from clickstream.settings import Settings

__all__ = ["FALLBACK_VALUE_BYTES", "MAX_KEY_BYTES", "KafkaDeadLetterSink", "fit"]

FALLBACK_VALUE_BYTES: Final = 900_000
"""Only when a dead-letter topic made elsewhere refuses a letter as too large: the value is
cut to this many bytes (under Kafka's default limit), then halved while still refused, and
headers ``truncated`` and ``original_size`` say so."""
_FLOOR: Final = 1024  # refused even this small: the topic is misconfigured, stop loudly

_HEADROOM: Final = 64 * 1024  # the dead-letter headers and the record's own framing
MAX_KEY_BYTES: Final = 64 * 1024
"""A dead letter keeps at most this much of the original key (keys are user ids, and only a
topic configured for huge messages lets a larger one through)."""

_TERMINAL_CODES: Final = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_CONFIG,
    }
)

_log = logging.getLogger(__name__)


class KafkaDeadLetterSink:
    """Produces dead letters with their original key and bytes and waits for the broker's ack."""

    def __init__(self, settings: Settings, *, flush_timeout: float = 30.0) -> None:
        """Create an idempotent producer for ``settings.dlq_topic``."""
        self._topic = settings.dlq_topic
        self._flush_timeout = flush_timeout
        self._lock = threading.Lock()
        self._failures: list[str] = []
        self._fatal: list[str] = []
        self._producer = Producer(
            {
                **kafka_client_config(settings),
                "client.id": "clickstream-dead-letters",
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                "message.max.bytes": DLQ_MAX_MESSAGE_BYTES,
                "logger": librdkafka_logger(),
            }
        )
        self._too_large: list[DeadLetter] = []

    def _on_delivery(self, letter: DeadLetter, error: KafkaError | None, _message: Message) -> None:
        if error is None:
            return
        if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            self._too_large.append(letter)  # the topic's limit is lower than ours (see send)
            return
        text = f"{error.name()}: {error.str()}"
        # Retrying cannot fix these; stopping loudly beats retrying the same batch forever.
        if error.fatal() or error.code() in _TERMINAL_CODES:
            self._fatal.append(text)
        else:
            self._failures.append(text)

    def send(self, letters: Sequence[DeadLetter]) -> None:
        """Produce every letter and wait until all are acknowledged.

        Thread-safe: the consume loop and the search outbox's drainer both send letters; one
        call at a time runs (the delivery reports of one call must not be judged by another).

        Raises:
            TransientError: a letter was not acknowledged within the timeout.
            DeliveryError: the broker refuses dead letters for good (authorization, a fatal
                producer error); the message says which.
        """
        with self._lock:
            self._send(letters)

    def _send(self, letters: Sequence[DeadLetter]) -> None:
        self._failures.clear()
        self._fatal.clear()
        self._too_large.clear()
        for letter in letters:
            self._produce(letter)
        remaining = self._producer.flush(self._flush_timeout)
        # The broker judges a whole record batch against the topic's limit, and the client
        # does not split a refused batch: give each refused letter a try of its own first.
        refused, self._too_large = self._too_large, []
        for letter in refused:
            if not remaining:
                remaining = self._send_alone(letter)
        if self._fatal:
            msg = (
                f"the dead-letter topic {self._topic} refuses messages: {self._fatal[0]}; "
                "check that it exists and that this client may write to it"
            )
            raise DeliveryError(msg)
        if remaining or self._failures:
            detail = "; ".join(self._failures[:3]) or f"{remaining} not acknowledged in time"
            msg = f"dead letters not delivered to {self._topic}: {detail}"
            raise TransientError(msg)
        for letter in letters:
            _log.info(
                "dead-lettered %s[%d]@%d: %s: %s",
                letter.source_topic,
                letter.source_partition,
                letter.source_offset,
                letter.reason,
                letter.detail,
            )

    def _send_alone(self, letter: DeadLetter) -> int:
        """Send one letter by itself; while the topic refuses it as too large, cut it smaller.

        Returns what is left unacknowledged after the flush (0 when done).
        """
        while True:
            self._produce(letter)
            remaining = self._producer.flush(self._flush_timeout)
            if remaining or not self._too_large:
                return remaining
            self._too_large.clear()
            if len(letter.value or b"") <= _FLOOR:
                self._fatal.append(
                    f"MSG_SIZE_TOO_LARGE: a letter of {len(letter.value or b'')} bytes "
                    f"(raise the topic's max.message.bytes to {DLQ_MAX_MESSAGE_BYTES})"
                )
                return 0
            letter = self._smaller(letter)

    def _smaller(self, letter: DeadLetter) -> DeadLetter:
        size = len(letter.value or b"")
        cut = FALLBACK_VALUE_BYTES if size > FALLBACK_VALUE_BYTES else size // 2
        _log.warning(
            "%s refuses a dead letter of %d bytes: sending its first %d bytes (give the "
            "topic max.message.bytes=%d, as clickstream.topics and Pulumi do, to keep it whole)",
            self._topic,
            size,
            cut,
            DLQ_MAX_MESSAGE_BYTES,
        )
        return _truncate(letter, cut)

    def _produce(self, letter: DeadLetter) -> None:
        letter = fit(letter)
        kwargs: dict[str, Any] = {
            "key": letter.key,
            "value": letter.value,
            "headers": letter.headers(),
            "on_delivery": functools.partial(self._on_delivery, letter),
        }
        while True:
            try:
                self._producer.produce(self._topic, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:
                msg = f"cannot produce a dead letter to {self._topic}: {exc}"
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and (
                    error.fatal() or error.code() in _TERMINAL_CODES
                ):
                    raise DeliveryError(msg) from exc  # retrying the batch cannot fix it
                raise TransientError(msg) from exc

    def require_topic(self, timeout: float = 15.0) -> None:
        """Fail fast, with what to do, when the dead-letter topic does not exist.

        Raises:
            ConfigError: the topic is missing (or not visible to this client).
            TransientError: the brokers did not answer.
        """
        require_topic(
            self._producer,
            self._topic,
            what="dead-letter",
            setting="CLICKSTREAM_DLQ_TOPIC",
            timeout=timeout,
        )

    def serve(self) -> None:
        """Hand the client's queued log lines (and delivery reports) over; call it often.

        The loop calls it once per poll, so that while Kafka is unreachable the client's
        connection errors reach the log, de-duplicated, instead of piling up in its queue.
        """
        self._producer.poll(0)

    def close(self) -> None:
        """Flush what is pending."""
        with self._lock:
            self._producer.flush(self._flush_timeout)


def fit(letter: DeadLetter) -> DeadLetter:
    """``letter`` cut to what one dead-letter message holds, with headers saying what was cut.

    A key longer than :data:`MAX_KEY_BYTES` keeps its first bytes (``key_truncated``,
    ``original_key_size``); then the value keeps what fits beside the key and the headers
    (``truncated``, ``original_size``). Letters that fit are returned unchanged.
    """
    key = letter.key
    if key is not None and len(key) > MAX_KEY_BYTES:
        extra = (
            *letter.extra_headers,
            ("key_truncated", b"true"),
            ("original_key_size", str(len(key)).encode()),
        )
        letter = dataclasses.replace(letter, key=key[:MAX_KEY_BYTES], extra_headers=extra)
    room = DLQ_MAX_MESSAGE_BYTES - _HEADROOM - len(letter.key or b"")
    if letter.value is not None and len(letter.value) > room:
        letter = _truncate(letter, room)
    return letter


def _truncate(letter: DeadLetter, size: int) -> DeadLetter:
    """``letter`` with its value cut to ``size`` bytes; headers say so, with the original size."""
    value = letter.value or b""
    extra = letter.extra_headers
    if not any(name == "original_size" for name, _ in extra):
        extra = (*extra, ("truncated", b"true"), ("original_size", str(len(value)).encode()))
    return dataclasses.replace(letter, value=value[:size], extra_headers=extra)

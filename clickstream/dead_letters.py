"""Kafka adapter for the dead-letter topic: invalid input is kept, never dropped."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from clickstream.errors import TransientError
from clickstream.kafka import kafka_client_config
from clickstream.pipeline import DeadLetter
from clickstream.settings import Settings

__all__ = ["KafkaDeadLetterSink"]

_log = logging.getLogger(__name__)


class KafkaDeadLetterSink:
    """Produces dead letters with their original key and bytes and waits for the broker's ack."""

    def __init__(self, settings: Settings, *, flush_timeout: float = 30.0) -> None:
        """Create an idempotent producer for ``settings.dlq_topic``."""
        self._topic = settings.dlq_topic
        self._flush_timeout = flush_timeout
        self._failures: list[str] = []
        self._producer = Producer(
            {
                **kafka_client_config(settings),
                "client.id": "clickstream-dead-letters",
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
            }
        )

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(f"{error.name()}: {error.str()}")

    def send(self, letters: Sequence[DeadLetter]) -> None:
        """Produce every letter and wait until all are acknowledged.

        Raises:
            TransientError: a letter was not acknowledged within the timeout.
        """
        self._failures.clear()
        for letter in letters:
            self._produce(letter)
        remaining = self._producer.flush(self._flush_timeout)
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

    def _produce(self, letter: DeadLetter) -> None:
        kwargs: dict[str, Any] = {
            "key": letter.key,
            "value": letter.value,
            "headers": letter.headers(),
            "on_delivery": self._on_delivery,
        }
        while True:
            try:
                self._producer.produce(self._topic, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.1)

    def close(self) -> None:
        """Flush what is pending."""
        self._producer.flush(self._flush_timeout)

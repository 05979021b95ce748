"""Kafka producer adapter: idempotent, batched, compressed, with delivery accounting.

:class:`EventProducer` wraps ``confluent_kafka.Producer`` with the settings click events need:
``enable.idempotence`` (no duplicates or reordering from internal retries), ``acks=all``,
compression and batching, and delivery accounting: librdkafka reports only failed deliveries
(``delivery.report.only.error``), which a callback counts, and every other message the broker
acknowledged is counted as sent minus failed minus still in flight, so no Python code runs per
successful message. Messages are keyed by ``user_id`` so one visitor's events stay in order on
one partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from clickstream.errors import ConfigError, DeliveryError, TransientError
from clickstream.kafka import kafka_client_config, librdkafka_logger
from clickstream.settings import Settings

__all__ = ["POLL_EVERY", "DeliveryStats", "EventProducer", "ProducerTuning", "producer_config"]

logger = logging.getLogger(__name__)

COMPRESSION_TYPES: Final = ("lz4", "zstd", "snappy", "gzip", "none")
_MAX_LOGGED_FAILURES: Final = 5
"""Log the first few failed deliveries one by one; later ones are only counted."""
_REPEAT_WARNING_S: Final = 10.0
"""librdkafka repeats connection errors while it retries; log each text at most this often."""
_WAIT_SLICE_S: Final = 0.5
"""Longest single wait inside librdkafka: signal handlers run only between two such calls."""
_WAIT_NOTE_AFTER_S: Final = 10.0
"""A wait for queue space or delivery reports this long is reported (and again every
:data:`_WAIT_NOTE_EVERY_S`): a broker that is hung keeps its connections open and says nothing,
and librdkafka notices only when a request times out, a minute later."""
_WAIT_NOTE_EVERY_S: Final = 30.0
POLL_EVERY: Final = 256
"""Serve callbacks (failed deliveries, client errors) once per this many messages sent."""


def _slice(deadline: float) -> float:
    """The next wait towards ``deadline`` (a ``time.monotonic()`` value): at most one slice."""
    return min(max(deadline - time.monotonic(), 0.0), _WAIT_SLICE_S)


@dataclass(frozen=True)
class ProducerTuning:
    """Throughput and durability knobs of the producer (librdkafka names in brackets)."""

    compression: str = "lz4"
    """Codec for batches [compression.type]; lz4 is the cheapest on CPU, zstd the smallest."""
    linger_ms: int = 20
    """How long to wait for a batch to fill [linger.ms]: more throughput, a little latency."""
    batch_bytes: int = 1_048_576
    """Largest batch per partition [batch.size]."""
    batch_messages: int = 50_000
    """Most messages per batch [batch.num.messages]."""
    queue_messages: int = 200_000
    """Messages buffered before ``produce`` raises BufferError [queue.buffering.max.messages]."""
    delivery_timeout_s: float = 120.0
    """How long a message may wait for acknowledgement, retries included [message.timeout.ms]."""
    client_id: str = "clickstream-producer"

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSION_TYPES:
            msg = f"compression must be one of {', '.join(COMPRESSION_TYPES)}"
            raise ConfigError(msg)
        if self.linger_ms < 0 or self.batch_bytes < 1 or self.batch_messages < 1:
            msg = "linger_ms must be >= 0, batch_bytes and batch_messages >= 1"
            raise ConfigError(msg)
        if self.queue_messages < 1 or not self.delivery_timeout_s > 0:
            msg = "queue_messages must be >= 1 and delivery_timeout_s > 0"
            raise ConfigError(msg)


def producer_config(settings: Settings, tuning: ProducerTuning | None = None) -> dict[str, Any]:
    """The librdkafka configuration of the click-event producer (connection + tuning).

    Raises:
        ConfigError: the TLS settings are incomplete (see :func:`kafka_client_config`).
    """
    tuning = tuning if tuning is not None else ProducerTuning()
    return {
        **kafka_client_config(settings),
        "client.id": tuning.client_id,
        # Idempotence implies acks=all and at most 5 requests in flight, so retries neither
        # duplicate nor reorder a partition's messages; acks=all is spelled out for readers.
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": tuning.compression,
        "linger.ms": tuning.linger_ms,
        "batch.size": tuning.batch_bytes,
        "batch.num.messages": tuning.batch_messages,
        "queue.buffering.max.messages": tuning.queue_messages,
        "message.timeout.ms": int(tuning.delivery_timeout_s * 1000),
        # The Java client's partitioner: the same user_id lands on the same partition whichever
        # client produced it.
        "partitioner": "murmur2_random",
    }


@dataclass
class DeliveryStats:
    """What the broker acknowledged (``delivered``) and what it did not (``failed``).

    A message is in exactly one of three states: delivered, failed, or in flight (queued, sent
    and not yet acknowledged, or its failure not yet reported).
    """

    delivered: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    """Failure counts by librdkafka error name, e.g. ``{"_MSG_TIMED_OUT": 3}``."""


class EventProducer:
    """An idempotent producer of click events to one topic.

    Call :meth:`send` for each message (or :meth:`send_many` for a stream of them); it serves
    callbacks as it goes (``poll(0)`` once per :data:`POLL_EVERY` messages) and waits, polling,
    when the local queue is full. Finish with :meth:`flush`.

    Args:
        config: a librdkafka configuration, normally :func:`producer_config`.
        topic: where every message goes.
    """

    def __init__(self, config: Mapping[str, Any], *, topic: str) -> None:
        self.topic = topic
        self.fatal_error: str | None = None
        self._sent = 0
        self._failed = 0
        self._errors: dict[str, int] = {}
        self._cancelled = False
        self._cancelled_at = 0.0
        self._last_warning, self._last_warning_at = "", 0.0
        full = {
            **config,
            # Only failures call back into Python; successes are counted by subtraction.
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
            "logger": librdkafka_logger(),
        }
        try:
            self._producer = Producer(full)
        except KafkaException as exc:
            msg = f"invalid Kafka producer configuration: {exc.args[0]}"
            raise ConfigError(msg) from exc
        self._produce = self._producer.produce
        self._poll = self._producer.poll

    @property
    def stats(self) -> DeliveryStats:
        """Delivered, failed and failures by error name, as of now (exact after :meth:`flush`).

        ``delivered`` is sent - failed - in flight; librdkafka counts a pending client-error
        callback as in flight too, so between polls it can lag by a message or so.
        """
        failed = self._failed
        delivered = self._sent - failed - len(self._producer)
        return DeliveryStats(delivered=max(delivered, 0), failed=failed, errors=dict(self._errors))

    def check_connection(self, *, timeout: float) -> int:
        """Fetch the cluster metadata; return the topic's partition count.

        Raises:
            TransientError: no broker answered within ``timeout`` seconds.
            ConfigError: the topic does not exist (or this client may not describe it).
        """
        deadline = time.monotonic() + timeout
        while True:  # in short slices, so that Ctrl-C (cancel) is heard while waiting
            try:
                metadata = self._producer.list_topics(timeout=max(_slice(deadline), 0.001))
                break
            except KafkaException as exc:
                if self._cancelled:
                    msg = "stopped while waiting for a Kafka broker to answer"
                    raise TransientError(msg) from exc
                if time.monotonic() >= deadline:
                    msg = f"no Kafka broker answered within {timeout:g} s: {exc.args[0]}"
                    raise TransientError(msg) from exc
        found = metadata.topics.get(self.topic)
        if found is None or found.error is not None:
            reason = "it does not exist" if found is None else str(found.error)
            msg = (
                f"cannot produce to topic {self.topic!r}: {reason}; create it with "
                "`python -m clickstream.topics` (locally) or `pulumi up` (Aiven)"
            )
            raise ConfigError(msg)
        return len(found.partitions)

    def send(self, key: bytes, value: bytes) -> bool:
        """Queue one message; True once queued, False if :meth:`cancel` interrupted a wait.

        When the local queue is full this polls (serving delivery callbacks, which frees
        space) until the message fits.

        Raises:
            DeliveryError: the producer hit a fatal error (e.g. lost idempotence state).
        """
        try:
            self._produce(self.topic, value, key)
        except BufferError:
            if not self._send_when_room(key, value):
                return False
        except KafkaException as exc:
            raise DeliveryError(f"cannot produce to {self.topic!r}: {exc.args[0]}") from exc
        self._sent += 1
        if not self._sent % POLL_EVERY:
            self._poll(0)
        return True

    def send_many(self, messages: Iterable[tuple[bytes, bytes, int]]) -> int:
        """Queue each ``(key, value, occurred_ms)`` of ``messages``; return how many were queued.

        The same as :meth:`send` for each message (``occurred_ms`` is not used), in one loop
        without a Python call per message: the unpaced producer's fast path. Returns early only
        when :meth:`cancel` interrupted a wait for queue space (that message is not queued).

        Raises:
            DeliveryError: the producer hit a fatal error (e.g. lost idempotence state).
        """
        produce, poll, topic = self._produce, self._poll, self.topic
        sent = before = self._sent
        try:
            for key, value, _ in messages:
                try:
                    produce(topic, value, key)
                except BufferError:
                    if not self._send_when_room(key, value):
                        break
                sent += 1
                if not sent % POLL_EVERY:
                    poll(0)
        except KafkaException as exc:
            raise DeliveryError(f"cannot produce to {topic!r}: {exc.args[0]}") from exc
        finally:
            self._sent = sent
        return sent - before

    def _send_when_room(self, key: bytes, value: bytes) -> bool:
        began = time.monotonic()
        note_at = began + _WAIT_NOTE_AFTER_S
        while not self._cancelled:
            if self.fatal_error is not None:
                raise DeliveryError(self.fatal_error)
            self._poll(0.05)
            try:
                self._produce(self.topic, value, key)
            except BufferError:
                now = time.monotonic()
                if now >= note_at:
                    note_at = now + _WAIT_NOTE_EVERY_S
                    logger.warning(
                        "the local queue is full (%d messages) and Kafka has acknowledged none "
                        "of them for %.0f s (is the broker down, hung or unreachable?); waiting "
                        "for room. Unacknowledged messages fail after the delivery timeout",
                        len(self._producer),
                        now - began,
                    )
                continue
            if time.monotonic() - began >= _WAIT_NOTE_AFTER_S:
                logger.info("Kafka acknowledges again after %.0f s", time.monotonic() - began)
            return True
        return False

    def poll(self, timeout: float) -> None:
        """Serve delivery callbacks for up to ``timeout`` seconds (use while idle)."""
        self._poll(timeout)

    def cancel(self) -> None:
        """Make a :meth:`send` that waits for queue space give up (safe from a signal handler).

        Also starts the ``stop_grace`` of :meth:`flush`.
        """
        if not self._cancelled:
            self._cancelled_at = time.monotonic()
        self._cancelled = True

    @property
    def in_flight(self) -> int:
        """Messages queued or sent but not yet acknowledged or failed."""
        return len(self._producer)

    def flush(self, *, timeout: float, stop_grace: float | None = None) -> int:
        """Wait up to ``timeout`` seconds for every message's delivery report.

        With ``stop_grace``, the wait also ends that many seconds after :meth:`cancel` (if it
        was or is called): a stop is not held for the whole ``timeout`` by a broker that hangs.
        Messages still undelivered after that are purged and counted as failed, so
        ``stats.delivered + stats.failed`` then equals the number of messages sent (a purged
        message that was already sent may or may not have reached Kafka). Returns the number
        purged.
        """
        began = time.monotonic()
        deadline, note_at = began + timeout, began + _WAIT_NOTE_AFTER_S

        def end() -> float:
            if stop_grace is not None and self._cancelled:
                return min(deadline, self._cancelled_at + stop_grace)
            return deadline

        # In short slices: a signal handler (a second Ctrl-C) only runs between two calls.
        remaining = self._producer.flush(_slice(end()))
        while remaining and time.monotonic() < end():
            remaining = self._producer.flush(_slice(end()))
            now = time.monotonic()
            if remaining and now >= note_at:
                note_at = now + _WAIT_NOTE_EVERY_S
                logger.warning(
                    "still waiting for %d delivery report(s) from Kafka after %.0f s (is the "
                    "broker down, hung or unreachable?); at most %.0f s more",
                    remaining,
                    now - began,
                    max(end() - now, 0.0),
                )
        if remaining:
            if end() < deadline:
                logger.warning(
                    "%d message(s) to %s still unacknowledged %.1f s after the stop (the stop's "
                    "grace): purging them; those already sent may or may not have reached Kafka",
                    remaining,
                    self.topic,
                    time.monotonic() - self._cancelled_at,
                )
            else:
                logger.warning(
                    "%d message(s) to %s still undelivered after %.1f s: purging them",
                    remaining,
                    self.topic,
                    timeout,
                )
            self._producer.purge()
            self._producer.flush(5.0)
        return remaining

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is None:  # not reported with delivery.report.only.error; counted by subtraction
            return
        self._failed += 1
        name = error.name()
        self._errors[name] = self._errors.get(name, 0) + 1
        if self._failed <= _MAX_LOGGED_FAILURES:
            partition = message.partition()
            where = message.topic() or self.topic
            if partition is not None and partition >= 0:  # none yet when it never got that far
                where = f"{where}[{partition}]"
            logger.error("delivery to %s failed (key %r): %s", where, message.key(), error.str())
            if self._failed == _MAX_LOGGED_FAILURES:
                logger.error("further delivery failures are counted, not logged")

    def _on_error(self, error: KafkaError) -> None:
        # Client-level errors (all brokers down, authentication, ...): librdkafka retries by
        # itself; only a fatal one (the idempotent producer's state is lost) ends the run.
        if error.fatal():
            self.fatal_error = f"fatal Kafka producer error: {error.str()}"
            logger.error("%s", self.fatal_error)
            return
        text, now = error.str(), time.monotonic()
        if text != self._last_warning or now - self._last_warning_at > _REPEAT_WARNING_S:
            logger.warning("Kafka: %s", text)
            self._last_warning, self._last_warning_at = text, now

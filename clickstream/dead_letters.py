"""Kafka adapter for the dead-letter topic: invalid input is kept, never dropped.

:class:`KafkaDeadLetterSink` writes the letters (the consumer's side). :func:`read_letters`
and ``python -m clickstream.dead_letters`` read them back, to see what was refused and why.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from clickstream.cli import add_log_level, configure_logging, number, whole_number
from clickstream.errors import ConfigError, DeliveryError, TransientError
from clickstream.kafka import (
    DLQ_MAX_MESSAGE_BYTES,
    kafka_client_config,
    librdkafka_logger,
    require_topic,
)
from clickstream.pipeline import DeadLetter
from clickstream.settings import Settings, load_settings

__all__ = [
    "FALLBACK_VALUE_BYTES",
    "MAX_KEY_BYTES",
    "KafkaDeadLetterSink",
    "StoredLetter",
    "fit",
    "main",
    "read_letters",
    "render_letter",
]

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

_log = logging.getLogger("clickstream.dead_letters")  # also when run as __main__


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


# -- reading the letters back ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class StoredLetter:
    """A dead letter as the topic holds it: where it is, and the message as sent."""

    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str | None:
        """The first header called ``name``, as text (``None`` if absent)."""
        for found, raw in self.headers:
            if found == name:
                return raw.decode("utf-8", "replace")
        return None

    @property
    def reason(self) -> str:
        """The reason code (``not_json``, ``schema``, ...); ``?`` on a message without one."""
        return self.header("reason") or "?"


def _text(raw: bytes | None, limit: int | None = None) -> str:
    if raw is None:
        return "(none)"
    shown = raw if limit is None else raw[:limit]
    text = repr(shown.decode("utf-8", "backslashreplace"))
    return text if limit is None or len(raw) <= limit else f"{text}... ({len(raw):,} bytes)"


def render_letter(letter: StoredLetter, *, value_chars: int = 300) -> str:
    """Three or four lines for a terminal: position, reason, origin, detail, the key and value."""
    when = (
        datetime.fromtimestamp(letter.timestamp_ms / 1000, UTC).isoformat(timespec="seconds")
        if letter.timestamp_ms is not None
        else "?"
    )
    source = (
        f"{letter.header('source_topic')}[{letter.header('source_partition')}]"
        f"@{letter.header('source_offset')}"
    )
    extra = [
        f"{name}={raw.decode('utf-8', 'replace')}"
        for name, raw in letter.headers
        if name not in {"reason", "detail", "source_topic", "source_partition", "source_offset"}
    ]
    lines = [
        f"[{letter.partition}]@{letter.offset}  {when}  {letter.reason}  from {source}"
        + (f"  ({', '.join(extra)})" if extra else ""),
        f"    {letter.header('detail') or '(no detail)'}",
        f"    key {_text(letter.key, 200)}",
        f"    value {_text(letter.value, value_chars)}",
    ]
    return "\n".join(lines)


def letter_json(letter: StoredLetter) -> dict[str, Any]:
    """``letter`` as one JSON object: the headers by name, key and value as text."""
    return {
        "partition": letter.partition,
        "offset": letter.offset,
        "timestamp_ms": letter.timestamp_ms,
        "headers": {name: raw.decode("utf-8", "replace") for name, raw in letter.headers},
        "key": None if letter.key is None else letter.key.decode("utf-8", "backslashreplace"),
        "value": None if letter.value is None else letter.value.decode("utf-8", "backslashreplace"),
        "value_bytes": None if letter.value is None else len(letter.value),
    }


def read_letters(
    settings: Settings, *, last: int | None, timeout: float = 30.0
) -> Iterator[StoredLetter]:
    """The letters on the dead-letter topic now, oldest first per partition.

    Reads without a consumer group (nothing is committed; the consumer is not disturbed) up
    to the end each partition had when the call started. ``last`` keeps, per partition, only
    that many of the newest letters.

    Raises:
        ConfigError: the topic does not exist, or this client may not read it.
        TransientError: Kafka did not answer within ``timeout`` seconds.
    """
    consumer = Consumer(
        {
            **kafka_client_config(settings),
            # Never used for commits: the partitions are assigned, not subscribed.
            "group.id": f"clickstream-dead-letters-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "client.id": "clickstream-dead-letters-reader",
            "logger": librdkafka_logger(),
        }
    )
    topic = settings.dlq_topic
    try:
        require_topic(
            consumer, topic, what="dead-letter", setting="CLICKSTREAM_DLQ_TOPIC", timeout=timeout
        )
        partitions = sorted(consumer.list_topics(topic, timeout=timeout).topics[topic].partitions)
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for partition in partitions:
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=timeout
                )
            except KafkaException as exc:
                raise _read_error(topic, exc) from exc
            start = low if last is None else max(low, high - last)
            if start < high:
                ends[partition] = high
                starts.append(TopicPartition(topic, partition, start))
        if not starts:
            return
        consumer.assign(starts)
        deadline = time.monotonic() + timeout
        while ends:
            message = consumer.poll(0.5)
            if message is None:
                if time.monotonic() > deadline:
                    msg = f"no dead letter arrived from {topic} within {timeout:g} s"
                    raise TransientError(msg)
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise _read_error(topic, KafkaException(error))
            deadline = time.monotonic() + timeout
            partition, offset = message.partition(), message.offset()
            if partition is None or offset is None or partition not in ends:
                continue
            kind, stamp = message.timestamp()
            yield StoredLetter(
                partition=partition,
                offset=offset,
                timestamp_ms=stamp if kind != 0 else None,
                key=_as_bytes(message.key()),
                value=_as_bytes(message.value()),
                headers=_headers(message.headers()),
            )
            if offset + 1 >= ends[partition]:
                del ends[partition]
    finally:
        consumer.close()


def _headers(
    raw: dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None,
) -> tuple[tuple[str, bytes], ...]:
    # A consumed message's headers are a list of pairs (names may repeat); typed more loosely.
    pairs = raw.items() if isinstance(raw, dict) else raw or ()
    return tuple((name, _as_bytes(value) or b"") for name, value in pairs)


def _as_bytes(raw: str | bytes | None) -> bytes | None:
    return raw.encode() if isinstance(raw, str) else raw


def _read_error(topic: str, exc: KafkaException) -> ConfigError | TransientError:
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError) and error.code() in (
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    ):
        msg = (
            f"this client may not read the dead-letter topic {topic} ({error.str()}): use "
            "the consumer's credentials (CLICKSTREAM_KAFKA_SSL_*; the Pulumi stack grants "
            "them Read on it), or a user granted Read on the topic"
        )
        return ConfigError(msg)
    return TransientError(f"cannot read the dead-letter topic {topic}: {exc}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clickstream.dead_letters",
        description=(
            "Show the dead letters: the messages the consumer refused, kept on the dead-letter "
            "topic with their original key and bytes, the reason, a detail naming the field, "
            "and where each came from (topic, partition, offset). Reads without a consumer "
            "group, so nothing is committed and the consumer is not disturbed."
        ),
        epilog=(
            "examples:\n"
            "  python -m clickstream.dead_letters                  # the newest 20 per partition\n"
            "  python -m clickstream.dead_letters --all --reason schema\n"
            "  python -m clickstream.dead_letters --all --json > dead-letters.ndjson\n\n"
            "Reason codes: not_json, schema, too_large, future_timestamp, rejected_by_sink.\n"
            "Exit status: 0 success, 2 configuration error (missing topic, no permission), "
            "3 Kafka did not answer."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--last",
        type=whole_number(1),
        default=20,
        metavar="N",
        help="the newest N letters of each partition (default 20)",
    )
    which.add_argument("--all", action="store_true", help="every letter the topic holds")
    parser.add_argument("--reason", help="only letters with this reason code")
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per letter (headers, key, value)"
    )
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (host:port,...)")
    parser.add_argument(
        "--dlq-topic", help="dead-letter topic (default $CLICKSTREAM_DLQ_TOPIC or its default)"
    )
    parser.add_argument(
        "--timeout",
        type=number(0.1, 3600),
        default=30.0,
        help="seconds to wait for Kafka, 0.1 to 3600 (default 30)",
    )
    add_log_level(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m clickstream.dead_letters``; returns the exit status."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = load_settings(
            role="consumer",
            overrides={
                "kafka_bootstrap_servers": args.bootstrap_servers,
                "dlq_topic": args.dlq_topic,
            },
        )
    except ConfigError as exc:
        _log.error("%s", exc)
        return 2
    shown, reasons = 0, Counter[str]()
    try:
        for letter in read_letters(
            settings, last=None if args.all else args.last, timeout=args.timeout
        ):
            reasons[letter.reason] += 1
            if args.reason is not None and letter.reason != args.reason:
                continue
            shown += 1
            if args.json:
                sys.stdout.write(json.dumps(letter_json(letter), ensure_ascii=False) + "\n")
            else:
                sys.stdout.write(render_letter(letter) + "\n")
    except ConfigError as exc:
        _log.error("%s", exc)
        return 2
    except TransientError as exc:
        _log.error("%s (Kafka at %s)", exc, settings.kafka_bootstrap_servers)
        return 3
    read = sum(reasons.values())
    by_reason = ", ".join(f"{name} {count}" for name, count in sorted(reasons.items()))
    scope = "all" if args.all else f"the newest {args.last} per partition"
    _log.info(
        "%d dead letter(s) shown, of %d read from %s (%s)%s",
        shown,
        read,
        settings.dlq_topic,
        scope,
        f"; by reason: {by_reason}" if by_reason else "",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Kafka adapter for the dead-letter topic: invalid input is kept, never dropped.

:class:`KafkaDeadLetterSink` writes the letters (the consumer's side). :func:`read_letters`
and ``python -m clickstream.dead_letters`` read them back, to see what was refused and why,
and ``--replay`` sends the letters that can succeed again back to the events topic
(:class:`ReplayPolicy` decides which, :class:`EventsReplayer` sends them).
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
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from clickstream.analytics import parse_moment
from clickstream.cli import (
    INTERRUPTED,
    Stopped,
    add_log_level,
    configure_logging,
    number,
    stop_on_signals,
    whole_number,
)
from clickstream.errors import ConfigError, DeliveryError, InvalidEvent, TransientError
from clickstream.events import Reason, decode_event
from clickstream.kafka import (
    DLQ_MAX_MESSAGE_BYTES,
    ask_in_slices,
    kafka_client_config,
    librdkafka_logger,
    list_topics,
    require_topic,
)
from clickstream.pipeline import DeadLetter
from clickstream.search.sink import REJECTED_REASON
from clickstream.settings import KAFKA_CONNECTION_FIELDS, SETTING_FLAGS, Settings, load_settings

__all__ = [
    "FALLBACK_VALUE_BYTES",
    "MAX_KEY_BYTES",
    "NEVER_AGAIN_REASONS",
    "READER_GROUP_PREFIX",
    "REPLAYABLE_REASONS",
    "REPLAYED_FROM_HEADER",
    "EventsReplayer",
    "KafkaDeadLetterSink",
    "LetterFilter",
    "ReplayPolicy",
    "ReplaySummary",
    "StoredLetter",
    "fit",
    "letter_json",
    "main",
    "read_letters",
    "render_letter",
]

READER_GROUP_PREFIX: Final = "clickstream-dead-letters-"
"""The reader's consumer group id starts with this (a new id each run, never committed to)."""
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

_WAIT_SLICE_S: Final = 0.5
"""Longest single wait inside librdkafka when reading or replaying: a signal handler runs
only between two such waits."""
_NOTE_AFTER_S: Final = 5.0
"""How long Kafka may stay silent while letters are read before a line says so."""


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
        It never waits: while another thread sends letters (the search outbox's drainer,
        flushing to a broker that does not answer), confluent-kafka would hold this call
        behind that flush, and with it the consume loop; the flush serves the queue anyway.
        """
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._producer.poll(0)
        finally:
            self._lock.release()

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
    settings: Settings,
    *,
    last: int | None,
    timeout: float = 30.0,
    offsets: tuple[int, int] | None = None,
    partition: int | None = None,
) -> Iterator[StoredLetter]:
    """The letters on the dead-letter topic now, oldest first per partition.

    Reads without a consumer group (nothing is committed; the consumer is not disturbed) up
    to the end each partition had when the call started. ``last`` keeps, per partition, only
    that many of the newest letters; ``offsets`` (first, last, both included) only the letters
    at those offsets; ``partition`` reads that partition of the topic only.

    Raises:
        ConfigError: the topic does not exist, or this client may not read it.
        TransientError: Kafka did not answer within ``timeout`` seconds.
    """
    consumer = Consumer(
        {
            **kafka_client_config(settings),
            # Never used for commits: the partitions are assigned, not subscribed. librdkafka
            # still asks for the group's coordinator, which needs Describe on the group: on
            # Aiven, the stack grants it on this prefix (infrastructure/stack.py).
            "group.id": f"{READER_GROUP_PREFIX}{uuid.uuid4()}",
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
        try:
            metadata = list_topics(consumer, topic, timeout=timeout)
        except KafkaException as exc:
            raise _read_error(topic, exc) from exc
        described = metadata.topics[topic]
        if described.error is not None:  # e.g. not authorized: the topic shows no partitions
            raise _read_error(topic, KafkaException(described.error))
        partitions = sorted(described.partitions)
        if partition is not None:
            if partition not in partitions:
                msg = (
                    f"the dead-letter topic {topic} has no partition {partition} "
                    f"(it has {len(partitions)}, from 0)"
                )
                raise ConfigError(msg)
            partitions = [partition]
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for number in partitions:
            low, high = _watermarks(consumer, TopicPartition(topic, number), timeout)
            start, end = _span(low, high, last=last, offsets=offsets)
            if start < end:
                ends[number] = end
                starts.append(TopicPartition(topic, number, start))
        if not starts:
            return
        consumer.assign(starts)
        deadline = time.monotonic() + timeout
        noted = False
        while ends:
            message = consumer.poll(_WAIT_SLICE_S)
            if message is None:
                now = time.monotonic()
                if now > deadline:
                    msg = f"no dead letter arrived from {topic} within {timeout:g} s"
                    raise TransientError(msg)
                if not noted and now - (deadline - timeout) >= _NOTE_AFTER_S:
                    _log.warning(
                        "Kafka has sent no dead letter for %.0f s, with %d partition(s) of %s "
                        "still to read (is the broker hung or unreachable?); giving up after "
                        "%g s (Ctrl-C to stop)",
                        now - (deadline - timeout),
                        len(ends),
                        topic,
                        timeout,
                    )
                    noted = True
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise _read_error(topic, KafkaException(error))
            deadline, noted = time.monotonic() + timeout, False
            number, offset = message.partition(), message.offset()
            if number is None or offset is None or number not in ends:
                continue
            if offset >= ends[number]:  # the offset before the end held no letter (a marker)
                del ends[number]
                continue
            kind, stamp = message.timestamp()
            yield StoredLetter(
                partition=number,
                offset=offset,
                timestamp_ms=stamp if kind != 0 else None,
                key=_as_bytes(message.key()),
                value=_as_bytes(message.value()),
                headers=_headers(message.headers()),
            )
            if offset + 1 >= ends[number]:
                del ends[number]
    finally:
        consumer.close()


def _watermarks(consumer: Consumer, partition: TopicPartition, timeout: float) -> tuple[int, int]:
    """The partition's low and high offsets, asked in short slices (signals are heard)."""

    def timed_out(exc: KafkaException) -> bool:
        error = exc.args[0] if exc.args else None
        return isinstance(error, KafkaError) and error.code() in (
            KafkaError._TIMED_OUT,
            KafkaError._TRANSPORT,
        )

    try:
        low, high = ask_in_slices(
            lambda wait: consumer.get_watermark_offsets(partition, timeout=wait),
            timeout=timeout,
            slice_s=_WAIT_SLICE_S,
            retry=timed_out,
        )
    except KafkaException as exc:
        raise _read_error(partition.topic, exc) from exc
    return int(low), int(high)


def _span(
    low: int, high: int, *, last: int | None, offsets: tuple[int, int] | None
) -> tuple[int, int]:
    """The offsets to read of a partition holding ``low`` to ``high`` (excluded)."""
    if offsets is not None:
        return max(low, offsets[0]), min(high, offsets[1] + 1)
    return (low if last is None else max(low, high - last)), high


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
            f"them Read on it and Describe on the groups {READER_GROUP_PREFIX}*), or a user "
            "granted as much"
        )
        return ConfigError(msg)
    return TransientError(f"cannot read the dead-letter topic {topic}: {exc}")


# -- replaying letters ----------------------------------------------------------------------

REPLAYABLE_REASONS: Final = frozenset(
    {Reason.FUTURE_TIMESTAMP.value, Reason.REJECTED_BY_SINK.value, REJECTED_REASON}
)
"""Reasons that may succeed when the same bytes are sent again: time has passed
(``future_timestamp``), or the sink that refused a valid event was fixed (``rejected_by_sink``:
PostgreSQL, the event was not stored; ``search_rejected``: OpenSearch, the event *was* stored,
and reading it again indexes the stored copy)."""

NEVER_AGAIN_REASONS: Final = frozenset(
    {Reason.NOT_JSON.value, Reason.SCHEMA.value, Reason.TOO_LARGE.value}
)
"""Reasons about the bytes themselves: the same bytes are refused again, whenever sent."""

REPLAYED_FROM_HEADER: Final = "replayed_from"
"""Header of a replayed message: ``<dead-letter topic>[partition]@offset`` of its letter.
The consumer reads no headers, so it treats a replayed message like any other."""

_SESSION_SOURCE: Final = "sessions"  # source_topic of a refused session document


@dataclasses.dataclass(frozen=True, slots=True)
class LetterFilter:
    """Which of the letters read are wanted: a reason code and a window of dead-lettering time.

    ``since`` is included and ``until`` excluded; both are timezone-aware. A letter without a
    timestamp never matches a time bound.
    """

    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, letter: StoredLetter) -> bool:
        """Whether ``letter`` passes every bound that is set."""
        if self.reason is not None and letter.reason != self.reason:
            return False
        if self.since is None and self.until is None:
            return True
        if letter.timestamp_ms is None:
            return False
        when = datetime.fromtimestamp(letter.timestamp_ms / 1000, UTC)
        return (self.since is None or when >= self.since) and (
            self.until is None or when < self.until
        )


@dataclasses.dataclass(slots=True)
class ReplayPolicy:
    """Decides, letter by letter, whether a letter may be sent back to the events topic.

    Pure: the clock is injected, and nothing is sent. It remembers which source messages
    (``source_topic``, ``source_partition``, ``source_offset``) it let through, because dead
    letters are delivered at least once: a second letter of one message is skipped.
    """

    topic: str
    """The events topic the letters go back to; letters from any other source stay."""
    future_tolerance: timedelta
    """The consumer's ``CLICKSTREAM_FUTURE_TOLERANCE_SECONDS``."""
    clock: Callable[[], datetime]
    force: bool = False
    """Also send what the consumer will most likely refuse again (see :meth:`refusal`)."""
    _seen: set[tuple[str, str, str]] = dataclasses.field(default_factory=set, init=False)

    def refusal(self, letter: StoredLetter) -> str | None:
        """``None`` if ``letter`` may be replayed, else why not, as a short phrase.

        Never replayed, even with ``force``: a letter whose value or key was cut
        (``truncated``, ``key_truncated``: the original bytes are gone), a letter from another
        source than :attr:`topic` (a session document OpenSearch refused is not an event), a
        second letter of the same source message. Replayed only with ``force``: the reasons
        of :data:`NEVER_AGAIN_REASONS`, an unknown reason, and a letter the consumer would
        refuse now, as it checks it (an ``occurred_at`` still too far ahead, say).
        """
        if letter.header("truncated") is not None:
            return "truncated"
        if letter.header("key_truncated") is not None:
            return "key_truncated"
        source = letter.header("source_topic")
        if source == _SESSION_SOURCE:
            return "session_document"
        if source != self.topic:
            return "other_topic"
        where = (
            source,
            letter.header("source_partition") or "",
            letter.header("source_offset") or "",
        )
        if where in self._seen:
            return "repeated_letter"
        if not self.force:
            if letter.reason in NEVER_AGAIN_REASONS:
                return "never_again"
            if letter.reason not in REPLAYABLE_REASONS:
                return "unknown_reason"
            try:
                decode_event(letter.value, now=self.clock(), future_tolerance=self.future_tolerance)
            except InvalidEvent as exc:
                return "not_yet" if exc.reason == Reason.FUTURE_TIMESTAMP else "refused_now"
        self._seen.add(where)
        return None


_REFUSALS: Final = {
    "truncated": (
        "value truncated: the dead letter holds only the first bytes of the message (header "
        "original_size); send the original again from its producer"
    ),
    "key_truncated": (
        "key truncated: the dead letter holds only the first bytes of the key; send the "
        "original again from its producer"
    ),
    "session_document": (
        "session documents OpenSearch refused, not events: fix the mapping and let the "
        "consumer write the session again"
    ),
    "other_topic": (
        "from another source topic: replay them with --topic naming it (see the source_topic "
        "header)"
    ),
    "repeated_letter": "another letter of a message already replayed in this run",
    "never_again": (
        "not_json, schema or too_large: the same bytes are refused again; fix them at the "
        "producer (or --force to send them anyway)"
    ),
    "unknown_reason": "an unknown reason code (--force to send them anyway)",
    "not_yet": (
        "occurred_at still more than the future tolerance ahead of this clock: replay them "
        "later (or --force, and they come back as future_timestamp)"
    ),
    "refused_now": (
        "the consumer would refuse them now (python -m clickstream.events --validate says "
        "why; --force to send them anyway)"
    ),
}


@dataclasses.dataclass(slots=True)
class ReplaySummary:
    """What a replay did (or, in a dry run, would do): counts by reason and by refusal."""

    replayed: Counter[str] = dataclasses.field(default_factory=Counter)
    """Letters sent (or that would be), by reason code."""
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)
    """Letters not sent, by what :meth:`ReplayPolicy.refusal` said."""
    undelivered: int = 0
    """Of the letters sent, how many Kafka did not acknowledge."""

    def lines(self, *, topic: str, dry_run: bool) -> list[str]:
        """The summary for the terminal: one line of what was sent, one per kind of refusal."""
        verb = "would replay" if dry_run else "replayed"
        sent = sum(self.replayed.values())
        by_reason = ", ".join(f"{name} {count}" for name, count in sorted(self.replayed.items()))
        lines = [
            f"{verb} {sent} letter(s) to {topic}"
            + (f" ({by_reason})" if by_reason else "")
            + ("; nothing sent (--dry-run)" if dry_run else "")
            + (f"; {self.undelivered} of them NOT delivered" if self.undelivered else "")
        ]
        skipped = sum(self.skipped.values())
        if skipped:
            lines.append(f"skipped {skipped} letter(s):")
            lines += [
                f"  {count} {_REFUSALS.get(why, why)}"
                for why, count in sorted(self.skipped.items())
            ]
        return lines


class EventsReplayer:
    """Sends letters back to the events topic, with their original key and bytes.

    An idempotent producer (``enable.idempotence``, ``acks=all``): the client's own retries
    neither duplicate nor reorder. It uses the partitioner of :mod:`clickstream.producer`
    (``murmur2_random``), so a key lands on the partition that producer gives it. Each message
    carries the header :data:`REPLAYED_FROM_HEADER`.
    """

    def __init__(self, settings: Settings, *, dlq_topic: str, flush_timeout: float = 30.0) -> None:
        """Create the producer for ``settings.topic``."""
        self._topic = settings.topic
        self._dlq_topic = dlq_topic
        self._flush_timeout = flush_timeout
        self._failures: list[str] = []
        self._producer = Producer(
            {
                **kafka_client_config(settings),
                "client.id": "clickstream-dead-letters-replay",
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "partitioner": "murmur2_random",
                "logger": librdkafka_logger(),
            }
        )

    def require_topic(self, timeout: float) -> None:
        """Fail fast, with what to do, when the events topic does not exist.

        Raises:
            ConfigError: the topic is missing (or not visible to this client).
            TransientError: the brokers did not answer.
        """
        require_topic(
            self._producer, self._topic, what="events", setting="CLICKSTREAM_TOPIC", timeout=timeout
        )

    def _on_delivery(self, letter: StoredLetter, error: KafkaError | None, _msg: Message) -> None:
        if error is None:
            return
        hint = ""
        if error.code() in (
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        ):
            hint = " (replays are sent with the producer role's credentials: Write on the topic)"
        self._failures.append(
            f"{self._dlq_topic}[{letter.partition}]@{letter.offset}: "
            f"{error.name()}: {error.str()}{hint}"
        )

    def send(self, letter: StoredLetter) -> None:
        """Queue ``letter``'s key and value for the events topic; :meth:`finish` waits for acks.

        Raises:
            DeliveryError: the client refuses the message for good (the message says why).
        """
        while True:
            try:
                self._producer.produce(
                    self._topic,
                    key=letter.key,
                    value=letter.value,
                    headers=[
                        (
                            REPLAYED_FROM_HEADER,
                            f"{self._dlq_topic}[{letter.partition}]@{letter.offset}".encode(),
                        )
                    ],
                    on_delivery=functools.partial(self._on_delivery, letter),
                )
                break
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:
                msg = f"cannot produce to {self._topic}: {exc}"
                raise DeliveryError(msg) from exc
        self._producer.poll(0)

    def finish(self) -> int:
        """Wait for every acknowledgement; return how many messages were not delivered.

        A message still unacknowledged after the flush timeout counts as not delivered;
        :attr:`failures` says why the others failed.
        """
        deadline = time.monotonic() + self._flush_timeout
        remaining = self._producer.flush(min(_WAIT_SLICE_S, self._flush_timeout))
        if remaining:
            _log.info(
                "waiting up to %g s for Kafka to acknowledge %d replayed message(s) (Ctrl-C "
                "stops; replaying again is safe)",
                self._flush_timeout,
                remaining,
            )
        while remaining and time.monotonic() < deadline:
            remaining = self._producer.flush(min(_WAIT_SLICE_S, deadline - time.monotonic()))
        if remaining:
            self._failures.append(
                f"{remaining} message(s) not acknowledged within {self._flush_timeout:g} s"
            )
        return len(self._failures) - (1 if remaining else 0) + remaining

    @property
    def failures(self) -> list[str]:
        """Why messages were not delivered, one line per message (or per batch timed out)."""
        return list(self._failures)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clickstream.dead_letters",
        description=(
            "Show the dead letters: the messages the consumer refused, kept on the dead-letter "
            "topic with their original key and bytes, the reason, a detail naming the field, "
            "and where each came from (topic, partition, offset). Reads without a consumer "
            "group, so nothing is committed and the consumer is not disturbed.\n\n"
            "With --replay, send the selected letters back to the events topic, key and value "
            "exactly as the consumer received them (idempotent producer, acks=all; header "
            "replayed_from names the letter), so that the consumer reads them again. Replaying "
            "is safe to repeat: the consumer stores an event_id once and counts it once, so "
            "letters replayed twice (or letters whose first replay was stored) change nothing "
            "the second time."
        ),
        epilog=(
            "examples:\n"
            "  python -m clickstream.dead_letters                  # the newest 20 per partition\n"
            "  python -m clickstream.dead_letters --all --reason schema\n"
            "  python -m clickstream.dead_letters --all --json > dead-letters.ndjson\n"
            "  python -m clickstream.dead_letters --replay --all --reason future_timestamp "
            "--dry-run\n"
            "  python -m clickstream.dead_letters --replay --offsets 120-180 "
            "--since 2026-11-30T09:00:00Z\n\n"
            "Reason codes: not_json, schema, too_large, future_timestamp, rejected_by_sink,\n"
            "search_rejected.\n\n"
            "What --replay sends. Letters with reason future_timestamp (time has passed),\n"
            "rejected_by_sink (PostgreSQL refused a valid event: once that is fixed, the event\n"
            "is stored) and search_rejected (OpenSearch refused a stored event: once the\n"
            "mapping is fixed, the consumer, with OpenSearch on, indexes the stored copy when it\n"
            "reads the event again), and only if the consumer would accept them now (it checks\n"
            "them as the consumer does, with CLICKSTREAM_FUTURE_TOLERANCE_SECONDS). Skipped:\n"
            "not_json, schema and too_large (the same bytes are refused again: fix them at the\n"
            "producer; --force sends them anyway, as it does letters of an unknown reason or\n"
            "refused now); never sent, even with --force: a letter whose value or key was cut\n"
            "(header truncated or key_truncated: the original bytes are gone), a letter from\n"
            "another source topic than --topic (session documents included), and a second\n"
            "letter of one source message. --replay needs a scope: --all, --last N or\n"
            "--offsets.\n\n"
            "Credentials: reading uses the consumer role (Read on the dead-letter topic),\n"
            "sending the producer role (Write on the events topic); with the Pulumi stack\n"
            "outputs, each comes from its own certificate.\n\n"
            "Exit status: 0 success, 1 a replayed message was not delivered (run it again: the\n"
            "consumer ignores what it already stored), 2 configuration error (missing topic, no\n"
            "permission), 3 Kafka did not answer, 130 stopped by SIGINT/SIGTERM (a replay may\n"
            "have sent part of the letters: run it again, it is safe)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--last",
        type=whole_number(1),
        metavar="N",
        help="the newest N letters of each partition (default 20 when showing)",
    )
    which.add_argument("--all", action="store_true", help="every letter the topic holds")
    which.add_argument(
        "--offsets",
        type=_offset_range,
        metavar="FIRST[-LAST]",
        help="the letters at these offsets of the dead-letter topic (both included), as the "
        "listing shows them ([partition]@offset)",
    )
    parser.add_argument(
        "--partition",
        type=whole_number(0),
        help="only this partition of the dead-letter topic (it has one, as created by "
        "clickstream.topics and Pulumi)",
    )
    parser.add_argument("--reason", help="only letters with this reason code")
    parser.add_argument(
        "--since",
        type=_moment,
        metavar="TIME",
        help="only letters dead-lettered at or after TIME (RFC 3339, e.g. 2026-11-30T09:00:00Z)",
    )
    parser.add_argument(
        "--until",
        type=_moment,
        metavar="TIME",
        help="only letters dead-lettered before TIME (RFC 3339)",
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per letter (headers, key, value)"
    )
    replay = parser.add_argument_group("replay")
    replay.add_argument(
        "--replay",
        action="store_true",
        help="send the selected letters that can succeed back to the events topic",
    )
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="with --replay: count what would be sent, by reason, and send nothing",
    )
    replay.add_argument(
        "--force",
        action="store_true",
        help="with --replay: also send not_json, schema, too_large, unknown reasons and "
        "letters the consumer would refuse now (they come back as dead letters)",
    )
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (host:port,...)")
    parser.add_argument(
        "--dlq-topic", help="dead-letter topic (default $CLICKSTREAM_DLQ_TOPIC or its default)"
    )
    parser.add_argument(
        "--topic", help="events topic replays go to (default $CLICKSTREAM_TOPIC or its default)"
    )
    parser.add_argument(
        "--timeout",
        type=number(0.1, 3600),
        default=30.0,
        help="seconds to wait for Kafka, 0.1 to 3600 (default 30)",
    )
    add_log_level(parser)
    return parser


def _offset_range(text: str) -> tuple[int, int]:
    first, sep, last = text.partition("-")
    try:
        low = int(first)
        high = int(last) if sep else low
    except ValueError:
        msg = f"expected FIRST or FIRST-LAST (offsets, whole numbers), got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not 0 <= low <= high:
        msg = f"expected 0 <= FIRST <= LAST, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return low, high


def _moment(text: str) -> datetime:
    try:
        return parse_moment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m clickstream.dead_letters``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.replay and (args.dry_run or args.force):
        parser.error("--dry-run and --force go with --replay")
    if args.replay and args.json:
        parser.error("--json shows letters; it does not go with --replay")
    if args.replay and not (args.all or args.last is not None or args.offsets is not None):
        parser.error("--replay needs a scope: --all, --last N or --offsets FIRST[-LAST]")
    configure_logging(args.log_level)
    overrides = {
        "kafka_bootstrap_servers": args.bootstrap_servers,
        "dlq_topic": args.dlq_topic,
        "topic": args.topic,
    }
    try:
        # Reading needs the connection and the dead-letter topic; a replay also checks each
        # letter against the consumer's rules and sends to the events topic.
        uses = KAFKA_CONNECTION_FIELDS | {"dlq_topic"}
        if args.replay:
            uses |= {"topic", "future_tolerance_seconds"}
        command = "clickstream.dead_letters"
        settings = load_settings(
            role="consumer", overrides=overrides, uses=uses, command=command, flags=SETTING_FLAGS
        )
        # Least privilege: the consumer's user may read the dead letters, the producer's may
        # write the events topic; no user of the stack holds both. A dry run sends nothing.
        sending = args.replay and not args.dry_run
        sender = (
            load_settings(
                role="producer",
                overrides=overrides,
                uses=uses,
                command=command,
                flags=SETTING_FLAGS,
            )
            if sending
            else None
        )
    except ConfigError as exc:
        _log.error("%s", exc)
        return 2
    letters = read_letters(
        settings,
        last=None if args.all or args.offsets is not None else (args.last or 20),
        timeout=args.timeout,
        offsets=args.offsets,
        partition=args.partition,
    )
    wanted = LetterFilter(reason=args.reason, since=args.since, until=args.until)
    try:
        with stop_on_signals():
            if not args.replay:
                _show(letters, wanted, settings=settings, args=args)
                return 0
            return _replay(letters, wanted, settings=sender or settings, args=args)
    except Stopped as exc:
        if args.replay and not args.dry_run:
            _log.error(
                "%s: the letters replayed so far may or may not have reached %s; run the same "
                "replay again (the consumer stores and counts an event_id once)",
                exc,
                (sender or settings).topic,
            )
        else:
            _log.error("%s before every letter was read (reading changes nothing)", exc)
        return INTERRUPTED
    except ConfigError as exc:
        _log.error("%s", exc)
        return 2
    except TransientError as exc:
        _log.error("%s (Kafka at %s)", exc, settings.kafka_bootstrap_servers)
        return 3
    except DeliveryError as exc:
        _log.error("%s", exc)
        return 1


def _show(
    letters: Iterator[StoredLetter],
    wanted: LetterFilter,
    *,
    settings: Settings,
    args: argparse.Namespace,
) -> None:
    shown, reasons = 0, Counter[str]()
    for letter in letters:
        reasons[letter.reason] += 1
        if not wanted.matches(letter):
            continue
        shown += 1
        if args.json:
            sys.stdout.write(json.dumps(letter_json(letter), ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(render_letter(letter) + "\n")
    read = sum(reasons.values())
    by_reason = ", ".join(f"{name} {count}" for name, count in sorted(reasons.items()))
    _log.info(
        "%d dead letter(s) shown, of %d read from %s (%s)%s",
        shown,
        read,
        settings.dlq_topic,
        _scope(args),
        f"; by reason: {by_reason}" if by_reason else "",
    )


def _scope(args: argparse.Namespace) -> str:
    if args.all:
        return "all"
    if args.offsets is not None:
        return f"offsets {args.offsets[0]}-{args.offsets[1]}"
    return f"the newest {args.last or 20} per partition"


def _replay_one(
    letter: StoredLetter,
    policy: ReplayPolicy,
    replayer: EventsReplayer | None,
    summary: ReplaySummary,
    *,
    dlq_topic: str,
) -> None:
    position = f"{dlq_topic}[{letter.partition}]@{letter.offset}"
    why = policy.refusal(letter)
    if why is not None:
        summary.skipped[why] += 1
        _log.debug("skipped %s (%s): %s", position, letter.reason, why)
        return
    if replayer is not None:
        replayer.send(letter)
    summary.replayed[letter.reason] += 1
    _log.debug(
        "%s %s (%s)", "would replay" if replayer is None else "replaying", position, letter.reason
    )


def _replay(
    letters: Iterator[StoredLetter],
    wanted: LetterFilter,
    *,
    settings: Settings,
    args: argparse.Namespace,
) -> int:
    """Send the wanted, replayable letters to ``settings.topic``; print the summary."""
    policy = ReplayPolicy(
        topic=settings.topic,
        future_tolerance=timedelta(seconds=settings.future_tolerance_seconds),
        clock=lambda: datetime.now(UTC),
        force=args.force,
    )
    replayer = None
    if not args.dry_run:
        replayer = EventsReplayer(
            settings, dlq_topic=settings.dlq_topic, flush_timeout=args.timeout
        )
        replayer.require_topic(args.timeout)
    summary = ReplaySummary()
    try:
        for letter in letters:
            if wanted.matches(letter):
                _replay_one(letter, policy, replayer, summary, dlq_topic=settings.dlq_topic)
    finally:
        # Also when reading failed half-way: what was queued is delivered and counted.
        summary.undelivered = replayer.finish() if replayer is not None else 0
        for line in summary.lines(topic=settings.topic, dry_run=args.dry_run):
            sys.stdout.write(line + "\n")
    if replayer is not None and summary.undelivered:
        _log.error(
            "%d replayed message(s) were not delivered to %s (%s); run the same command "
            "again: the consumer stores and counts an event_id once, however often it is sent",
            summary.undelivered,
            settings.topic,
            "; ".join(replayer.failures[:3]),
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

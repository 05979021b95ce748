"""``python -m clickstream.consume``: validate, sessionize and store every event exactly once.

Reads the events topic in batches, stores events, ``traffic_minute`` and sessions in the SQL
database (and OpenSearch when configured), dead-letters invalid input, and commits Kafka offsets
only after every sink committed. See :mod:`clickstream.pipeline` for the order of effects.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, Final, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import DBAPIError

from clickstream.cli import WaitWatch, add_log_level, configure_logging
from clickstream.db import make_engine, refusal_error
from clickstream.db.models import Base
from clickstream.dead_letters import KafkaDeadLetterSink
from clickstream.errors import ClickstreamError, ConfigError, TransientError
from clickstream.kafka import kafka_client_config, librdkafka_logger, require_topic
from clickstream.pipeline import (
    BatchProcessor,
    BatchReport,
    DeadLetter,
    SearchIndex,
    StoredBatch,
)
from clickstream.settings import SETTING_FLAGS, Settings, load_settings
from clickstream.store import SessionRules
from clickstream.threads import in_daemon_thread

__all__ = ["ConsumerOptions", "main", "run"]

_log = logging.getLogger("clickstream.consume")

_MAX_BACKOFF_SECONDS = 30.0

_T = TypeVar("_T")

_MAX_BATCH_SIZE: Final = 10_000
"""A batch's transaction holds one advisory lock per visitor in it, and PostgreSQL's shared lock
table holds ``max_locks_per_transaction`` (64) times the connection slots for all sessions: a
few thousand on a small server. Batches of 5,000 measured no faster than 2,000."""
_SESSION_TIMEOUT_RANGE: Final = (6.0, 1800.0)
"""What a broker with default settings accepts (``group.min/max.session.timeout.ms``)."""
_HEARTBEAT_INTERVAL_MS: Final = 1000
"""The consumer's heartbeat, well under the shortest session timeout (6 s)."""
_MAX_INTERVAL: Final = 86400.0
_KAFKA_WAIT_SLICE: Final = 2.0
"""Seconds per metadata request while waiting for Kafka at start: a signal is heard between
slices (the client keeps connecting in the background across them)."""
_KAFKA_NOTE_INTERVAL: Final = 10.0
_COMMIT_NOTE_INTERVAL: Final = 30.0
"""How often a commit that Kafka does not answer is reported while the loop waits for it."""
_COMMIT_SLICE: Final = 0.2
"""Seconds per wait for a commit: a stop signal is acted on between slices."""
_STALL_HINT: Final = (
    "Is the service hung or cut off? Nothing is committed until it is done, so nothing is "
    "lost; a stop signal exits within --stop-grace seconds and 5 more"
)
_DEFAULT_STOP_GRACE: Final = 10.0
_STOP_MARGIN: Final = 5.0
"""Seconds past the grace before a stop that has not finished exits (see :class:`_Stop`)."""
_MAX_STOP_GRACE: Final = 3600.0

_MAX_SEARCH_SYNC_INTERVAL: Final = 3600.0
_DEFAULT_SEARCH_SYNC_INTERVAL: Final = 5.0
"""Seconds between outbox drains: the session index refreshes every 5 s, so documents written
more often would not become searchable sooner."""


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """How the loop behaves (as opposed to where it connects, which is :class:`Settings`)."""

    batch_size: int = 2000
    poll_timeout: float = 0.25
    search_sync_interval: float = _DEFAULT_SEARCH_SYNC_INTERVAL
    exit_when_idle: float | None = None
    progress_interval: float = 10.0
    opensearch: bool = True
    session_timeout: float = 45.0
    stop_grace: float = _DEFAULT_STOP_GRACE
    """After a stop signal, how long Kafka has to answer the pending offset commits and the
    group's leave before the consumer exits without them (see :class:`_Committer`)."""


class _Stop:
    """Set by SIGINT/SIGTERM (or a test); the loop finishes its batch and exits.

    A second signal exits at once with status 130, committing nothing more: the batch in
    progress is redelivered to the next consumer of the group, as after a crash. So does a
    stop that has not finished :data:`_STOP_MARGIN` seconds after ``grace`` (``--stop-grace``),
    with status 0: a service that does not answer (a hung PostgreSQL holds the batch's
    transaction with no time limit the client can enforce) cannot keep the process.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.grace = _DEFAULT_STOP_GRACE
        self._watchdog: threading.Timer | None = None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.event.is_set():
            _log.warning(
                "received %s again: exiting at once (status 130); the batch in progress is "
                "not committed and will be consumed again",
                name,
            )
            logging.shutdown()
            os._exit(130)
        _log.info("received %s: finishing the current batch (a second signal exits at once)", name)
        self.event.set()
        self._watchdog = threading.Timer(self.grace + _STOP_MARGIN, self._overrun, args=(name,))
        self._watchdog.daemon = True
        self._watchdog.start()

    def _overrun(self, name: str) -> None:
        _log.warning(
            "still not stopped %.0fs after %s: a service does not answer (PostgreSQL, "
            "OpenSearch or Kafka). Exiting without the batch in progress (status 0): it is not "
            "committed and will be consumed again",
            self.grace + _STOP_MARGIN,
            name,
        )
        logging.shutdown()
        os._exit(0)

    def disarm(self) -> None:
        """The stop finished: no overrun exit."""
        if self._watchdog is not None:
            self._watchdog.cancel()


class _Stopped(Exception):
    """A signal arrived while the consumer was still waiting for a service at start."""


def _backoff(attempt: int) -> float:
    return float(min(_MAX_BACKOFF_SECONDS, 0.5 * 2 ** min(attempt, 6)))


def _check_schema(engine: Engine, stop: threading.Event) -> None:
    """Wait for the database, then require every table and column this version writes.

    Raises:
        ConfigError: the schema is missing or behind (``alembic upgrade head`` mends it), or
            the server refused the connection for good (a wrong password, no such database).
        _Stopped: a signal arrived while the database was unavailable.
    """
    attempt = 0
    while True:
        try:
            missing = _schema_gaps(engine)
        except DBAPIError as exc:
            refused = refusal_error(exc)
            if refused is not None:
                raise refused from exc
            if stop.is_set():
                raise _Stopped from exc
            delay = _backoff(attempt)
            _log.warning("database unavailable (%s); retrying in %.1fs", exc.orig, delay)
            if stop.wait(delay):
                raise _Stopped from exc
            attempt += 1
            continue
        if stop.is_set():
            raise _Stopped
        if missing:
            msg = (
                f"the database schema is missing or older than this version (no {missing}): "
                "run `alembic upgrade head` first (it reads CLICKSTREAM_DATABASE_URL)"
            )
            raise ConfigError(msg)
        return


def _schema_gaps(engine: Engine) -> str:
    """The tables and columns of the models that the database lacks, as text ('' if none)."""
    inspector = inspect(engine)
    present = set(inspector.get_table_names())
    tables = [t for t in Base.metadata.sorted_tables if t.name not in present]
    gaps = [f"table {', '.join(sorted(t.name for t in tables))}"] if tables else []
    columns: list[str] = []
    for table in sorted(Base.metadata.sorted_tables, key=lambda t: t.name):
        if table.name in present:
            have = {c["name"] for c in inspector.get_columns(table.name)}
            columns += [f"{table.name}.{c.name}" for c in table.columns if c.name not in have]
    if columns:
        gaps.append(f"column {', '.join(columns)}")
    return "; ".join(gaps)


def _build_search(settings: Settings, stop: threading.Event) -> SearchIndex:
    from clickstream.search import SearchSink, ensure_search_setup, make_client  # noqa: PLC0415

    client = make_client(settings.opensearch_url.get_secret_value())
    attempt = 0
    while True:
        try:
            ensure_search_setup(
                client,
                prefix=settings.opensearch_index_prefix,
                shards=settings.opensearch_shards,
                replicas=settings.opensearch_replicas,
                retention_days=settings.opensearch_retention_days,
            )
            break
        except TransientError as exc:
            if stop.is_set():
                raise _Stopped from exc
            delay = _backoff(attempt)
            _log.warning("OpenSearch unavailable (%s); retrying in %.1fs", exc, delay)
            if stop.wait(delay):
                raise _Stopped from exc
            attempt += 1
    sink: SearchIndex = SearchSink(client, prefix=settings.opensearch_index_prefix)
    return sink


class _Progress:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.total = BatchReport()
        self.started = time.monotonic()
        self._last = self.started
        self._last_consumed = 0

    def maybe_log(self, consumer: Consumer | None, *, force: bool = False) -> None:
        """Log the totals, the rate and the lag (unknown without ``consumer``) once per interval."""
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        rate = (self.total.consumed - self._last_consumed) / max(now - self._last, 1e-9)
        _log.info(
            "consumed=%d stored=%d duplicates=%d dead_lettered=%d search_rejected=%d rate=%.0f/s "
            "lag=%s",
            self.total.consumed,
            self.total.stored,
            self.total.duplicates,
            self.total.dead_lettered,
            self.total.search_rejected,
            rate,
            None if consumer is None else _lag(consumer, cached=True),
        )
        self._last, self._last_consumed = now, self.total.consumed


def _lag(consumer: Consumer, *, cached: bool = False) -> int | None:
    """Messages between the consumer's positions and the high watermarks of its partitions.

    ``cached`` uses the high watermarks of the last fetch responses (free, good enough for a
    progress line); otherwise the brokers are asked, which waits behind an in-flight fetch.
    """
    try:
        assignment = consumer.assignment()
        if not assignment:
            return None
        total = 0
        for position in consumer.position(assignment):
            _low, high = consumer.get_watermark_offsets(position, timeout=5, cached=cached)
            offset = position.offset
            if offset < 0:  # no position yet: fall back to the committed offset
                # Briefly for a progress line: it must not hold a stop behind a hung broker.
                wait = 1 if cached else 5
                committed = consumer.committed([position], timeout=wait)[0].offset
                offset = max(committed, 0)
            total += max(high - offset, 0)
    except KafkaException:
        return None
    return total


def _offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    nxt: dict[tuple[str, int], int] = {}
    for message in messages:
        key = (message.topic() or "", message.partition() or 0)
        nxt[key] = max(nxt.get(key, 0), (message.offset() or 0) + 1)
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in nxt.items()]


def _rewind(consumer: Consumer, messages: Sequence[Message]) -> None:
    first: dict[tuple[str, int], int] = {}
    for message in messages:
        key = (message.topic() or "", message.partition() or 0)
        offset = message.offset() or 0
        first[key] = min(first.get(key, offset), offset)
    for (topic, partition), offset in first.items():
        try:
            consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:  # revoked meanwhile: its new owner re-reads it
            _log.info("not rewinding %s[%d]: %s", topic, partition, exc)


def run(
    settings: Settings,
    options: ConsumerOptions,
    *,
    stop: threading.Event | None = None,
) -> BatchReport:
    """Consume until stopped (or idle, with ``exit_when_idle``); return the totals.

    Waits for PostgreSQL, OpenSearch (when on) and Kafka at start; ``stop`` set meanwhile
    returns empty totals (a clean stop, nothing consumed).

    Raises:
        ConfigError: the database schema is missing or behind, a topic is missing, librdkafka
            refuses its configuration, or another setting is wrong.
        KafkaException: a fatal Kafka error.
    """
    stop = stop or threading.Event()
    kafka_config = kafka_client_config(settings)  # half-configured TLS: stop before any wait
    engine = make_engine(
        settings.database_url.get_secret_value(),
        application_name="clickstream-consume",
        statement_timeout_s=120,
        must_exist=True,
    )
    consumer: Consumer | None = None
    dead_letters: KafkaDeadLetterSink | None = None
    try:
        # The clients first: librdkafka checks its configuration (TLS material) as it starts.
        consumer = _kafka_client(
            lambda: Consumer(
                {
                    **kafka_config,
                    "group.id": settings.consumer_group,
                    "client.id": "clickstream-consumer",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "partition.assignment.strategy": "cooperative-sticky",
                    "isolation.level": "read_committed",
                    "session.timeout.ms": round(options.session_timeout * 1000),
                    # Members learn of a rebalance from a heartbeat's answer, and a cooperative
                    # one takes two rounds: at the default 3 s, a joining consumer sat idle for
                    # about 6 s before it got partitions; at 1 s, about 2 s.
                    "heartbeat.interval.ms": _HEARTBEAT_INTERVAL_MS,
                    "logger": librdkafka_logger(),
                }
            )
        )
        dead_letters = _kafka_client(lambda: KafkaDeadLetterSink(settings))
        _check_schema(engine, stop)
        search = (
            _build_search(settings, stop)
            if options.opensearch and settings.opensearch_enabled
            else None
        )
        events_client = consumer
        _wait_for_kafka(
            lambda timeout: require_topic(
                events_client,
                settings.topic,
                what="events",
                setting="CLICKSTREAM_TOPIC",
                timeout=timeout,
            ),
            settings,
            stop,
        )
        _wait_for_kafka(dead_letters.require_topic, settings, stop)
    except _Stopped:
        _log.info("stopped while waiting for the services at start: nothing consumed")
        _close(consumer, dead_letters, engine)
        return BatchReport()
    except BaseException:
        _close(consumer, dead_letters, engine)
        raise
    processor = BatchProcessor(
        engine=engine,
        rules=SessionRules(
            gap=timedelta(seconds=settings.session_gap_seconds),
            max_length=timedelta(seconds=settings.session_max_seconds),
        ),
        clock=lambda: datetime.now(UTC),
        future_tolerance=timedelta(seconds=settings.future_tolerance_seconds),
        dead_letters=dead_letters,
        search=search,
    )
    progress = _Progress(options.progress_interval)
    committer = _Committer(consumer, stop, grace=options.stop_grace)
    inflight = _Inflight(committer, processor, progress) if search is not None else None
    on_revoke = inflight.on_revoke if inflight is not None else _on_revoke
    consumer.subscribe([settings.topic], on_assign=_on_assign, on_revoke=on_revoke)
    _log.info(
        "consuming %s as group %s into %s%s",
        settings.topic,
        settings.consumer_group,
        engine.url.render_as_string(hide_password=True),
        " and OpenSearch" if search else "",
    )
    try:
        _loop(
            consumer,
            processor,
            options,
            progress,
            stop,
            topic=settings.topic,
            serve=dead_letters.serve,
            inflight=inflight,
            committer=committer,
        )
    finally:
        progress.maybe_log(committer.consumer, force=True)
        committer.close()
        dead_letters.close()
        engine.dispose()
    return progress.total


def _close(
    consumer: Consumer | None, dead_letters: KafkaDeadLetterSink | None, engine: Engine
) -> None:
    if consumer is not None:
        consumer.close()
    if dead_letters is not None:
        dead_letters.close()
    engine.dispose()


def _kafka_client(make: Callable[[], _T]) -> _T:
    """``make()``, with librdkafka's refusal of its configuration as a :class:`ConfigError`."""
    try:
        return make()
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        detail = error.str() if isinstance(error, KafkaError) else str(exc)
        msg = (
            f"the Kafka client refused its configuration: {detail.strip()}; check "
            "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS and CLICKSTREAM_KAFKA_SSL_* (PEM text) or "
            "the stack outputs"
        )
        raise ConfigError(msg) from exc


def _wait_for_kafka(
    check: Callable[[float], None], settings: Settings, stop: threading.Event
) -> None:
    """Run ``check(timeout)`` until Kafka answers it, in short slices so that a signal is heard.

    Raises:
        ConfigError: what ``check`` raises when Kafka answered (a missing topic).
        _Stopped: a signal arrived first.
    """
    began = time.monotonic()
    noted = -math.inf
    while True:
        if stop.is_set():
            raise _Stopped
        attempt = time.monotonic()
        try:
            check(_KAFKA_WAIT_SLICE)
        except TransientError as exc:
            now = time.monotonic()
            if now - noted >= _KAFKA_NOTE_INTERVAL:
                _log.warning(
                    "Kafka at %s has not answered for %.0fs (%s); still waiting. Is it running, "
                    "and is the address right (--bootstrap-servers, "
                    "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS)? Ctrl-C stops",
                    settings.kafka_bootstrap_servers,
                    now - began,
                    exc,
                )
                noted = now
            stop.wait(max(0.0, _KAFKA_WAIT_SLICE - (now - attempt)))
            continue
        return


def _on_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
    _log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))


def _on_revoke(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
    # Batches are processed and committed between polls; a batch being indexed is settled
    # first (_Inflight.on_revoke), so nothing is in flight here.
    _log.info("revoked %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))


class _SearchSync:
    """Drains the search outbox in one background thread, beside the consume loop.

    Session documents follow committed rows through the durable outbox, so they need not hold
    up the loop: while the loop's thread waits for PostgreSQL or OpenSearch on the next batch,
    this thread writes session documents, and the other way round. It drains every
    ``interval`` seconds, so each active session's latest state is written about once per
    interval (not once per batch), and at once when the loop asks (:meth:`drain_now`, when
    idle). It is the process's only drainer: the loop never drains itself, so two drains of
    one process never compete (several processes may: the outbox lets one drainer at a time
    work, see :mod:`clickstream.outbox`). A drain that fails with :class:`TransientError`
    leaves the ids queued and is retried at the next interval; any other error stops the
    thread and is raised in the loop by :meth:`check`.
    """

    def __init__(self, processor: BatchProcessor, interval: float) -> None:
        self._processor = processor
        self._interval = interval
        self._wake = threading.Event()
        self._closing = False
        self._done = threading.Condition()
        self._started = 0  # drains begun, and ...
        self._finished = 0  # ... finished, so far
        self._complete = False  # the next drain waits for other processes' drains
        self._last_ok = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="search-outbox", daemon=True)

    def start(self) -> None:
        """Start the thread; its first drain runs at once (whatever an earlier run left)."""
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                with self._done:
                    if self._closing:
                        return
                    self._started += 1
                    complete, self._complete = self._complete, False
                began = time.monotonic()
                ok = _sync(self._processor, wait=complete)
                with self._done:
                    self._finished += 1
                    self._last_ok = ok
                    self._done.notify_all()
                self._wake.wait(max(0.0, self._interval - (time.monotonic() - began)))
                self._wake.clear()
        except BaseException as exc:  # handed to the loop's thread by check()
            with self._done:
                self._failure = exc
                self._done.notify_all()

    def check(self) -> None:
        """Raise what stopped the thread, if anything did (a fatal sink or database error)."""
        if self._failure is not None:
            raise self._failure

    def drain_now(self, *, complete: bool = False) -> bool:
        """Wait for a drain that begins after this call; return whether it succeeded.

        A drain that finds another process draining leaves the queue to it, and that drain
        may have claimed its last batch already. With ``complete`` (before exiting) the drain
        waits for the other one and drains the rest, so everything committed before the call
        is synchronised on return (unless it failed).
        """
        with self._done:
            wanted = self._started + 1
            self._complete = self._complete or complete
            self._wake.set()
            while self._finished < wanted and self._failure is None:
                self._done.wait()
            self.check()
            return self._last_ok

    def close(self) -> None:
        """Let the thread finish its current drain (if any), then stop it and wait."""
        with self._done:
            self._closing = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()


def _loop(
    consumer: Consumer,
    processor: BatchProcessor,
    options: ConsumerOptions,
    progress: _Progress,
    stop: threading.Event,
    *,
    topic: str,
    serve: Callable[[], None] = lambda: None,
    inflight: _Inflight | None = None,
    committer: _Committer | None = None,
) -> None:
    if committer is None:
        committer = _Committer(consumer, stop, grace=options.stop_grace)
    sync: _SearchSync | None = None
    if processor.search is None:
        inflight = None  # each batch is committed before the next poll
    else:
        if inflight is None:
            inflight = _Inflight(committer, processor, progress)
        sync = _SearchSync(processor, options.search_sync_interval)
        sync.start()
    stall = WaitWatch(_log, after=_COMMIT_NOTE_INTERVAL, every=_COMMIT_NOTE_INTERVAL)
    try:
        _consume(
            consumer,
            processor,
            options,
            progress,
            stop,
            sync=sync,
            topic=topic,
            serve=serve,
            inflight=inflight,
            committer=committer,
            stall=stall,
        )
    finally:
        stall.close()
        if inflight is not None:
            inflight.close()
        if sync is not None:
            sync.close()
    if sync is not None:
        sync.check()


class _Inflight:
    """The batch whose SQL is committed and whose events a thread is indexing into OpenSearch.

    Only committed rows may reach OpenSearch, so a batch is indexed after its SQL commit; to
    keep OpenSearch and PostgreSQL busy at the same time, the loop stores batch *n + 1* while
    this indexes batch *n*. Batch *n*'s offsets are committed once its indexing finished, and
    before batch *n + 1*'s starts (one batch at a time). A batch whose indexing fails is
    rewound by the loop, with whatever it read after it: their events are redelivered, SQL
    finds them stored, and the retry indexes their stored copies.
    """

    def __init__(
        self, committer: _Committer, processor: BatchProcessor, progress: _Progress
    ) -> None:
        self._committer = committer
        self._processor = processor
        self._progress = progress
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="index-events")
        self._failed: list[Message] = []
        self._pending: tuple[Sequence[Message], StoredBatch, Future[list[DeadLetter]]] | None = None
        self.indexed = False
        """Whether the last batch settled was indexed (False after a failure, until one is)."""

    def start(self, batch: Sequence[Message], stored: StoredBatch) -> None:
        """Index ``stored`` in the thread; call :meth:`settle` first if a batch is pending."""
        if self._pending is not None:
            msg = "a batch is still being indexed"
            raise RuntimeError(msg)
        self._pending = (batch, stored, self._pool.submit(self._processor.index, stored))

    def ready(self) -> bool:
        """Whether a pending batch has finished indexing (settling it will not wait)."""
        return self._pending is not None and self._pending[2].done()

    def settle(self, *, inline: bool = False) -> Sequence[Message]:
        """Wait for the pending batch; commit its offsets and count it.

        Returns the batch if OpenSearch (or the dead-letter topic) was unavailable: its
        offsets are not committed, and the caller rewinds it. Otherwise (or with nothing
        pending) returns an empty sequence. ``inline``: commit in this thread (from a
        rebalance callback, see :meth:`_Committer.commit`).
        """
        if self._pending is None:
            return ()
        batch, stored, future = self._pending
        self._pending = None
        try:
            report = self._processor.complete(stored, future.result)
        except TransientError as exc:
            self.indexed = False
            _log.warning("batch stored but not indexed (%s); it will be consumed again", exc)
            return batch
        self.indexed = True
        self._committer.commit(batch, inline=inline)
        self._progress.total.add(report)
        return ()

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Before partitions leave: settle the pending batch (commit its offsets).

        A batch whose indexing failed is kept for :meth:`take_failed`: the loop rewinds it
        together with what ``consume()`` returns after this callback, and backs off.
        """
        _on_revoke(consumer, partitions)
        self._failed = [*self._failed, *self.settle(inline=True)]

    def take_failed(self) -> Sequence[Message]:
        """The batch that failed while being settled in a rebalance, if any (once)."""
        failed, self._failed = self._failed, []
        return failed

    def close(self) -> None:
        """Stop the thread (after the pending batch's indexing, if any)."""
        self._pool.shutdown(wait=True)


def _consume(
    consumer: Consumer,
    processor: BatchProcessor,
    options: ConsumerOptions,
    progress: _Progress,
    stop: threading.Event,
    *,
    sync: _SearchSync | None,
    topic: str,
    serve: Callable[[], None],
    committer: _Committer,
    stall: WaitWatch,
    inflight: _Inflight | None = None,
) -> None:
    """The loop; ``serve()`` runs once per poll (the dead-letter client's log lines).

    With ``inflight`` (OpenSearch on), a batch is indexed in its thread while the loop stores
    the next one; otherwise each batch is processed and committed before the next poll.
    """
    last_message = time.monotonic()
    last_wait_note = 0.0
    failures = 0

    def retry_later(problem: Exception, batch: Sequence[Message]) -> None:
        nonlocal failures
        if committer.abandoned:
            return  # stopping, and Kafka does not answer: the group redelivers the batch
        delay = _backoff(failures)
        failures += 1
        _log.warning("%s; reading the batch again in %.1fs", problem, delay)
        _rewind(consumer, batch)
        stop.wait(delay)

    def unindexed() -> TransientError:
        return TransientError(
            "OpenSearch is unavailable (the batch is stored in the database and will be "
            "indexed when read again)"
        )

    while not stop.is_set():
        if sync is not None:
            sync.check()
        serve()
        if inflight is not None and inflight.ready() and (failed := inflight.settle()):
            retry_later(unindexed(), failed)
            continue
        if committer.abandoned:
            break  # a commit was left waiting at a stop: the client would wait behind it
        messages = consumer.consume(options.batch_size, options.poll_timeout)
        batch = [m for m in messages if not _is_error(m)]
        if inflight is not None and (failed := inflight.take_failed()):
            # settled in a rebalance during consume(): read it again, with what came after it
            retry_later(unindexed(), [*failed, *batch])
            continue
        if not batch:
            if inflight is not None and (failed := inflight.settle()):
                retry_later(unindexed(), failed)
                continue
            if committer.abandoned:
                break
            progress.maybe_log(committer.consumer)
            idle = time.monotonic() - last_message
            leaving = options.exit_when_idle is not None and idle >= options.exit_when_idle
            synced = sync.drain_now(complete=leaving) if sync is not None else True
            if leaving and synced:
                done, why = _caught_up(consumer, topic)
                if done:
                    _log.info("caught up and idle for %.0fs: exiting", idle)
                    return
                if time.monotonic() - last_wait_note >= options.progress_interval:
                    _log.info("idle for %.0fs, not exiting yet: %s", idle, why)
                    last_wait_note = time.monotonic()
            continue
        last_message = time.monotonic()
        if inflight is None:
            try:
                with stall.waiting("the database to store a batch", hint=_STALL_HINT):
                    report = processor.process(batch)
            except TransientError as exc:
                retry_later(TransientError(f"batch not stored ({exc})"), batch)
                continue
            failures = 0
            committer.commit(batch)
            progress.total.add(report)
            progress.maybe_log(committer.consumer)
            continue
        try:
            with stall.waiting("the database to store a batch", hint=_STALL_HINT):
                stored = processor.store(batch)
        except TransientError as exc:
            retry_later(TransientError(f"batch not stored ({exc})"), [*inflight.settle(), *batch])
            continue
        with stall.waiting("OpenSearch to index the batch before it", hint=_STALL_HINT):
            failed = inflight.settle()
        if failed:
            processor.owe(stored)  # stored, but read again with the batch before it
            retry_later(unindexed(), [*failed, *batch])
            continue
        if inflight.indexed:
            # Only once OpenSearch took a batch: a batch read again after an indexing failure
            # is stored at once (the database has it), which says nothing about OpenSearch.
            failures = 0
        inflight.start(batch, stored)
        progress.maybe_log(committer.consumer)
    if inflight is not None:
        inflight.settle()  # stopping: commit the last batch if it was indexed


def _sync(processor: BatchProcessor, *, wait: bool) -> bool:
    """Drain the search outbox (session documents); False if OpenSearch is unavailable."""
    try:
        processor.sync_search(wait=wait)
    except TransientError as exc:
        _log.warning("search outbox not drained (%s); will retry", exc)
        return False
    return True


def _caught_up(consumer: Consumer, topic: str) -> tuple[bool, str]:
    """Whether the whole group is caught up (``--exit-when-idle``); if not, why.

    Caught up means the group's committed offsets reached the end of every partition of the
    topic, not only of this consumer's partitions: partitions held by a member that died keep
    their backlog until its session times out and they move here (or to another member).
    """
    group = _group_lag(consumer, topic)  # this consumer's own partitions included
    if group == 0:
        return True, ""
    if not consumer.assignment():
        return False, (
            "no partitions assigned yet, the group is forming (a member that died holds its "
            "partitions until its session times out)"
        )
    if group is None:
        return False, "Kafka did not answer for the group's committed offsets"
    return False, f"{group} messages of the topic not yet committed by the group"


def _group_lag(consumer: Consumer, topic: str) -> int | None:
    """Messages of ``topic`` that the group has not committed yet, over all its partitions.

    For this consumer's own partitions its position counts too: after the last message of a
    transaction, the position is past the commit marker that no offset commit covers.
    """
    try:
        metadata = consumer.list_topics(topic, timeout=5).topics[topic]
        if metadata.error is not None:
            return None
        partitions = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
        positions = {p.partition: p.offset for p in consumer.position(consumer.assignment())}
        total = 0
        for committed in consumer.committed(partitions, timeout=5):
            low, high = consumer.get_watermark_offsets(committed, timeout=5)
            done = max(committed.offset, positions.get(committed.partition, -1), low)
            total += max(high - done, 0)
    except KafkaException:
        return None
    return total


def _is_error(message: Message) -> bool:
    error = message.error()
    if error is None:
        return False
    if error.code() != KafkaError._PARTITION_EOF:
        if error.fatal():
            raise KafkaException(error)
        _log.warning("consumer error: %s", error.str())
    return True


class _Committer:
    """Commits offsets, and closes the consumer, without letting a hung Kafka hold the process.

    librdkafka's synchronous commit waits for the group coordinator's answer with no time
    limit, inside C code: a broker that keeps its connections open but does not answer (hung,
    or cut off by the network) held the loop, the log and even the stop signal's handler for as
    long as it stayed so (a drill: ten minutes, until the broker was resumed). So each commit
    runs in a thread of its own while the loop waits in short slices: it reports the wait every
    half minute, and once a stop signal has arrived it gives Kafka ``grace`` seconds (for all
    the commits and the group's leave that follow, together), then exits without them.
    Nothing is lost that way: a batch is committed only after every sink stored it, so a
    commit left behind only means the batch is read again, and the sinks find it stored.
    """

    def __init__(self, consumer: Consumer, stop: threading.Event, *, grace: float) -> None:
        self._consumer = consumer
        self._stop = stop
        self._grace = grace
        self._deadline: float | None = None  # set once the stop signal is seen
        self.abandoned = False
        """Whether a commit or the close was left unanswered at a stop."""

    @property
    def consumer(self) -> Consumer | None:
        """The consumer, or None once a call was left waiting in it.

        confluent-kafka serializes the calls on one client: any further call, even one that
        asks nothing of Kafka (``assignment()``), would wait behind the call left waiting.
        """
        return None if self.abandoned else self._consumer

    def commit(self, batch: Sequence[Message], *, inline: bool = False) -> None:
        """Commit the offsets after ``batch``; on a refusal, rewind so that it is read again.

        ``inline``: commit in this thread, unbounded, as from a rebalance callback. The
        callback runs inside ``consume()`` or ``close()``, which hold the client: a commit from
        another thread would wait for them, and they for the callback.
        """
        if self.abandoned:
            return  # stopping, and Kafka does not answer: the batch is read again, as above
        offsets = _offsets(batch)

        def commit() -> None:
            self._consumer.commit(offsets=offsets, asynchronous=False)

        try:
            if inline:
                commit()
            elif not self._bounded(commit, "offset commit"):
                _log.warning(
                    "Kafka did not answer the offset commit within %.0fs of the stop: exiting "
                    "without it. The batch is stored; the group reads it again from its last "
                    "committed offset, and the sinks skip what they have",
                    self._grace,
                )
        except KafkaException as exc:
            # A rebalance meanwhile: partitions that moved to another consumer are re-read
            # there from the last committed offset. Partitions this consumer keeps (cooperative
            # rebalancing keeps most) are re-read here: without the rewind their offsets would
            # stay uncommitted until the next message arrived. The sinks ignore what is stored.
            _log.warning("offset commit failed (%s); the batch will be redelivered", exc)
            _rewind(self._consumer, batch)

    def close(self) -> None:
        """Leave the group and close the consumer, waiting at most the grace once stopping.

        Without a stop signal (``--exit-when-idle``) the close is waited for as long as
        Kafka takes, with a report every half minute. The close runs even when the grace is
        spent: left to the garbage collector, the client would close itself in this thread
        and wait for Kafka there, unbounded; the close's thread keeps it alive instead.
        """
        if not self._bounded(self._consumer.close, "close of the Kafka consumer"):
            _log.warning(
                "Kafka did not answer the consumer's leave of the group within %.0fs of the "
                "stop: exiting without it. The group gives this consumer's partitions to the "
                "others once its session times out (--session-timeout)",
                self._grace,
            )

    def _bounded(self, call: Callable[[], object], what: str) -> bool:
        """Run ``call`` in a daemon thread and wait for it; False if left behind at a stop.

        Raises:
            BaseException: what ``call`` raised.
        """
        future = in_daemon_thread(call, name="kafka-commit")
        began = noted = time.monotonic()
        while not wait([future], timeout=_COMMIT_SLICE).done:  # signals are heard between
            now = time.monotonic()
            if self._stop.is_set():
                if self._deadline is None:
                    self._deadline = now + self._grace
                if now >= self._deadline:
                    self.abandoned = True
                    return False
            elif now - noted >= _COMMIT_NOTE_INTERVAL:
                _log.warning(
                    "the %s has waited %.0fs for Kafka's answer (is the broker hung or cut "
                    "off?); still waiting. The batch is stored: nothing is lost. A stop "
                    "signal exits after --stop-grace seconds",
                    what,
                    now - began,
                )
                noted = now
        future.result()
        return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clickstream.consume",
        description=(
            "Consume click events from Kafka: validate them (invalid ones go to the dead-letter "
            "topic with a reason), store every distinct event exactly once in the SQL database "
            "with per-minute traffic and server-side sessions, index them into OpenSearch when "
            "CLICKSTREAM_OPENSEARCH_URL is set, and commit offsets only after the sinks did. "
            "Settings come from CLICKSTREAM_* variables or the Pulumi stack outputs "
            "(CLICKSTREAM_STACK_OUTPUTS); flags override both."
        ),
        epilog=(
            "examples:\n"
            "  python -m clickstream.consume\n"
            "  python -m clickstream.consume --exit-when-idle 10 --no-opensearch\n"
            "  CLICKSTREAM_STACK_OUTPUTS=outputs.json python -m clickstream.consume\n\n"
            "SIGINT/SIGTERM finish the current batch, commit and exit 0 (also while waiting for\n"
            "a service at start; a commit Kafka leaves unanswered gets --stop-grace seconds);\n"
            "a second one exits at once with 130, and the batch in progress is consumed\n"
            "again by the next run. Exit status: 0 success, 1 fatal Kafka error, 2\n"
            "configuration error (the message says which setting and what to do)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bootstrap-servers",
        help="Kafka bootstrap servers, host:port,... (default: "
        "$CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:19092)",
    )
    parser.add_argument(
        "--topic", help="events topic (default $CLICKSTREAM_TOPIC, else clickstream.events)"
    )
    parser.add_argument(
        "--dlq-topic",
        help="dead-letter topic (default $CLICKSTREAM_DLQ_TOPIC, else clickstream.events.dlq)",
    )
    parser.add_argument(
        "--group",
        help="consumer group id (default $CLICKSTREAM_CONSUMER_GROUP, else clickstream-consumer)",
    )
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL of the database (default: $CLICKSTREAM_DATABASE_URL or "
        "sqlite:///clickstream.db)",
    )
    parser.add_argument(
        "--opensearch-url",
        help="OpenSearch URL (default: $CLICKSTREAM_OPENSEARCH_URL; empty: sink off)",
    )
    parser.add_argument("--no-opensearch", action="store_true", help="do not index into OpenSearch")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=2000,
        help="messages per batch, 1 to 10000 (default 2000)",
    )
    parser.add_argument(
        "--exit-when-idle",
        type=float,
        metavar="SECONDS",
        help="exit once no message arrived for SECONDS (0 to 86400) and the group has"
        " committed every partition of the topic to its end (batch jobs, tests)",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how often to log throughput and lag, more than 0 (default 10)",
    )
    parser.add_argument(
        "--search-sync-interval",
        type=float,
        default=_DEFAULT_SEARCH_SYNC_INTERVAL,
        metavar="SECONDS",
        help="how often session documents are brought up to date in OpenSearch (default 5,"
        " the session index's refresh interval); longer writes each active session once per"
        " interval instead of once per change: less work for OpenSearch, older documents",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=45.0,
        metavar="SECONDS",
        help="how soon the group reassigns the partitions of a consumer that died, 6 to 1800"
        " (what the broker allows by default; default 45)",
    )
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=_DEFAULT_STOP_GRACE,
        metavar="SECONDS",
        help="after SIGINT/SIGTERM, how long Kafka has to answer the last offset commit and"
        " the group's leave before the consumer exits without them; a stop still not done 5 s"
        " later (a hung database holding the batch) exits without the batch (default 10; keep"
        " it below your supervisor's kill timeout). Nothing is lost either way: an"
        " uncommitted batch is read again",
    )
    add_log_level(parser)
    return parser


def _options(args: argparse.Namespace) -> ConsumerOptions:
    """The loop's options from the flags, each checked (a message names the flag and its range).

    Raises:
        ConfigError: a value out of range (NaN and infinity included).
    """
    low, high = _SESSION_TIMEOUT_RANGE
    checks = [
        (
            1 <= args.batch_size <= _MAX_BATCH_SIZE,
            f"--batch-size must be at least 1 and at most {_MAX_BATCH_SIZE} messages",
            args.batch_size,
        ),
        (
            0 < args.search_sync_interval <= _MAX_SEARCH_SYNC_INTERVAL,
            "--search-sync-interval must be more than 0 and at most "
            f"{_MAX_SEARCH_SYNC_INTERVAL:.0f} seconds",
            args.search_sync_interval,
        ),
        (
            0 < args.progress_interval <= _MAX_INTERVAL,
            f"--progress-interval must be more than 0 and at most {_MAX_INTERVAL:.0f} seconds",
            args.progress_interval,
        ),
        (
            args.exit_when_idle is None or 0 <= args.exit_when_idle <= _MAX_INTERVAL,
            f"--exit-when-idle must be at least 0 and at most {_MAX_INTERVAL:.0f} seconds "
            "(leave it out to run until stopped)",
            args.exit_when_idle,
        ),
        (
            low <= args.session_timeout <= high,
            f"--session-timeout must be at least {low:.0f} and at most {high:.0f} seconds "
            "(what the broker accepts by default)",
            args.session_timeout,
        ),
        (
            0 <= args.stop_grace <= _MAX_STOP_GRACE,
            f"--stop-grace must be at least 0 and at most {_MAX_STOP_GRACE:.0f} seconds",
            args.stop_grace,
        ),
    ]
    for ok, message, value in checks:
        if not ok:  # NaN fails every comparison, so it lands here too
            msg = f"{message}, got {value}"
            raise ConfigError(msg)
    return ConsumerOptions(
        batch_size=args.batch_size,
        exit_when_idle=args.exit_when_idle,
        progress_interval=args.progress_interval,
        search_sync_interval=args.search_sync_interval,
        opensearch=not args.no_opensearch,
        session_timeout=args.session_timeout,
        stop_grace=args.stop_grace,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    overrides: dict[str, Any] = {
        "kafka_bootstrap_servers": args.bootstrap_servers,
        "topic": args.topic,
        "dlq_topic": args.dlq_topic,
        "consumer_group": args.group,
        "database_url": args.database_url,
        "opensearch_url": args.opensearch_url,
    }
    stop = _Stop()
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        settings = load_settings(
            role="consumer",
            overrides=overrides,
            # run() reads every field but the Dashboards URL; with --no-opensearch, no
            # OpenSearch field either.
            uses=frozenset(Settings.model_fields)
            - {"dashboards_url"}
            - (
                {
                    "opensearch_url",
                    "opensearch_index_prefix",
                    "opensearch_shards",
                    "opensearch_replicas",
                    "opensearch_retention_days",
                }
                if args.no_opensearch
                else set()
            ),
            command="clickstream.consume",
            flags=SETTING_FLAGS,
        )
        options = _options(args)
        stop.grace = options.stop_grace
        total = run(settings, options, stop=stop.event)
    except ClickstreamError as exc:
        _log.error("%s", exc)
        return 2
    except KafkaException as exc:
        _log.error("fatal Kafka error: %s", exc)
        return 1
    finally:
        stop.disarm()
        for sig, handler in handlers.items():  # a caller's own handlers, back in place
            signal.signal(sig, handler)
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(total.reasons.items())) or "none"
    refused = ""
    if total.search_rejected:
        refused = (
            f"; OpenSearch refused {total.search_rejected} of the stored events (dead-lettered "
            "as search_rejected: replay them once the cause is fixed)"
        )
    sys.stdout.write(
        f"consumed {total.consumed}, stored {total.stored}, duplicates {total.duplicates}, "
        f"dead-lettered {total.dead_lettered} (reasons: {reasons}){refused}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Consumer throughput, latency and memory, against baselines measured in the same run.

Run ``python -m bench.consumer`` with the local stack up (``python -m devstack up``). Every
scenario uses its own topic, consumer group, PostgreSQL database and OpenSearch prefix, all
removed afterwards. The default run measures, on the same pre-produced simulated events:

1. the pipeline (:func:`clickstream.consume.run`) into PostgreSQL alone;
2. the pipeline into PostgreSQL and OpenSearch;
3. baseline (a), a naive consumer as tutorials write it: per message decode and validate,
   INSERT and COMMIT, index one document, commit the offset synchronously (on fewer events);
4. baseline (b), each sink's raw bulk-write ceiling for the same rows: one binary PostgreSQL
   ``COPY`` per table of the rows the pipeline stores (events, sessions, ``traffic_minute``),
   encoded before the clock starts, and OpenSearch bulk requests of the same documents (the
   events' and the sessions'), built before the clock starts and sent by one thread and by one
   per core (the faster counts); and, for information, the same for the events alone.

Pipeline clock: from the moment the consumer is assigned its partitions (the events are already
waiting in the topic) to the moment a watcher sees the group's committed offsets reach the
number of events, i.e. after the last batch was committed in PostgreSQL, OpenSearch and Kafka;
with OpenSearch, also until the search outbox is empty (the session documents, which follow the
commits, are written). Start-up (schema check, OpenSearch setup, group join) and the shutdown
are outside the clock.

``--latency`` offers a steady rate to a consumer started as its own process
(``python -m clickstream.consume``) and measures, per event, the time from the producer's
``produce()`` call to the commit of the PostgreSQL transaction that stored it (a statement
trigger in the benchmark's own database sends ``NOTIFY`` with the batch's Kafka offsets, and
PostgreSQL delivers a notification only when that transaction commits). ``--soak-minutes``
runs the consumer process under a steady load and samples its resident memory.

Before the throughput scenarios, OpenSearch indexes ``--warm-up-documents`` event documents
into a scratch prefix (not measured, then deleted). A freshly started node compiles its
indexing code as it goes: the first few hundred thousand documents cost it two to three times
the CPU of the later ones, which would otherwise land on whichever scenario runs first. A
production node has long been warm.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import logging
import os
import pstats
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from itertools import islice
from types import FrameType
from typing import Any, Final

import psycopg
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from opensearchpy import OpenSearch
from psycopg import sql
from psycopg.copy import Copy, FileWriter
from sqlalchemy import insert

from bench._common import (
    Topics,
    fresh_database,
    fresh_topics,
    libpq_url,
    load_average,
    machine,
    opensearch_prefix,
    percentile,
    rss_mib,
    slope_per_minute,
    unique,
)
from bench._cpu import CpuMeter, CpuSample, CpuUse, local_port
from clickstream.consume import ConsumerOptions, run
from clickstream.db import make_engine
from clickstream.db.models import events_table
from clickstream.events import ClickEvent, decode_event
from clickstream.kafka import librdkafka_logger
from clickstream.pipeline import BatchReport
from clickstream.producer import producer_config
from clickstream.search import ensure_search_setup, make_client
from clickstream.search.documents import dumps, event_document, session_document
from clickstream.search.indices import events_index, events_index_pattern, sessions_alias
from clickstream.search.sink import SearchSink
from clickstream.sessions import build_sessions
from clickstream.settings import Settings, load_settings
from clickstream.simulator import SimulatorConfig, TrafficSimulator
from clickstream.store import SessionRules, session_event, session_row

_log = logging.getLogger("bench.consumer")

DEFAULT_POSTGRES: Final = "postgresql+psycopg://clickstream:clickstream@127.0.0.1:15432/clickstream"
DENSITY: Final = 1000.0
"""Events per second of *event time* in the pre-produced workload (a busy shop)."""
FUTURE_TOLERANCE: Final = timedelta(minutes=5)
WATCH_INTERVAL: Final = 0.01
"""Seconds between two reads of the group's committed offsets (the clock's resolution)."""
ASSIGNMENT_TIMEOUT: Final = 120.0
"""Seconds a consumer process may take to be assigned partitions."""
PIPELINE_GOAL: Final = 50.0
CEILING_GOAL: Final = 0.70
LATENCY_GOAL_P99: Final = 2.0
NOTIFY_CHANNEL: Final = "bench_commit"


@dataclass(frozen=True, slots=True)
class Stack:
    """Where the local services listen."""

    bootstrap: str
    postgres_admin_url: str
    opensearch_url: str
    meter: CpuMeter = field(default_factory=lambda: CpuMeter({}), compare=False)
    """Samples the CPU time of the machine and of the services that run on it."""


@dataclass(slots=True)
class Figure:
    """One measured rate, with the load of the machine when it was taken."""

    name: str
    count: int
    seconds: float
    load_1m: float
    cpu: CpuUse | None = None
    """The CPU time used while the clock ran (machine, and each local service)."""

    @property
    def rate(self) -> float:
        """Items per second."""
        return self.count / self.seconds if self.seconds > 0 else float("inf")


@dataclass(slots=True)
class PipelineFigure(Figure):
    """A pipeline run: the rate from assignment, and the steady rate between commits."""

    steady_count: int = 0
    steady_seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)
    sessions: int = 0
    """Rows in ``sessions`` after the run."""
    minutes: int = 0
    """Rows in ``traffic_minute`` after the run."""
    sessions_digest: str = ""
    """SHA-256 of the ``sessions`` ids after the run, sorted (see :func:`_ids_digest`)."""

    @property
    def steady_rate(self) -> float:
        """Events per second from the first to the last commit (excludes the first batch)."""
        return self.steady_count / self.steady_seconds if self.steady_seconds > 0 else 0.0


def _now() -> datetime:
    return datetime.now(UTC)


# -- workload -------------------------------------------------------------------------------


def _workload(count: int, seed: int) -> list[tuple[bytes, bytes]]:
    """``count`` simulated events ``(key, value)``, spread over the recent past at DENSITY/s."""
    start = _now() - timedelta(seconds=count / DENSITY)
    simulator = TrafficSimulator(
        SimulatorConfig(events_per_second=DENSITY),
        seed=seed,
        clock=_now,
        start=start,
        clamp_to_clock=True,
    )
    return [(event.visitor.key, event.to_json()) for event in islice(simulator, count)]


def _position(message: Message) -> tuple[int, int]:
    return (message.partition() or 0, message.offset() or 0)


def _produce(
    settings: Settings, topic: str, messages: list[tuple[bytes, bytes]]
) -> list[tuple[int, int]]:
    """Send ``messages`` with the product's producer configuration; wait for every ack.

    Returns the ``(partition, offset)`` of each message, in order.
    """
    positions: list[tuple[int, int]] = [(-1, -1)] * len(messages)
    failures: list[str] = []

    def delivered(index: int, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failures.append(error.str())
        else:
            positions[index] = _position(message)

    producer = Producer({**producer_config(settings), "logger": librdkafka_logger()})
    for index, (key, value) in enumerate(messages):
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=partial(delivered, index))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120) or failures:
        msg = f"pre-produce failed: {failures[:3] or 'not acknowledged in time'}"
        raise RuntimeError(msg)
    return positions


def _settings(stack: Stack, topics: Topics, database_url: str, prefix: str | None) -> Settings:
    return load_settings(
        role="consumer",
        environ={},
        overrides={
            "kafka_bootstrap_servers": stack.bootstrap,
            "topic": topics.events,
            "dlq_topic": topics.dlq,
            "consumer_group": unique("bench-group-"),
            "database_url": database_url,
            "opensearch_url": stack.opensearch_url if prefix else "",
            "opensearch_index_prefix": prefix or "clickstream",
        },
    )


# -- the pipeline, in this process ----------------------------------------------------------


class _AssignmentClock(logging.Handler):
    """Notes when the consumer logs its partition assignment (``assigned ...``)."""

    def __init__(self, meter: CpuMeter) -> None:
        super().__init__(logging.INFO)
        self.assigned_at: float | None = None
        self.cpu: CpuSample | None = None
        self._meter = meter

    def emit(self, record: logging.LogRecord) -> None:
        if self.assigned_at is None and record.getMessage().startswith("assigned "):
            self.assigned_at = time.perf_counter()
            self.cpu = self._meter.sample()


class _CommitWatcher:
    """Reads a group's committed offsets, as a separate client that does not join the group."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "logger": librdkafka_logger(),
            }
        )
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]

    def offsets(self) -> list[int]:
        """The committed offset of each partition (0 while none is committed)."""
        return [max(tp.offset, 0) for tp in self._consumer.committed(self._partitions, timeout=10)]

    def committed(self) -> int:
        """Messages committed so far (sum of the committed offsets)."""
        return sum(self.offsets())

    def close(self) -> None:
        """Leave no connection behind."""
        self._consumer.close()


def _pipeline(
    name: str,
    settings: Settings,
    *,
    count: int,
    partitions: int,
    batch_size: int,
    opensearch: bool,
    meter: CpuMeter,
    profile: cProfile.Profile | None = None,
) -> PipelineFigure:
    """Run the consumer in a thread until the group committed ``count`` messages; time it."""
    options = ConsumerOptions(batch_size=batch_size, opensearch=opensearch)
    stop = threading.Event()
    outcome: list[BatchReport] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            if profile is not None:
                profile.enable()
            try:
                outcome.append(run(settings, options, stop=stop))
            finally:
                if profile is not None:
                    profile.disable()
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    clock = _AssignmentClock(meter)
    consume_log = logging.getLogger("clickstream.consume")
    level = consume_log.level
    consume_log.setLevel(logging.INFO)
    consume_log.addHandler(clock)
    watcher = _CommitWatcher(
        settings.kafka_bootstrap_servers, settings.consumer_group, settings.topic, partitions
    )
    load = load_average()[0]
    thread = threading.Thread(target=work, name="consumer")
    thread.start()
    try:
        samples, seen = _watch(
            watcher,
            settings,
            count,
            opensearch=opensearch,
            alive=thread.is_alive,
            failure=lambda: str(errors),
        )
        cpu_end = meter.sample()
    finally:
        stop.set()
        thread.join(timeout=300)
        watcher.close()
        consume_log.removeHandler(clock)
        consume_log.setLevel(level)
    if errors:
        raise errors[0]
    first = next(((at, n) for at, n in samples if n), None)
    if clock.assigned_at is None or clock.cpu is None or first is None:
        msg = "the consumer never logged its assignment ('assigned ...')"
        raise RuntimeError(msg)
    report = outcome[0]
    if (report.consumed, report.stored, report.dead_lettered, report.search_rejected) != (
        count,
        count,
        0,
        0,
    ):
        msg = f"expected {count} consumed and stored, none dead-lettered; got {report}"
        raise RuntimeError(msg)
    return PipelineFigure(
        name=name,
        count=count,
        seconds=seen - clock.assigned_at,
        load_1m=load,
        cpu=CpuUse.between(clock.cpu, cpu_end),
        steady_count=count - first[1],
        steady_seconds=seen - first[0],
        report=asdict(report),
    )


def _watch(
    watcher: _CommitWatcher,
    settings: Settings,
    count: int,
    *,
    opensearch: bool,
    alive: Callable[[], bool],
    failure: Callable[[], str],
) -> tuple[list[tuple[float, int]], float]:
    """Sample the group's committed offsets until they reach ``count``; with OpenSearch, then
    until the search outbox is empty too. Returns the samples ``(time, committed)`` and the
    time the run was done.

    Session documents follow the committed rows through the outbox, which only shrinks once
    every batch committed: with OpenSearch the run is done when it is empty.
    """
    samples: list[tuple[float, int]] = []
    while True:
        committed = watcher.committed()
        seen = time.perf_counter()
        samples.append((seen, committed))
        if committed >= count:
            break
        if not alive():
            msg = f"the consumer stopped after {committed} of {count} messages: {failure()}"
            raise RuntimeError(msg)
        time.sleep(WATCH_INTERVAL)
    if opensearch:
        with psycopg.connect(
            libpq_url(settings.database_url.get_secret_value()), autocommit=True
        ) as conn:
            while _outbox_size(conn):
                if not alive():
                    msg = f"the consumer stopped before draining the outbox: {failure()}"
                    raise RuntimeError(msg)
                time.sleep(WATCH_INTERVAL)
                seen = time.perf_counter()
    return samples, seen


def _outbox_size(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM search_outbox").fetchone()
    return int(row[0]) if row else 0


def _count_rows(database_url: str, table: str = "events") -> int:
    with psycopg.connect(libpq_url(database_url)) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        ).fetchone()
    return int(row[0]) if row else 0


def _ids_digest(ids: Iterable[str]) -> str:
    """SHA-256 of the ids, sorted, one per line."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def _session_ids_digest(database_url: str) -> str:
    with psycopg.connect(libpq_url(database_url)) as conn:
        return _ids_digest(str(row[0]) for row in conn.execute("SELECT session_id FROM sessions"))


def _count_documents(client: OpenSearch, index: str) -> int:
    client.indices.refresh(index=index)
    return int(client.count(index=index)["count"])


# -- baseline (a): the naive consumer -------------------------------------------------------


def _event_row(event: ClickEvent, partition: int, offset: int) -> dict[str, Any]:
    """The ``events`` row of an event, as the SQL sink stores it."""
    row = event.model_dump()
    for name in ("event_type", "page_type", "device_type"):
        row[name] = str(row[name])
    row["kafka_partition"] = partition
    row["kafka_offset"] = offset
    return row


def _naive(
    settings: Settings, *, count: int, client: OpenSearch | None, prefix: str | None
) -> Figure:
    """Per message: decode + validate, INSERT + COMMIT, index one document, commit the offset.

    The tutorial shape, kept honest: it writes only the ``events`` row (no ``traffic_minute``,
    no sessions), so it does less work than the pipeline per event.
    """
    engine = make_engine(settings.database_url.get_secret_value(), application_name="naive")
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": settings.consumer_group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "logger": librdkafka_logger(),
        }
    )
    consumer.subscribe([settings.topic])
    load = load_average()[0]
    done = 0
    started = 0.0
    # One connection for the whole run (no pool checkout or ping per message): the fastest
    # form of the naive loop, so the ratio against it is not flattered.
    with engine.connect() as conn:
        try:
            while done < count:
                message = consumer.poll(1.0)
                if message is None or message.error() is not None:
                    continue
                if not done:
                    started = time.perf_counter()
                raw = message.value()
                event = decode_event(raw, now=_now(), future_tolerance=FUTURE_TOLERANCE)
                conn.execute(insert(events_table), _event_row(event, *_position(message)))
                conn.commit()
                if client is not None and prefix is not None:
                    event_id, occurred_at, document = event_document(event.model_dump(mode="json"))
                    client.index(
                        index=events_index(prefix, occurred_at),
                        id=event_id,
                        body=document,
                        op_type="index",
                    )
                consumer.commit(message=message, asynchronous=False)
                done += 1
            seconds = time.perf_counter() - started
        finally:
            consumer.close()
    engine.dispose()
    sinks = "PostgreSQL + OpenSearch" if client is not None else "PostgreSQL"
    return Figure(f"naive, per message ({sinks})", count, seconds, load)


# -- baseline (b): the sinks' bulk ceilings -------------------------------------------------


def _same_rows(
    events: Sequence[ClickEvent],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``sessions`` and ``traffic_minute`` rows the definitions give for ``events``.

    Sessions from the pure sessionizer (``build_sessions``, the default rules) over each
    visitor's events; ``traffic_minute`` summed here, independently of the store's code.
    """
    rules = SessionRules()
    by_user: dict[str, list[ClickEvent]] = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event)
    now = _now()
    sessions = [
        {**session_row(session), "updated_at": now}
        for user, mine in by_user.items()
        for session in build_sessions(
            user, map(session_event, mine), gap=rules.gap, max_length=rules.max_length
        )
    ]
    traffic: dict[tuple[datetime, str, str], list[Any]] = {}
    for event in events:
        key = (
            event.occurred_at.astimezone(UTC).replace(second=0, microsecond=0),
            str(event.device_type),
            event.country or "",
        )
        measures = traffic.setdefault(key, [0, 0, 0, 0, Decimal("0.00")])
        measures[0] += 1
        measures[1] += event.event_type == "page_view"
        measures[2] += event.event_type == "add_to_cart"
        if event.event_type == "purchase":
            measures[3] += 1
            measures[4] += event.revenue or Decimal("0.00")
    names = ("events", "page_views", "add_to_carts", "purchases", "revenue")
    minutes = [
        {
            "minute": minute,
            "device_type": device,
            "country": country,
            **dict(zip(names, m, strict=True)),
        }
        for (minute, device, country), m in traffic.items()
    ]
    return sessions, minutes


def _copy_ceiling(
    database_url: str,
    tables: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
    count: int,
    meter: CpuMeter,
) -> Figure:
    """One binary ``COPY`` per table of ``tables`` (the rows of ``count`` events), then COMMIT;
    the rows are encoded before the clock starts, so it times the server alone."""
    load = load_average()[0]
    with psycopg.connect(libpq_url(database_url)) as conn:
        with conn.cursor() as cursor:
            payloads = [_binary_copy(cursor, table, rows) for table, rows in tables]
        conn.rollback()
        before = meter.sample()
        with conn.cursor() as cursor:
            for statement, payload in payloads:
                with cursor.copy(statement) as copy:
                    copy.write(payload)
        conn.commit()
        cpu = CpuUse.between(before, meter.sample())
    what = "the same rows" if len(tables) > 1 else "events only"
    return Figure(f"ceiling: PostgreSQL COPY, {what}", count, cpu.seconds, load, cpu)


def _binary_copy(
    cursor: psycopg.Cursor[Any], table: str, rows: Sequence[Mapping[str, Any]]
) -> tuple[str, bytes]:
    """``(COPY statement, data)``: ``rows`` of ``table`` as one binary COPY stream."""
    columns = list(rows[0])
    names = ", ".join(f'"{c}"' for c in columns)
    cursor.execute(f"SELECT {names} FROM {table} LIMIT 0")
    types = [column.type_code for column in cursor.description or ()]
    # The binary uuid type takes UUID objects (event ids are canonical UUID text).
    as_uuid = [oid == _UUID_OID for oid in types]
    buffer = io.BytesIO()
    # A cursor of its own, that ran nothing: it only lends the connection's adapters.
    with (
        cursor.connection.cursor() as encoder,
        Copy(encoder, binary=True, writer=FileWriter(buffer)) as copy,
    ):
        copy.set_types(types)
        for row in rows:
            values = [row[c] for c in columns]
            copy.write_row(
                [
                    uuid.UUID(v) if u and v is not None else v
                    for v, u in zip(values, as_uuid, strict=True)
                ]
            )
    return f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)", buffer.getvalue()


_UUID_OID: Final = psycopg.adapters.types["uuid"].oid


BULK_CHUNK: Final = 2000
"""Documents per bulk request of the OpenSearch ceiling: the sink's own chunk size."""


def _bulk_ceiling(
    client: OpenSearch,
    prefix: str,
    events: Sequence[ClickEvent],
    meter: CpuMeter,
    sessions: Sequence[Mapping[str, Any]] = (),
    *,
    senders: int,
) -> Figure:
    """The documents the sink writes (the events', and with ``sessions``, rows, theirs too) as
    bulk requests of ``BULK_CHUNK`` documents, built before the clock starts and sent by
    ``senders`` threads at once. The rate counts events either way."""
    lines = []
    for event in events:
        event_id, occurred_at, document = event_document(event.model_dump(mode="json"))
        lines.append(_bulk_lines(events_index(prefix, occurred_at), event_id, document))
    alias = sessions_alias(prefix)
    for row in sessions:
        session_id, document = session_document(row)
        lines.append(_bulk_lines(alias, session_id, document))
    bodies = [b"".join(lines[i : i + BULK_CHUNK]) for i in range(0, len(lines), BULK_CHUNK)]
    pending = iter(bodies)
    lock = threading.Lock()
    failures: list[str] = []

    def send() -> None:
        while True:
            with lock:
                body = next(pending, None)
            if body is None:
                return
            try:
                response = client.bulk(body=body, filter_path="errors,items.*.error")
            except Exception as exc:  # reported by the caller, with the others
                failures.append(f"{type(exc).__name__}: {exc}")
                return
            if response.get("errors"):
                failures.append(str(response.get("items", [])[:1]))

    load = load_average()[0]
    threads = [threading.Thread(target=send, name=f"bulk-{n}") for n in range(senders)]
    before = meter.sample()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu = CpuUse.between(before, meter.sample())
    if failures:
        msg = f"bulk requests failed: {failures[:3]}"
        raise RuntimeError(msg)
    what = ", the same documents" if sessions else ", event documents"
    name = f"ceiling: OpenSearch bulk, {senders} sender{'s' if senders > 1 else ''}{what}"
    return Figure(name, len(events), cpu.seconds, load, cpu)


def _bulk_lines(index: str, doc_id: str, document: Mapping[str, Any]) -> bytes:
    action = json.dumps({"index": {"_index": index, "_id": doc_id}})
    return f"{action}\n{dumps(document)}\n".encode()


def _pipeline_processes(
    name: str,
    settings: Settings,
    *,
    processes: int,
    count: int,
    partitions: int,
    batch_size: int,
    opensearch: bool,
    meter: CpuMeter,
) -> PipelineFigure:
    """Run ``processes`` consumer processes in one group until it committed ``count`` messages.

    The way a deployment uses more cores: several ``python -m clickstream.consume`` in one
    consumer group share the partitions. The processes start together, but the first one to be
    assigned partitions starts on the waiting events while the group still rebalances (a few
    seconds, with nothing committed meanwhile). That start-up is left out like the single
    consumer's: the clock starts when the group has formed, i.e. at the last change of any
    process's assignment, and the events committed by then are not counted. It stops as in
    :func:`_pipeline`.
    """
    watcher = _CommitWatcher(
        settings.kafka_bootstrap_servers, settings.consumer_group, settings.topic, partitions
    )
    load = load_average()[0]
    consumers = [
        _ConsumerProcess(settings, batch_size=batch_size, opensearch=opensearch, meter=meter)
        for _ in range(processes)
    ]
    spawned = time.perf_counter()

    def alive() -> bool:
        if not all(c.alive() for c in consumers):
            return False
        assigned = all(c.assigned.is_set() for c in consumers)
        return assigned or time.perf_counter() - spawned < ASSIGNMENT_TIMEOUT

    try:
        # Watched from the start, not from the group's forming: the count committed by then is
        # read, not guessed, even when the group forms late in a short run.
        samples, seen = _watch(
            watcher,
            settings,
            count,
            opensearch=opensearch,
            alive=alive,
            failure=lambda: (
                (
                    ""
                    if all(c.assigned.is_set() for c in consumers)
                    else f"not every process had partitions after {ASSIGNMENT_TIMEOUT:g} s\n"
                )
                + "\n".join(line for c in consumers for line in c.log)
            ),
        )
        cpu_end = meter.sample()
        if not all(c.assigned.is_set() for c in consumers):
            msg = (
                f"all {count} events were committed before every process had partitions (the "
                "group takes a few seconds to form): use more --events"
            )
            raise RuntimeError(msg)
        # Before stopping: shutting down logs a revocation too.
        last = max(consumers, key=lambda c: c.last_change or 0.0)
        cpu_formed = last.last_change_cpu
        formed = cpu_formed.at if cpu_formed is not None else last.last_change or 0.0
    finally:
        for consumer in consumers:
            consumer.stop()
        watcher.close()
    started = min(c.assigned_at or formed for c in consumers)
    before = committed_by(samples, formed, count)
    if count - before < count // 2:
        msg = (
            f"the group formed {formed - started:.1f} s after the first assignment, when "
            f"{before} of {count} events were already committed: use more --events"
        )
        raise RuntimeError(msg)
    _log.info(
        "%s: the group formed %.1f s after the first assignment (%d events committed by then)",
        name,
        formed - started,
        before,
    )
    return PipelineFigure(
        name=name,
        count=count - before,
        seconds=seen - formed,
        load_1m=load,
        cpu=CpuUse.between(cpu_formed, cpu_end) if cpu_formed is not None else None,
    )


# -- the consumer as its own process (latency, soak) ----------------------------------------


def committed_by(samples: Sequence[tuple[float, int]], moment: float, count: int) -> int:
    """How many of ``count`` messages the samples ``(time, committed)`` show committed at
    ``moment``: the last reading at or before it. Without one, all of them (nothing is left
    to measure after it)."""
    return max((n for at, n in samples if at <= moment), default=count)


class _ConsumerProcess:
    """``python -m clickstream.consume`` with the benchmark's settings in its environment."""

    def __init__(
        self,
        settings: Settings,
        *,
        batch_size: int,
        opensearch: bool,
        meter: CpuMeter | None = None,
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CLICKSTREAM_")}
        env |= {
            "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "CLICKSTREAM_TOPIC": settings.topic,
            "CLICKSTREAM_DLQ_TOPIC": settings.dlq_topic,
            "CLICKSTREAM_CONSUMER_GROUP": settings.consumer_group,
            "CLICKSTREAM_DATABASE_URL": settings.database_url.get_secret_value(),
            "CLICKSTREAM_OPENSEARCH_URL": settings.opensearch_url.get_secret_value(),
            "CLICKSTREAM_OPENSEARCH_INDEX_PREFIX": settings.opensearch_index_prefix,
        }
        command = [sys.executable, "-m", "clickstream.consume", "--batch-size", str(batch_size)]
        if not opensearch:
            command.append("--no-opensearch")
        self.assigned = threading.Event()
        self.assigned_at: float | None = None
        self.last_change: float | None = None
        """When the process last logged a change of its partitions (assigned or revoked)."""
        self.last_change_cpu: CpuSample | None = None
        """The CPU time used at that moment (with a ``meter``; its ``at`` is ``last_change``)."""
        self._meter = meter
        self.log: deque[str] = deque(maxlen=200)
        self._process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, name="consumer-log", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        """The consumer's process id."""
        return self._process.pid

    def _read(self) -> None:
        stream = self._process.stderr
        if stream is None:  # pragma: no cover - stderr is a pipe
            return
        for line in stream:
            self.log.append(line.rstrip())
            if " assigned " in line or " revoked " in line:
                # One sample, then both fields from it: a reader sees a time and CPU of the
                # same moment (the CPU first, so that the time never runs ahead of it).
                sample = self._meter.sample() if self._meter is not None else None
                self.last_change_cpu = sample
                self.last_change = sample.at if sample is not None else time.perf_counter()
            if " assigned " in line:
                if self.assigned_at is None:
                    self.assigned_at = time.perf_counter()
                self.assigned.set()

    def wait_assigned(self, timeout: float) -> None:
        """Block until the consumer owns partitions (or raise with its log)."""
        if not self.assigned.wait(timeout):
            self.stop()
            msg = "the consumer process got no partitions:\n" + "\n".join(self.log)
            raise RuntimeError(msg)

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self._process.poll() is None

    def stop(self) -> str:
        """SIGTERM (finish the batch, commit, exit); return its stdout summary."""
        if self.alive():
            self._process.send_signal(signal.SIGTERM)
        try:
            out, _ = self._process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self._process.kill()
            out, _ = self._process.communicate()
        self._reader.join(timeout=10)
        return out.strip()


class _PacedProducer:
    """Produces simulated events at a steady rate; optionally notes when each was sent."""

    def __init__(
        self, settings: Settings, topic: str, *, rate: float, record: bool, seed: int
    ) -> None:
        self.sent: dict[tuple[int, int], float] = {}
        self.delivered = 0
        self.produced = 0
        self.failures: list[str] = []
        self.seconds = 0.0
        self._record = record
        self._rate = rate
        self._topic = topic
        self._producer = Producer({**producer_config(settings), "logger": librdkafka_logger()})
        self._events = iter(
            TrafficSimulator(
                SimulatorConfig(events_per_second=rate),
                seed=seed,
                clock=_now,
                clamp_to_clock=True,
            )
        )
        self.stop = threading.Event()

    def _on_delivery(self, sent_at: float, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.failures.append(error.str())
            return
        self.delivered += 1
        if self._record:
            self.sent[_position(message)] = sent_at

    def run(self, seconds: float) -> None:
        """Offer ``rate`` events/s for ``seconds`` (or until :attr:`stop`), then flush."""
        produce, poll, topic = self._producer.produce, self._producer.poll, self._topic
        total = int(self._rate * seconds)
        started = time.perf_counter()
        while self.produced < total and not self.stop.is_set():
            due = min(total, int((time.perf_counter() - started) * self._rate) + 1)
            while self.produced < due:
                event = next(self._events)
                sent_at = time.time()
                produce(
                    topic,
                    event.to_json(),
                    event.visitor.key,
                    on_delivery=partial(self._on_delivery, sent_at),
                )
                self.produced += 1
            poll(0)
            delay = started + self.produced / self._rate - time.perf_counter()
            if delay > 0:
                time.sleep(max(delay, 0.002))
        self.seconds = time.perf_counter() - started
        self._producer.flush(60)


_NOTIFIER_SQL: Final = f"""
CREATE FUNCTION bench_notify_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('{NOTIFY_CHANNEL}', (
    SELECT coalesce(json_agg(json_build_array(p, lo, hi, n)), '[]')::text
    FROM (SELECT kafka_partition AS p, min(kafka_offset) AS lo, max(kafka_offset) AS hi,
                 count(*) AS n
          FROM new_rows GROUP BY kafka_partition) AS ranges));
  RETURN NULL;
END $$;
CREATE TRIGGER bench_notify_commit AFTER INSERT ON events
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench_notify_commit();
"""


class _CommitListener:
    """Receives the trigger's notifications; PostgreSQL delivers each one at its COMMIT."""

    def __init__(self, database_url: str) -> None:
        self.batches: list[tuple[float, list[tuple[int, int, int, int]]]] = []
        self.rows = 0
        self._stop = threading.Event()
        self._conn = psycopg.connect(libpq_url(database_url), autocommit=True)
        self._conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        self._thread = threading.Thread(target=self._listen, name="commit-listener", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            for notify in self._conn.notifies(timeout=0.5):
                received = time.time()
                ranges = [tuple(item) for item in json.loads(notify.payload)]
                self.batches.append((received, ranges))
                self.rows += sum(int(item[3]) for item in ranges)

    def close(self) -> None:
        """Stop listening and close the connection."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._conn.close()


class _OffsetTimeline:
    """Notes when the group's committed offset of each partition moves (every 20 ms)."""

    def __init__(self, watcher: _CommitWatcher) -> None:
        self.moves: list[tuple[float, int, int]] = []
        self.committed = 0
        """Messages committed at the last sample."""
        self._watcher = watcher
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="offset-timeline", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        last: list[int] | None = None
        while not self._stop.wait(0.02):
            offsets = self._watcher.offsets()
            seen = time.time()
            for partition, offset in enumerate(offsets):
                if last is None or offset != last[partition]:
                    self.moves.append((seen, partition, offset))
            last = offsets
            self.committed = sum(offsets)

    def close(self) -> None:
        """Stop watching and close the watcher's client."""
        self._stop.set()
        self._thread.join(timeout=15)
        self._watcher.close()

    def done_at(self) -> dict[tuple[int, int], float]:
        """For every committed ``(partition, offset)``: when the commit was first seen."""
        done: dict[tuple[int, int], float] = {}
        below: dict[int, int] = {}
        for seen, partition, offset in self.moves:
            for position in range(below.get(partition, 0), offset):
                done[(partition, position)] = seen
            below[partition] = max(below.get(partition, 0), offset)
        return done


@dataclass(frozen=True, slots=True)
class Spread:
    """Percentiles of a set of latencies, in seconds."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of non-empty ``values``."""
        return cls(
            count=len(values),
            p50=percentile(values, 0.50),
            p95=percentile(values, 0.95),
            p99=percentile(values, 0.99),
            max=max(values),
            mean=sum(values) / len(values),
        )


@dataclass(slots=True)
class LatencyFigure:
    """Latencies of every event offered at a steady rate, from its ``produce()`` call.

    ``to_postgres``: to the COMMIT of the SQL transaction that stored it (the goal's measure).
    ``to_offsets``: to the moment the group's committed offset covered it, i.e. after every sink
    (including the OpenSearch session documents) was done; sampled every 20 ms.
    """

    offered_rate: float
    seconds: float
    produced: int
    drain_seconds: float
    to_postgres: Spread
    to_offsets: Spread
    load_1m: float
    consumer_summary: str
    processes: int = 1


def _latency(
    stack: Stack,
    client: OpenSearch | None,
    *,
    rate: float,
    seconds: float,
    batch_size: int,
    partitions: int,
    processes: int = 1,
) -> LatencyFigure:
    with ExitStack() as resources:
        topics = resources.enter_context(fresh_topics(stack.bootstrap, partitions=partitions))
        url = resources.enter_context(fresh_database(stack.postgres_admin_url))
        prefix = resources.enter_context(_maybe_prefix(client))
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute(_NOTIFIER_SQL)
        settings = _settings(stack, topics, url, prefix)
        listener = _CommitListener(url)
        resources.callback(listener.close)
        timeline = _OffsetTimeline(
            _CommitWatcher(stack.bootstrap, settings.consumer_group, topics.events, partitions)
        )
        resources.callback(timeline.close)
        consumers = [
            _ConsumerProcess(settings, batch_size=batch_size, opensearch=bool(prefix))
            for _ in range(processes)
        ]
        try:
            for consumer in consumers:
                consumer.wait_assigned(timeout=120)
            _wait_group_settled(consumers)
            load = load_average()[0]
            producer = _PacedProducer(settings, topics.events, rate=rate, record=True, seed=5)
            producer.run(seconds)
            produced_at = time.perf_counter()
            deadline = produced_at + 600
            while time.perf_counter() < deadline and all(c.alive() for c in consumers):
                if min(listener.rows, timeline.committed) >= producer.delivered:
                    break
                time.sleep(0.05)
            drain = time.perf_counter() - produced_at
            time.sleep(0.1)  # one more sample of the offsets
        finally:
            summary = "\n".join(consumer.stop() for consumer in consumers)
        if listener.rows < producer.delivered:
            msg = (
                f"only {listener.rows} of {producer.delivered} events were committed; "
                "consumer log:\n" + "\n".join(line for c in consumers for line in c.log)
            )
            raise RuntimeError(msg)
    to_postgres: list[float] = []
    for received, ranges in listener.batches:
        for partition, low, high, _count in ranges:
            for offset in range(low, high + 1):
                sent_at = producer.sent.get((partition, offset))
                if sent_at is not None:
                    to_postgres.append(received - sent_at)
    done = timeline.done_at()
    to_offsets = [done[key] - sent_at for key, sent_at in producer.sent.items() if key in done]
    return LatencyFigure(
        offered_rate=producer.produced / producer.seconds,
        seconds=producer.seconds,
        produced=producer.delivered,
        drain_seconds=drain,
        to_postgres=Spread.of(to_postgres),
        to_offsets=Spread.of(to_offsets),
        load_1m=load,
        consumer_summary=summary,
        processes=processes,
    )


def _wait_group_settled(consumers: Sequence[_ConsumerProcess], quiet: float = 3.0) -> None:
    """Wait until no process changed its assignment for ``quiet`` seconds (at most 60 s)."""
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        last = max(c.last_change or 0.0 for c in consumers)
        if time.perf_counter() - last >= quiet:
            return
        time.sleep(0.1)


@dataclass(slots=True)
class SoakFigure:
    """Resident memory of the consumer process under a steady load."""

    minutes: float
    rate: float
    produced: int
    samples: list[tuple[float, float]]
    first: float
    last: float
    max: float
    slope_all: float
    slope_after_first_minute: float
    max_lag: int
    """Most messages produced but not yet committed at a sample (the consumer fell behind)."""
    load_start: float
    load_end: float
    consumer_summary: str


def _soak(
    stack: Stack,
    client: OpenSearch | None,
    *,
    minutes: float,
    rate: float,
    sample_seconds: float,
    batch_size: int,
    partitions: int,
    progress: bool,
) -> SoakFigure:
    with ExitStack() as resources:
        topics = resources.enter_context(fresh_topics(stack.bootstrap, partitions=partitions))
        url = resources.enter_context(fresh_database(stack.postgres_admin_url))
        prefix = resources.enter_context(_maybe_prefix(client))
        settings = _settings(stack, topics, url, prefix)
        consumer = _ConsumerProcess(settings, batch_size=batch_size, opensearch=bool(prefix))
        producer = _PacedProducer(settings, topics.events, rate=rate, record=False, seed=9)
        thread = threading.Thread(target=producer.run, args=(minutes * 60,), name="producer")
        samples: list[tuple[float, float]] = []
        lags: list[int] = []
        load_start = load_average()[0]
        watcher = _CommitWatcher(
            stack.bootstrap, settings.consumer_group, topics.events, partitions
        )
        resources.callback(watcher.close)
        try:
            consumer.wait_assigned(timeout=120)
            started = time.monotonic()
            thread.start()
            while thread.is_alive():
                if not consumer.alive():
                    msg = "the consumer died:\n" + "\n".join(consumer.log)
                    raise RuntimeError(msg)
                elapsed = time.monotonic() - started
                samples.append((elapsed, rss_mib(consumer.pid)))
                lags.append(max(producer.delivered - watcher.committed(), 0))
                if progress:
                    print(
                        f"  soak {elapsed:6.0f}s  produced {producer.produced:>10,}  "
                        f"lag {lags[-1]:>8,}  consumer RSS {samples[-1][1]:7.1f} MiB",
                        file=sys.stderr,
                    )
                thread.join(timeout=sample_seconds)
            deadline = time.monotonic() + 300
            while watcher.committed() < producer.delivered and time.monotonic() < deadline:
                time.sleep(0.2)
            samples.append((time.monotonic() - started, rss_mib(consumer.pid)))
        finally:
            producer.stop.set()
            summary = consumer.stop()
    rss = [value for _, value in samples]
    return SoakFigure(
        minutes=minutes,
        rate=rate,
        produced=producer.delivered,
        samples=samples,
        first=rss[0],
        last=rss[-1],
        max=max(rss),
        slope_all=slope_per_minute(samples),
        slope_after_first_minute=slope_per_minute([s for s in samples if s[0] >= 60]),
        max_lag=max(lags, default=0),
        load_start=load_start,
        load_end=load_average()[0],
        consumer_summary=summary,
    )


def _maybe_prefix(client: OpenSearch | None) -> AbstractContextManager[str | None]:
    if client is None:
        return nullcontext(None)
    return opensearch_prefix(client)


# -- the throughput scenarios ---------------------------------------------------------------


@dataclass(slots=True)
class Throughput:
    """Every figure of the throughput part, measured on the same events."""

    pipeline_pg: PipelineFigure
    pipeline_both: PipelineFigure | None
    naive: Figure
    copy_same_rows: Figure
    """Binary ``COPY`` of every row the pipeline stores: events, sessions, ``traffic_minute``."""
    bulk_same_documents: Figure | None
    """Bulk requests of every document the pipeline leaves: events' and sessions'."""
    copy_events: Figure
    """For information: the ``events`` rows alone."""
    bulk_events: Figure | None
    """For information: the event documents alone."""
    decode: Figure
    """Not a baseline: what validation alone costs, a floor under any consumer in Python."""
    hot_spots: str = ""
    processes_pg: PipelineFigure | None = None
    processes_both: PipelineFigure | None = None
    """The same pipelines as several consumer processes in one group (``--processes``)."""


_Run = Callable[[str, Settings, bool], PipelineFigure]
"""Runs one pipeline scenario: (name, settings, with OpenSearch) -> its figure."""


def _checked_scenario(
    stack: Stack,
    client: OpenSearch | None,
    topics: Topics,
    name: str,
    run: _Run,
    *,
    opensearch: bool,
    count: int,
) -> PipelineFigure:
    """Run a pipeline on a fresh database (and prefix), then check that everything landed."""
    search = opensearch_prefix(client) if opensearch and client is not None else nullcontext(None)
    with fresh_database(stack.postgres_admin_url) as url, search as prefix:
        _log.info("%s", name)
        figure = run(name, _settings(stack, topics, url, prefix), prefix is not None)
        _check(_count_rows(url), count, "rows in events")
        figure.sessions = _count_rows(url, "sessions")
        figure.sessions_digest = _session_ids_digest(url)
        figure.minutes = _count_rows(url, "traffic_minute")
        if client is not None and prefix is not None:
            _check(_count_documents(client, events_index_pattern(prefix)), count, "event documents")
            _check(
                _count_documents(client, sessions_alias(prefix)),
                _count_rows(url, "sessions"),
                "session documents (one per sessions row)",
            )
    return figure


def _throughput(stack: Stack, client: OpenSearch | None, args: argparse.Namespace) -> Throughput:
    count, partitions, batch = args.events, args.partitions, args.batch_size
    _log.info("simulating %d events", count)
    messages = _workload(count, seed=args.seed)
    base = Settings(kafka_bootstrap_servers=stack.bootstrap)
    with fresh_topics(stack.bootstrap, partitions=partitions) as topics:
        _log.info("producing %d events to %s", count, topics.events)
        positions = _produce(base, topics.events, messages)
        if client is not None and args.warm_up_documents > 0:
            _warm_up_opensearch(client, messages, args.warm_up_documents)

        def single(name: str, settings: Settings, opensearch: bool) -> PipelineFigure:
            return _pipeline(
                name,
                settings,
                count=count,
                partitions=partitions,
                batch_size=batch,
                opensearch=opensearch,
                meter=stack.meter,
            )

        def several(name: str, settings: Settings, opensearch: bool) -> PipelineFigure:
            return _pipeline_processes(
                name,
                settings,
                processes=args.processes,
                count=count,
                partitions=partitions,
                batch_size=batch,
                opensearch=opensearch,
                meter=stack.meter,
            )

        def scenario(name: str, run: _Run, *, opensearch: bool) -> PipelineFigure:
            return _checked_scenario(
                stack, client, topics, name, run, opensearch=opensearch, count=count
            )

        pg = scenario("pipeline -> PostgreSQL", single, opensearch=False)
        both = None
        if client is not None:
            both = scenario("pipeline -> PostgreSQL + OpenSearch", single, opensearch=True)
        processes_pg = processes_both = None
        if args.processes > 1:
            suffix = f", {args.processes} processes"
            processes_pg = scenario(f"pipeline -> PostgreSQL{suffix}", several, opensearch=False)
            if client is not None:
                processes_both = scenario(
                    f"pipeline -> PostgreSQL + OpenSearch{suffix}", several, opensearch=True
                )

        naive_count = min(args.naive_events, count)
        with fresh_database(stack.postgres_admin_url) as url, _maybe_prefix(client) as p:
            settings = _settings(stack, topics, url, p)
            if client is not None and p is not None:
                ensure_search_setup(client, prefix=p)  # the same templates as the pipeline's
            _log.info("naive consumer, %d events", naive_count)
            naive = _naive(settings, count=naive_count, client=client, prefix=p)
            _check(_count_rows(url), naive_count, "rows in events (naive)")

        hot_spots = ""
        if args.profile:
            with fresh_database(stack.postgres_admin_url) as url, _maybe_prefix(client) as p:
                _log.info("profiling the pipeline (not a measured figure)")
                profile = cProfile.Profile()
                _pipeline(
                    "profiled",
                    _settings(stack, topics, url, p),
                    count=count,
                    partitions=partitions,
                    batch_size=batch,
                    opensearch=p is not None,
                    meter=stack.meter,
                    profile=profile,
                )
                profile.dump_stats(args.profile)
                hot_spots = _hot_spots(profile)

    _log.info("decoding %d events for the ceilings", count)
    load = load_average()[0]
    started = time.perf_counter()
    now = _now()
    events = [decode_event(v, now=now, future_tolerance=FUTURE_TOLERANCE) for _, v in messages]
    decode = Figure("decode + validate only, no I/O", count, time.perf_counter() - started, load)
    rows = [
        _event_row(event, partition, offset)
        for event, (partition, offset) in zip(events, positions, strict=True)
    ]
    # The same rows as the pipeline stores: sessions from one pass of the pure sessionizer over
    # all the events, which every pipeline run, built incrementally across batches, processes
    # and the in-SQL fast path, must have ended with too (the same session ids), and
    # traffic_minute.
    sessions, minutes = _same_rows(events)
    expected = _ids_digest(str(row["session_id"]) for row in sessions)
    for figure in (pg, both, processes_pg, processes_both):
        if figure is not None:
            _check(figure.sessions, len(sessions), f"sessions rows ({figure.name})")
            if figure.sessions_digest != expected:
                msg = f"{figure.name}: its sessions are not the ones the definition gives"
                raise RuntimeError(msg)
            _check(figure.minutes, len(minutes), f"traffic_minute rows ({figure.name})")
    tables = [("events", rows), ("sessions", sessions), ("traffic_minute", minutes)]
    with fresh_database(stack.postgres_admin_url) as url:
        copy = _copy_ceiling(url, tables[:1], count, stack.meter)
        _check(_count_rows(url), count, "rows in events (COPY)")
    with fresh_database(stack.postgres_admin_url) as url:
        copy_all = _copy_ceiling(url, tables, count, stack.meter)
        for table, table_rows in tables:
            _check(_count_rows(url, table), len(table_rows), f"rows in {table} (COPY)")
    bulk_figure = bulk_all = None
    if client is not None:
        # The ceiling is the faster of one sender and one per core.
        best = 1
        for senders in sorted({1, os.cpu_count() or 1}):
            with opensearch_prefix(client) as p:
                ensure_search_setup(client, prefix=p)
                run = _bulk_ceiling(client, p, events, stack.meter, sessions, senders=senders)
                _check(_count_documents(client, events_index_pattern(p)), count, "documents")
                _check(_count_documents(client, sessions_alias(p)), len(sessions), "sessions")
            if bulk_all is None or run.rate > bulk_all.rate:
                bulk_all, best = run, senders
        with opensearch_prefix(client) as p:
            ensure_search_setup(client, prefix=p)
            bulk_figure = _bulk_ceiling(client, p, events, stack.meter, senders=best)
            _check(_count_documents(client, events_index_pattern(p)), count, "documents (bulk)")
    return Throughput(
        pipeline_pg=pg,
        pipeline_both=both,
        naive=naive,
        copy_same_rows=copy_all,
        bulk_same_documents=bulk_all,
        copy_events=copy,
        bulk_events=bulk_figure,
        decode=decode,
        hot_spots=hot_spots,
        processes_pg=processes_pg,
        processes_both=processes_both,
    )


def _warm_up_opensearch(
    client: OpenSearch, messages: Sequence[tuple[bytes, bytes]], n: int
) -> None:
    """Index ``n`` event documents (the workload's, repeated as needed) into a scratch prefix
    through the product's sink, so that the node's JIT is warm before anything is timed."""
    now = _now()
    events = [decode_event(v, now=now, future_tolerance=FUTURE_TOLERANCE) for _, v in messages]
    with opensearch_prefix(client) as prefix:
        ensure_search_setup(client, prefix=prefix)
        sink = SearchSink(client, prefix)
        done = 0
        started = time.perf_counter()
        while done < n:
            chunk = events[: n - done]
            refused = sink.index_click_events(chunk)
            if refused:
                msg = f"warm-up: OpenSearch refused {len(refused)} documents"
                raise RuntimeError(msg)
            done += len(chunk)
            if done < n:  # the same ids again would only be version conflicts: use new ones
                client.indices.delete(index=f"{prefix}-events-*")
        _log.info(
            "OpenSearch warm-up: %d documents in %.1f s (not measured)",
            done,
            time.perf_counter() - started,
        )


def _check(got: int, want: int, what: str) -> None:
    if got != want:
        msg = f"expected {want} {what}, found {got}"
        raise RuntimeError(msg)


def _hot_spots(profile: cProfile.Profile, top: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# -- output ---------------------------------------------------------------------------------


def _verdict(value: float, goal: float) -> str:
    return "met" if value >= goal else "MISSED"


def _ratios(result: Throughput) -> list[tuple[str, float, str]]:
    """Each ratio the goals name, with its verdict, and others for information.

    The ceiling goal compares the whole pipeline (both sinks) with the slower sink's ceiling
    for the same rows as the pipeline stores: ``COPY`` of events, sessions and
    ``traffic_minute``; bulk requests of the event and session documents. The pipeline
    into PostgreSQL alone against ``COPY``, and both against the events-only ceilings (a
    fraction of the work), are shown for information.
    """
    ratios: list[tuple[str, float, str]] = []
    candidates = [
        (result.pipeline_pg, result.pipeline_both),
        (result.processes_pg, result.processes_both),
    ]
    copy, bulk = result.copy_same_rows, result.bulk_same_documents
    for pg, both in candidates:
        if pg is None:
            continue
        best = both if both is not None else pg
        versus_naive = best.rate / result.naive.rate
        ratios.append(
            (
                f"{best.name} / {result.naive.name}",
                versus_naive,
                f"goal >= {PIPELINE_GOAL:g}x: {_verdict(versus_naive, PIPELINE_GOAL)}",
            )
        )
        if both is not None and bulk is not None:
            slower = min(copy, bulk, key=lambda f: f.rate)
            ratios.append(_ceiling_ratio(both, slower, slower=True))
            if result.bulk_events is not None:
                ratios.append(_ceiling_ratio(both, result.bulk_events, note=_EVENTS_ALONE))
        ratios.append(_ceiling_ratio(pg, copy, note=_ONE_SINK if both is not None else None))
        ratios.append(_ceiling_ratio(pg, result.copy_events, note=_EVENTS_ALONE))
    return ratios


_EVENTS_ALONE: Final = "for information: the event rows or documents alone"
_ONE_SINK: Final = "for information: the goal is the whole pipeline's, against the slower sink"


def _ceiling_ratio(
    pipeline: Figure, ceiling: Figure, *, note: str | None = None, slower: bool = False
) -> tuple[str, float, str]:
    """``pipeline`` against ``ceiling``: the goal's verdict, or ``note`` when it is not one."""
    ratio = pipeline.rate / ceiling.rate
    label = f"slower sink's ceiling ({ceiling.name.split(': ', 1)[1]})" if slower else ceiling.name
    verdict = note or f"goal >= {CEILING_GOAL:.0%}: {_verdict(ratio, CEILING_GOAL)}"
    return f"{pipeline.name} / {label}", ratio, verdict


def _print_throughput(result: Throughput) -> None:
    figures: list[Figure] = [result.pipeline_pg]
    if result.pipeline_both is not None:
        figures.append(result.pipeline_both)
    figures.extend(f for f in (result.processes_pg, result.processes_both) if f is not None)
    figures.append(result.naive)
    figures.extend((result.copy_events, result.copy_same_rows))
    figures.extend(f for f in (result.bulk_events, result.bulk_same_documents) if f is not None)
    figures.append(result.decode)
    width = max(len(f.name) for f in figures)
    print(f"\n{'scenario':<{width}}  {'events':>8}  {'seconds':>8}  {'events/s':>9}  load(1m)")
    for figure in figures:
        print(
            f"{figure.name:<{width}}  {figure.count:>8,}  {figure.seconds:>8.2f}  "
            f"{figure.rate:>9,.0f}  {figure.load_1m:>8.2f}"
        )
    for pipeline in (result.pipeline_pg, result.pipeline_both):
        if pipeline is not None and pipeline.report:
            print(
                f"  {pipeline.name}: steady rate, first to last commit: "
                f"{pipeline.steady_rate:,.0f} events/s; sessions written "
                f"{pipeline.report.get('sessions_written', 0):,}, slow-path visitors "
                f"{pipeline.report.get('slow_path_users', 0):,}"
            )
    print()
    for name, value, goal in _ratios(result):
        shown = f"{value:,.1f}x" if value >= 2 else f"{value:.1%}"
        print(f"{name}: {shown}  ({goal})")
    _print_cpu([f for f in figures if f.cpu is not None])
    if result.hot_spots:
        print("\nhot spots of the consumer thread (cProfile, a separate unmeasured run):")
        print(result.hot_spots)


def _print_cpu(figures: Sequence[Figure]) -> None:
    """CPU per event of each scenario, split by service, and the rate those costs allow."""
    if not figures:
        return
    services = list(dict.fromkeys(name for f in figures if f.cpu for name in f.cpu.services))
    columns = [*services, "rest", "total"]
    width = max(len(f.name) for f in figures)
    cores = figures[0].cpu.cores if figures[0].cpu else 1
    print(
        f"\nCPU while each clock ran, in µs per event, all {cores} cores together; 'rest' is what"
        "\nno service accounts for (this benchmark, consumer processes, anything else); "
        f"'bound' = {cores} cores / total:"
    )
    head = "".join(f"  {c:>10}" for c in columns)
    print(f"{'scenario':<{width}}  {'busy':>5}  {'steal':>5}{head}  {'bound/s':>9}")
    for figure in figures:
        cpu = figure.cpu
        if cpu is None:
            continue
        per = cpu.per_item(figure.count)
        cells = "".join(f"  {per[c]:>10,.1f}" if c in per else f"  {'-':>10}" for c in columns)
        steal = cpu.steal / (cpu.seconds * cpu.cores) if cpu.seconds > 0 else 0.0
        print(
            f"{figure.name:<{width}}  {cpu.utilisation:>5.0%}  {steal:>5.0%}{cells}"
            f"  {cpu.bound(figure.count):>9,.0f}"
        )


def _print_latency(figure: LatencyFigure) -> None:
    print(
        f"\nlatency, {figure.produced:,} events offered at {figure.offered_rate:,.0f}/s for "
        f"{figure.seconds:.0f} s to {figure.processes} consumer process"
        f"{'es' if figure.processes > 1 else ''} (load(1m) {figure.load_1m:.2f}); caught up "
        f"{figure.drain_seconds:.1f} s after the last send"
    )
    for name, spread in (
        ("produce() -> PostgreSQL COMMIT", figure.to_postgres),
        ("produce() -> offsets committed", figure.to_offsets),
    ):
        print(
            f"  {name}: p50 {spread.p50 * 1000:,.0f} ms  p95 {spread.p95 * 1000:,.0f} ms  "
            f"p99 {spread.p99 * 1000:,.0f} ms  max {spread.max * 1000:,.0f} ms  "
            f"({spread.count:,} events)"
        )
    verdict = "met" if figure.to_postgres.p99 < LATENCY_GOAL_P99 else "MISSED"
    print(f"  goal p99 (to PostgreSQL COMMIT) < {LATENCY_GOAL_P99:g} s: {verdict}")
    print(f"  consumer: {figure.consumer_summary}")


def _print_soak(figure: SoakFigure) -> None:
    print(
        f"\nsoak, {figure.minutes:g} min at {figure.rate:,.0f} events/s "
        f"({figure.produced:,} events), consumer process RSS every sample:"
    )
    print(
        f"  first {figure.first:.1f} MiB, last {figure.last:.1f} MiB, max {figure.max:.1f} MiB; "
        f"slope {figure.slope_all:+.2f} MiB/min overall, "
        f"{figure.slope_after_first_minute:+.2f} MiB/min after the first minute"
    )
    print(
        f"  highest lag at a sample {figure.max_lag:,} messages; load(1m) "
        f"{figure.load_start:.2f} at the start, {figure.load_end:.2f} at the end"
    )
    print(f"  consumer: {figure.consumer_summary}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Figure):
        cpu = value.cpu
        return (
            {**asdict(value), "rate": value.rate}
            | ({"steady_rate": value.steady_rate} if isinstance(value, PipelineFigure) else {})
            | (
                {"cpu_us_per_event": cpu.per_item(value.count), "cpu_bound": cpu.bound(value.count)}
                if cpu is not None
                else {}
            )
        )
    if isinstance(value, Throughput):
        out = {k: _jsonable(getattr(value, k)) for k in value.__slots__}
        out["ratios"] = [{"name": n, "value": v, "goal": g} for n, v, g in _ratios(value)]
        return out
    if isinstance(value, LatencyFigure | SoakFigure):
        return asdict(value)
    return value


# -- entry point ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.consumer",
        description=(
            "Consumer events/s into PostgreSQL and into PostgreSQL + OpenSearch, against a naive "
            "per-message consumer and against each sink's bulk-write ceiling, all measured in the "
            "same run on the same simulated events; optionally produce-to-commit latency at a "
            "steady rate and the consumer's memory over a long run. Needs the local stack "
            "(python -m devstack up); every run uses its own topics, databases and indices and "
            "removes them afterwards."
        ),
        epilog=(
            "examples:\n"
            "  python -m bench.consumer\n"
            "  python -m bench.consumer --events 20000 --naive-events 500 --no-opensearch\n"
            "  python -m bench.consumer --latency --latency-rate 5000 --latency-seconds 60\n"
            "  python -m bench.consumer --no-throughput --soak-minutes 10\n"
            "  python -m bench.consumer --json > consumer-bench.json\n"
            "  python -m bench.consumer --profile consumer.prof   # adds a cProfile'd run"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bootstrap-servers", default="127.0.0.1:19092", help="Kafka (default: the local stack's)"
    )
    parser.add_argument(
        "--postgres-admin-url",
        default=DEFAULT_POSTGRES,
        help="SQLAlchemy URL of a role that may CREATE DATABASE (default: the local stack's)",
    )
    parser.add_argument(
        "--opensearch-url",
        default="http://127.0.0.1:19200",
        help="OpenSearch (default: the local stack's)",
    )
    sinks = parser.add_mutually_exclusive_group()
    sinks.add_argument(
        "--with-opensearch",
        dest="with_opensearch",
        action="store_true",
        default=True,
        help="also measure the pipeline with OpenSearch, and OpenSearch's ceiling (default)",
    )
    sinks.add_argument(
        "--no-opensearch",
        dest="with_opensearch",
        action="store_false",
        help="PostgreSQL only (the latency and soak consumers too)",
    )
    parser.add_argument(
        "--events", type=int, default=100_000, help="events per pipeline run (default 100000)"
    )
    parser.add_argument(
        "--naive-events",
        type=int,
        default=2000,
        help="events for the slow naive baseline; rates are compared (default 2000)",
    )
    parser.add_argument("--batch-size", type=int, default=2000, help="consumer batch size")
    parser.add_argument(
        "--warm-up-documents",
        type=int,
        default=300_000,
        metavar="N",
        help="event documents OpenSearch indexes into a scratch prefix before the throughput "
        "scenarios, so that a freshly started node's JIT is warm (not measured; default "
        "300000; 0 to skip)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=6,
        help="partitions of the topics (default 6, as the Aiven deployment's)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        metavar="N",
        help="also run each pipeline as N consumer processes in one group, the way a deployment"
        " uses more cores (default 2; 1 to skip)",
    )
    parser.add_argument("--seed", type=int, default=42, help="simulator seed (default 42)")
    parser.add_argument(
        "--throughput",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the throughput scenarios and baselines (default on)",
    )
    parser.add_argument("--latency", action="store_true", help="run the latency scenario")
    parser.add_argument(
        "--latency-rate", type=float, default=5000.0, help="offered events/s (default 5000)"
    )
    parser.add_argument(
        "--latency-seconds", type=float, default=60.0, help="seconds of offering (default 60)"
    )
    parser.add_argument(
        "--latency-processes",
        type=int,
        default=1,
        metavar="N",
        help="consumer processes in the group for the latency scenario (default 1)",
    )
    parser.add_argument(
        "--soak-minutes", type=float, metavar="M", help="run the memory soak for M minutes"
    )
    parser.add_argument(
        "--soak-rate",
        type=float,
        default=500.0,
        help="soak events/s, well below capacity so that backlogs do not blur the memory figure"
        " (default 500)",
    )
    parser.add_argument(
        "--sample-seconds",
        type=float,
        default=10.0,
        help="seconds between the soak's RSS samples (default 10)",
    )
    parser.add_argument("--profile", metavar="FILE", help="add a cProfile'd run; write pstats")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return parser


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected scenarios; print rates and ratios (or JSON). Returns the exit status."""
    args = _parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        # Unwind on SIGTERM/SIGHUP too, so that every topic, database, index and consumer
        # process this run created is removed (the ``with`` blocks and ``finally`` clauses).
        signal.signal(signal.SIGTERM, _exit_on_signal)
        signal.signal(signal.SIGHUP, _exit_on_signal)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    _log.setLevel(logging.INFO)
    if not args.verbose:
        # The local node has no ISM plugin; the sink says so at every start. Expected here.
        logging.getLogger("clickstream.search.setup").setLevel(logging.ERROR)
    if args.events < 1 or args.naive_events < 1 or args.batch_size < 1:
        print("--events, --naive-events and --batch-size must be positive", file=sys.stderr)
        return 2
    if args.warm_up_documents < 0:
        print("--warm-up-documents must be 0 or more", file=sys.stderr)
        return 2
    meter = CpuMeter(
        {
            "PostgreSQL": local_port(args.postgres_admin_url, 5432),
            "OpenSearch": local_port(args.opensearch_url, 9200) if args.with_opensearch else None,
            "Kafka": local_port(args.bootstrap_servers, 9092),
        }
    )
    stack = Stack(args.bootstrap_servers, args.postgres_admin_url, args.opensearch_url, meter)
    client = make_client(stack.opensearch_url) if args.with_opensearch else None
    results: dict[str, Any] = {
        "date": f"{_now():%Y-%m-%d %H:%M} UTC",
        "machine": machine(),
        "command": "python -m bench.consumer " + " ".join(sys.argv[1:] if argv is None else argv),
        "events": args.events,
        "batch_size": args.batch_size,
        "partitions": args.partitions,
        "load_at_start": load_average(),
        "cpu_metered": meter.describe(),
    }
    if not args.json:
        print(f"consumer benchmark, {results['date']}, {results['machine']}")
        print(
            f"load average at start {results['load_at_start'][0]:.2f} "
            f"{results['load_at_start'][1]:.2f} {results['load_at_start'][2]:.2f}; "
            f"{args.partitions} partitions, batch {args.batch_size}"
            + (f", {args.events:,} events per pipeline run" if args.throughput else "")
        )
        print(f"CPU metered for {results['cpu_metered']}")
    if args.throughput:
        throughput = _throughput(stack, client, args)
        results["throughput"] = _jsonable(throughput)
        if not args.json:
            _print_throughput(throughput)
    if args.latency:
        latency = _latency(
            stack,
            client,
            rate=args.latency_rate,
            seconds=args.latency_seconds,
            processes=args.latency_processes,
            batch_size=args.batch_size,
            partitions=args.partitions,
        )
        results["latency"] = _jsonable(latency)
        if not args.json:
            _print_latency(latency)
    if args.soak_minutes:
        soak = _soak(
            stack,
            client,
            minutes=args.soak_minutes,
            rate=args.soak_rate,
            sample_seconds=args.sample_seconds,
            batch_size=args.batch_size,
            partitions=args.partitions,
            progress=not args.json,
        )
        results["soak"] = _jsonable(soak)
        if not args.json:
            _print_soak(soak)
    results["load_at_end"] = load_average()
    if args.json:
        json.dump(results, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        end = results["load_at_end"]
        print(f"\nload average at end {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

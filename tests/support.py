"""Helpers shared by the integration tests: producing, reading back, snapshots, fault injection."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from sqlalchemy import Engine, create_engine, text

from clickstream.events import ClickEvent
from clickstream.sessions import SessionEvent, build_sessions
from clickstream.store import BatchOutcome, PositionedEvent, SessionRules, session_row, write_batch

ROOT = Path(__file__).resolve().parent.parent

MINIMAL_EVENT: dict[str, Any] = {
    "event_id": "3f2b8c1e-9d4a-4c6b-8e2f-1a7d5c9b0e44",
    "event_type": "page_view",
    "occurred_at": "2026-11-30T11:59:00Z",
    "user_id": "visitor-1",
    "page_url": "https://shop.example.com/",
    "page_type": "home",
    "device_type": "desktop",
}
"""A valid event with only the required fields (tests derive others from it with ``|``)."""

KINDS = ["page_view", "search", "add_to_cart", "remove_from_cart", "begin_checkout", "purchase"]

PAGES = [
    ("home", "/"),
    ("category", "/c/shoes"),
    ("product", "/p/1"),
    ("product", "/p/2"),
    ("search", "/search?q=x"),
    ("cart", "/cart"),
    ("checkout", "/checkout"),
]


def random_events(
    seed: int, *, users: int, per_user: int, start: datetime | None = None
) -> list[dict[str, Any]]:
    """Events with gaps around the 30-minute boundary, ties, purchases and sources.

    Per user, events are in time order; across users they interleave by time.
    """
    rng = random.Random(seed)
    start = start or datetime(2024, 6, 1, tzinfo=UTC)
    out: list[tuple[datetime, dict[str, Any]]] = []
    for u in range(users):
        at = start + timedelta(minutes=rng.randint(0, 120))
        device = rng.choice(["desktop", "mobile", "tablet"])
        country = rng.choice(["DE", "US", "FR", None])
        referrer = rng.choice([None, "https://www.google.com/", "https://t.co/x"])
        for _ in range(rng.randint(1, per_user)):
            at += timedelta(
                minutes=rng.choice([0, 1, 2, 5, 29, 30, 31, 90]), seconds=rng.choice([0, 0, 1, 30])
            )
            page_type, path = rng.choice(PAGES)
            kind = rng.choices(
                [
                    "page_view",
                    "search",
                    "add_to_cart",
                    "remove_from_cart",
                    "begin_checkout",
                    "purchase",
                ],
                [60, 8, 12, 3, 6, 4],
            )[0]
            data: dict[str, Any] = {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "event_type": kind,
                "occurred_at": at.isoformat().replace("+00:00", "Z"),
                "user_id": f"user-{seed}-{u}",
                "page_url": "https://shop.example" + path,
                "page_type": "confirmation" if kind == "purchase" else page_type,
                "device_type": device,
                "referrer_url": referrer,
                "country": country,
            }
            if country:
                data["city"] = {"DE": "Berlin", "US": "Boston", "FR": "Paris"}[country]
                data["latitude"], data["longitude"] = 52.5, 13.4
            if kind == "purchase":
                data |= {
                    "order_id": f"o-{rng.getrandbits(32)}",
                    "revenue": round(rng.uniform(1, 300), 2),
                    "currency": "EUR",
                }
            out.append((at, data))
    out.sort(key=lambda pair: pair[0])
    return [data for _, data in out]


def write_in_random_batches(
    engine: Engine, events: Sequence[ClickEvent], rng: random.Random, rules: SessionRules
) -> BatchOutcome:
    """Store ``events`` in their order with ``write_batch``, in batches of random sizes of 1 to
    40 events, one transaction each; returns what all the batches changed."""
    total = BatchOutcome()
    position = 0
    while position < len(events):
        size = rng.choice([1, 2, 3, 7, 40])
        batch = events[position : position + size]
        with engine.begin() as conn:
            positioned = [PositionedEvent(e, 0, position + i) for i, e in enumerate(batch)]
            total.add(write_batch(conn, events=positioned, rules=rules))
        position += size
    return total


def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes | None]],
) -> int:
    """Produce (key, value) pairs and wait for every acknowledgement; returns the count."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    failures: list[str] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    count = 0
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not failures, failures
    return count


def produce_events(bootstrap: str, topic: str, events: Iterable[dict[str, Any]]) -> int:
    return produce(
        bootstrap, topic, ((e["user_id"].encode(), json.dumps(e).encode()) for e in events)
    )


@dataclass(frozen=True)
class Received:
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    partition: int
    offset: int


def messages_on(bootstrap: str, topic: str) -> int:
    """How many messages the topic holds (its partitions' end offsets added up)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{uuid.uuid4()}"})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in partitions
        )
    finally:
        consumer.close()


def read_all(bootstrap: str, topic: str, *, expected: int, timeout: float = 60) -> list[Received]:
    """Read a topic from the beginning until ``expected`` messages (or the timeout)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[Received] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for message in consumer.consume(1000, 1.0):
                if message.error():
                    continue
                headers = {k: (v or b"").decode() for k, v in (message.headers() or [])}
                got.append(
                    Received(
                        message.key(),
                        message.value(),
                        headers,
                        message.partition() or 0,
                        message.offset() or 0,
                    )
                )
        # a little longer, to catch messages beyond the expected count
        for message in consumer.consume(1000, 2.0):
            if not message.error():
                headers = {k: (v or b"").decode() for k, v in (message.headers() or [])}
                got.append(
                    Received(
                        message.key(),
                        message.value(),
                        headers,
                        message.partition() or 0,
                        message.offset() or 0,
                    )
                )
    finally:
        consumer.close()
    return got


def consumer_env(
    *,
    bootstrap: str,
    topic: str,
    group: str,
    database_url: str,
    opensearch_url: str = "",
    index_prefix: str = "clickstream",
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
    env |= {
        "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CLICKSTREAM_TOPIC": topic,
        "CLICKSTREAM_DLQ_TOPIC": topic + ".dlq",
        "CLICKSTREAM_CONSUMER_GROUP": group,
        "CLICKSTREAM_DATABASE_URL": database_url,
        "CLICKSTREAM_OPENSEARCH_URL": opensearch_url,
        "CLICKSTREAM_OPENSEARCH_INDEX_PREFIX": index_prefix,
    }
    return env


def start_consumer(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m clickstream.consume`` as a child process, logging to ``log``."""
    handle = log.open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clickstream.consume",
            "--progress-interval",
            "2",
            "--session-timeout",
            "6",
            *args,
        ],
        env=env,
        cwd=ROOT,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


def run_consumer(env: dict[str, str], *args: str, log: Path, timeout: float = 300) -> str:
    """Run the consumer until it is caught up and idle; return its output; assert exit 0."""
    process = start_consumer(env, "--exit-when-idle", "4", *args, log=log)
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    output = log.read_text(errors="replace")
    assert code == 0, output[-4000:]
    return output


def kill_hard(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(30)


# --- database snapshots -------------------------------------------------------------------------

_VOLATILE = {"ingested_at", "updated_at", "kafka_partition", "kafka_offset"}


def snapshot(database_url: str, table: str, key: Sequence[str]) -> list[dict[str, Any]]:
    """All rows of a table without bookkeeping columns, in key order."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT * FROM {table} ORDER BY {', '.join(key)}"))
            return [{k: v for k, v in row._mapping.items() if k not in _VOLATILE} for row in rows]
    finally:
        engine.dispose()


def scalar(database_url: str, sql: str) -> Any:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def expected_sessions(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sessions the definition yields for these event dicts (first copy of an event_id wins)."""
    from clickstream.events import ClickEvent

    return definition_sessions(
        (ClickEvent.model_validate_json(json.dumps(data)) for data in events),
        gap=timedelta(minutes=30),
        max_length=timedelta(hours=24),
    )


def definition_sessions(
    events: Iterable[Any], *, gap: timedelta, max_length: timedelta
) -> list[dict[str, Any]]:
    """``sessions`` rows of the pure definition over ``ClickEvent`` s, sorted by session_id."""
    distinct: dict[str, Any] = {}
    for event in events:
        distinct.setdefault(event.event_id, event)
    by_user: dict[str, list[SessionEvent]] = {}
    for e in distinct.values():
        by_user.setdefault(e.user_id, []).append(
            SessionEvent(
                e.event_id,
                e.occurred_at,
                str(e.event_type),
                e.page_url,
                str(e.page_type),
                e.referrer_url,
                e.utm_source,
                str(e.device_type),
                e.os,
                e.browser,
                e.country,
                e.city,
                e.revenue,
            )
        )
    rows = []
    for user, mine in by_user.items():
        for s in build_sessions(user, mine, gap=gap, max_length=max_length):
            row = session_row(s)
            row["revenue"] = Decimal(row["revenue"]).quantize(Decimal("0.01"))
            rows.append(row)
    rows.sort(key=lambda r: r["session_id"])
    return rows


def traffic_matches_events(database_url: str) -> tuple[Any, Any]:
    """(totals from traffic_minute, the same aggregates over events)."""
    from_minutes = scalar(
        database_url,
        "SELECT concat_ws('|', sum(events), sum(page_views), sum(add_to_carts), sum(purchases),"
        " sum(revenue)) FROM traffic_minute",
    )
    from_events = scalar(
        database_url,
        "SELECT concat_ws('|', count(*), count(*) FILTER (WHERE event_type='page_view'),"
        " count(*) FILTER (WHERE event_type='add_to_cart'),"
        " count(*) FILTER (WHERE event_type='purchase'),"
        " coalesce(sum(revenue) FILTER (WHERE event_type='purchase'), 0)) FROM events",
    )
    return from_minutes, from_events


def per_minute_mismatches(database_url: str) -> int:
    """Rows where traffic_minute differs from the same aggregate over events."""
    return int(
        scalar(
            database_url,
            """
            WITH e AS (
              SELECT date_trunc('minute', occurred_at) AS minute, device_type,
                     coalesce(country, '') AS country, count(*) AS events,
                     count(*) FILTER (WHERE event_type = 'page_view') AS page_views,
                     count(*) FILTER (WHERE event_type = 'add_to_cart') AS add_to_carts,
                     count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
                     coalesce(sum(revenue) FILTER (WHERE event_type = 'purchase'), 0) AS revenue
              FROM events GROUP BY 1, 2, 3)
            SELECT count(*) FROM e FULL JOIN traffic_minute t USING (minute, device_type, country)
            WHERE e.events IS DISTINCT FROM t.events
               OR e.page_views IS DISTINCT FROM t.page_views
               OR e.add_to_carts IS DISTINCT FROM t.add_to_carts
               OR e.purchases IS DISTINCT FROM t.purchases
               OR e.revenue IS DISTINCT FROM t.revenue
            """,
        )
    )


# --- fault injection ----------------------------------------------------------------------------


class Blackout:
    """A TCP proxy in front of a real server that can be switched off and on.

    Switched off, it drops every open connection and refuses new ones: to a client the server
    looks down, while the real server (shared by other tests) keeps running. Hung
    (:meth:`hang`), it keeps every connection open and accepts new ones but forwards nothing:
    the server looks hung, as a stopped process or a silent network does.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._hung = threading.Event()
        self.holding = threading.Event()
        """Set once a hang holds back bytes: a client's request or the answer it waits for."""
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while self._up.is_set():
                readable, _, _ = select.select([a, b], [], [], 0.2)
                if self._hung.is_set():
                    if readable:  # a request, or the answer a client waits for
                        self.holding.set()
                    time.sleep(0.05)  # hold the bytes where they are
                    continue
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except OSError:
            pass
        finally:
            for sock in (a, b):
                with self._lock:
                    self._open.discard(sock)
                with suppress(OSError):
                    sock.close()

    def down(self) -> None:
        self._up.clear()
        with self._lock:
            for sock in list(self._open):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def up(self) -> None:
        self._up.set()

    def hang(self) -> None:
        """Forward nothing more, with every connection kept open, until :meth:`resume`."""
        self.holding.clear()
        self._hung.set()

    def resume(self) -> None:
        self._hung.clear()

    def close(self) -> None:
        self.down()
        self._closed.set()
        self._listener.close()


@contextmanager
def blackout(host: str, port: int) -> Iterator[Blackout]:
    proxy = Blackout(host, port)
    try:
        yield proxy
    finally:
        proxy.close()


def wait_until(predicate: Any, *, timeout: float, interval: float = 0.2, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def sample_session_row(session_id: str, **fields: Any) -> dict[str, Any]:
    """A valid ``sessions`` row (a one-event bounce of 2024-05-01) with ``fields`` replaced."""
    row: dict[str, Any] = {
        "session_id": session_id,
        "user_id": "u-1",
        "started_at": datetime(2024, 5, 1, 9, 0, tzinfo=UTC),
        "ended_at": datetime(2024, 5, 1, 9, 0, tzinfo=UTC),
        "duration_seconds": 0.0,
        "event_count": 1,
        "page_views": 1,
        "purchases": 0,
        "revenue": Decimal("0.00"),
        "converted": False,
        "bounced": True,
        "entry_page": "https://shop.example/",
        "exit_page": "https://shop.example/",
        "conversion_path": None,
        "traffic_source": "direct",
        "device_type": "desktop",
        "os": None,
        "browser": None,
        "country": None,
        "city": None,
        "funnel_step": 0,
        "updated_at": datetime(2024, 5, 3, tzinfo=UTC),
    }
    row.update(fields)
    return row

"""Throw-away resources and measurements shared by the benchmarks.

Every benchmark run works on its own Kafka topics, PostgreSQL databases and OpenSearch prefixes,
created here and removed again when the ``with`` block ends, so a run never touches (or
depends on) anyone else's data on a shared local stack.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psycopg
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from opensearchpy import OpenSearch
from opensearchpy.exceptions import NotFoundError, TransportError
from psycopg import sql
from sqlalchemy.engine import make_url

from clickstream.db.migrate import upgrade
from clickstream.search.indices import ism_policy_id, template_name

__all__ = [
    "Topics",
    "fresh_database",
    "fresh_topics",
    "libpq_url",
    "load_average",
    "machine",
    "opensearch_prefix",
    "percentile",
    "rss_mib",
    "slope_per_minute",
    "unique",
]


def unique(prefix: str) -> str:
    """``prefix`` plus 10 random hex digits (lower case, valid for topics, databases, indices)."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def rss_mib(pid: int | None = None) -> float:
    """Resident set size of process ``pid`` (default: this one) in MiB, from ``/proc`` (Linux)."""
    status = Path(f"/proc/{pid or 'self'}/status").read_text(encoding="ascii")
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # the kernel reports kB
    msg = f"no VmRSS in /proc/{pid or 'self'}/status"
    raise RuntimeError(msg)


def load_average() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages, as ``uptime`` prints them."""
    return os.getloadavg()


def machine() -> str:
    """A one-line description of this machine: CPU count, memory, Python."""
    memory = ""
    with suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text(encoding="ascii").split()[1])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    return (
        f"{os.cpu_count()} CPUs{memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank, ``0 < fraction <= 1``) of non-empty ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def slope_per_minute(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(seconds, value)`` samples, in value units per minute."""
    if len(samples) < 2:
        return 0.0
    xs = [x for x, _ in samples]
    ys = [y for _, y in samples]
    return statistics.linear_regression(xs, ys).slope * 60


@dataclass(frozen=True, slots=True)
class Topics:
    """An events topic and its dead-letter topic."""

    events: str
    dlq: str


@contextmanager
def fresh_topics(bootstrap: str, *, partitions: int = 3) -> Iterator[Topics]:
    """Create an events topic with ``partitions`` partitions and ``<topic>.dlq``; delete both after.

    The topics exist and every partition has a leader when the block starts.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    events = unique("bench-consumer-")
    topics = Topics(events, f"{events}.dlq")
    new = [NewTopic(topics.events, partitions, 1), NewTopic(topics.dlq, 1, 1)]
    for future in admin.create_topics(new, operation_timeout=30).values():
        future.result(timeout=30)
    try:
        deadline = time.monotonic() + 30
        while True:
            meta = admin.list_topics(topic=topics.events, timeout=5).topics.get(topics.events)
            if (
                meta is not None
                and meta.error is None
                and len(meta.partitions) == partitions
                and all(p.leader >= 0 for p in meta.partitions.values())
            ):
                break
            if time.monotonic() > deadline:
                msg = f"topic {topics.events} has no leaders after 30 s"
                raise TimeoutError(msg)
            time.sleep(0.1)
        yield topics
    finally:
        for future in admin.delete_topics([topics.events, topics.dlq]).values():
            with suppress(Exception):  # best effort: never hide the benchmark's own error
                future.result(timeout=30)


def libpq_url(sqlalchemy_url: str) -> str:
    """The libpq form (``postgresql://``) of a SQLAlchemy PostgreSQL URL."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


@contextmanager
def fresh_database(admin_url: str, *, migrate: bool = True) -> Iterator[str]:
    """A new PostgreSQL database (SQLAlchemy URL) at the schema's head; dropped afterwards.

    ``admin_url`` is a SQLAlchemy URL whose role may ``CREATE DATABASE``.
    """
    name = unique("bench_")
    admin = libpq_url(admin_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        if migrate:
            upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def opensearch_prefix(client: OpenSearch) -> Iterator[str]:
    """A unique index prefix; its indices, index templates and ISM policy are deleted after."""
    prefix = unique("bench-")
    try:
        yield prefix
    finally:
        with suppress(TransportError):
            client.indices.delete(index=f"{prefix}-*", expand_wildcards="all", ignore=[404])
        for kind in ("events", "sessions"):
            with suppress(NotFoundError, TransportError):
                client.indices.delete_index_template(name=template_name(prefix, kind))
        with suppress(TransportError):  # 404, or 400 on a node without the ISM plugin
            client.transport.perform_request(
                "DELETE",
                f"/_plugins/_ism/policies/{ism_policy_id(prefix)}",
                params={"ignore": [400, 404]},
            )

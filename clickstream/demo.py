"""``python -m clickstream.demo``: the whole pipeline in one process, with nothing to install.

Right after ``pip install -e .`` and with no server or cloud account, this runs:

* **Kafka**: librdkafka's in-process mock cluster (``test.mock.num.brokers``), a real Kafka
  protocol endpoint on a loopback port that lives as long as this process;
* **the database**: a SQLite file, created by the same Alembic migrations as production;
* **the producer**: the real simulator and Kafka producer adapter, sending live shop traffic at
  ``--rate`` events per second (each event when its time comes);
* **the consumer**: the real :func:`clickstream.consume.run` loop (validation, dead letters,
  sessions, per-minute traffic, offsets committed after the database), OpenSearch off;
* **the dashboard**: :mod:`clickstream.dashboard`, refreshing itself.

Production replaces the first two with Apache Kafka (Aiven) and PostgreSQL, adds OpenSearch,
and runs the producer, consumer and dashboard as separate processes. The mock cluster keeps
only a few megabytes per partition and is not a broker to test delivery guarantees on.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Final

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from sqlalchemy import Engine, func, select

from clickstream.cli import add_log_level, configure_logging
from clickstream.consume import ConsumerOptions, run
from clickstream.dashboard.server import DashboardApp, DashboardServer
from clickstream.db import make_engine
from clickstream.db.migrate import upgrade
from clickstream.db.models import events_table
from clickstream.errors import ClickstreamError, TransientError
from clickstream.producer import EventProducer, ProducerTuning, producer_config
from clickstream.settings import Settings, load_settings
from clickstream.simulator import SimulatedEvent, SimulatorConfig, TrafficSimulator

__all__ = ["DemoOptions", "main", "run_demo"]

_log = logging.getLogger("clickstream.demo")

_BACKFILL_WINDOW: Final = timedelta(hours=1)
_WARM_UP: Final = timedelta(minutes=10)
"""Without --backfill the shop opens this long before the demo starts, so visits are underway
and the traffic runs at its steady rate from the first second (a cold start takes minutes)."""
_DRAIN_TIMEOUT_S: Final = 30.0
"""At shutdown, how long the consumer may take to store what was already produced."""
_PROGRESS_S: Final = 15.0
_MAX_LAG: Final = 20_000
"""Events the producer may run ahead of the consumer while it sends the simulated past."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What the demo runs and for how long."""

    host: str = "127.0.0.1"
    port: int = 8050
    rate: float = 30.0
    duration: float | None = None
    backfill: bool = False
    seed: int | None = None
    data_dir: Path | None = None
    refresh: float = 2.0


@dataclass
class _Totals:
    sent: int = 0
    failures: list[str] = field(default_factory=list)


def _mock_cluster() -> tuple[AdminClient, str]:
    """Start librdkafka's mock cluster; return its owner and the broker's ``host:port``."""
    # log_level 4: warnings and errors only (the mock announces itself at level 5).
    admin = AdminClient({"test.mock.num.brokers": 1, "log_level": 4})
    metadata = admin.list_topics(timeout=10)
    broker = next(iter(metadata.brokers.values()))
    return admin, f"{broker.host}:{broker.port}"


def _wait_for_topic(admin: AdminClient, topic: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = admin.list_topics(topic=topic, timeout=5).topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            return
        time.sleep(0.1)
    msg = f"the mock cluster did not create topic {topic!r} within {timeout:g} s"
    raise TransientError(msg)


def _send_all(producer: EventProducer, events: Iterable[SimulatedEvent], totals: _Totals) -> None:
    for event in events:
        if not producer.send(event.visitor.key, event.to_json()):
            return
        totals.sent += 1


def _produce_live(
    producer: EventProducer,
    events: Iterable[SimulatedEvent],
    totals: _Totals,
    stop: threading.Event,
    stored: Callable[[], int],
) -> None:
    """Send each event when the wall clock reaches its ``occurred_at``, until ``stop``.

    Past events go out at once, but never more than :data:`_MAX_LAG` ahead of what the
    consumer stored: the mock cluster keeps only a few megabytes per partition and would drop
    what a lagging consumer has not read yet.
    """
    next_report = time.monotonic() + _PROGRESS_S
    for event in events:
        while not stop.is_set():
            wait_ms = event.occurred_ms - time.time() * 1000
            if wait_ms > 0:
                producer.poll(min(wait_ms / 1000, 0.2))
            elif totals.sent % 1000 == 0 and totals.sent - stored() > _MAX_LAG:
                producer.poll(0.2)
            else:
                break
        if stop.is_set() or not producer.send(event.visitor.key, event.to_json()):
            break
        totals.sent += 1
        if time.monotonic() >= next_report:
            next_report = time.monotonic() + _PROGRESS_S
            _log.info(
                "produced %d events (delivered %d, failed %d)",
                totals.sent,
                producer.stats.delivered,
                producer.stats.failed,
            )


def _stored(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(events_table)).scalar_one())


class _Worker(threading.Thread):
    """A daemon thread that records the error it died of (the demo then stops)."""

    def __init__(self, name: str, target: Callable[[], Any], failed: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self._target_call = target
        self._failed = failed
        self.error: BaseException | None = None
        self.result: Any = None

    def run(self) -> None:
        try:
            self.result = self._target_call()
        except BaseException as exc:  # reported by the main thread, which then stops
            self.error = exc
            _log.exception("%s failed", self.name)
            self._failed.set()


def _banner(settings: Settings, database: Path, url: str, options: DemoOptions) -> str:
    rows = [
        ("Kafka", f"librdkafka mock cluster at {settings.kafka_bootstrap_servers}",
         "Apache Kafka (e.g. Aiven for Apache Kafka)"),
        ("Database", f"SQLite {database}", "PostgreSQL (e.g. Aiven for PostgreSQL)"),
        ("Search", "off", "OpenSearch + OpenSearch Dashboards"),
        ("Producer", f"simulated shop traffic, {options.rate:g} events/s",
         "your site's tracker, or python -m clickstream.produce"),
        ("Consumer", "clickstream.consume.run in a thread", "python -m clickstream.consume"),
        ("Dashboard", url, "python -m clickstream.dashboard"),
    ]  # fmt: skip
    width = max(len(here) for _name, here, _there in rows)  # a temporary path can be long
    lines = ["", "clickstream demo: the whole pipeline in this process", ""]
    lines.append(f"  {'':<10} {'embedded here':<{width}}  production")
    lines.extend(f"  {name:<10} {here:<{width}}  {there}" for name, here, there in rows)
    stop = (
        f"Stops by itself after {options.duration:g} s, or press Ctrl-C."
        if options.duration
        else "Press Ctrl-C to stop."
    )
    lines += ["", f"  Open {url} in a browser. {stop}", ""]
    return "\n".join(lines) + "\n"


def run_demo(options: DemoOptions, *, stop: threading.Event, out: Any = None) -> int:
    """Run the embedded pipeline until ``stop`` is set or ``options.duration`` elapses.

    Writes the banner and the final summary to ``out`` (default stdout). Returns 0 on a clean
    stop, 1 when a part of the pipeline failed.
    """
    out = out if out is not None else sys.stdout
    temporary = options.data_dir is None
    data_dir = (
        Path(tempfile.mkdtemp(prefix="clickstream-demo-"))
        if options.data_dir is None
        else options.data_dir
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    database = data_dir / "clickstream-demo.db"
    database_url = f"sqlite:///{database}"
    try:
        upgrade(database_url)
        admin, bootstrap = _mock_cluster()
        settings = load_settings(
            role="admin",
            overrides={
                "kafka_bootstrap_servers": bootstrap,
                "database_url": database_url,
                "opensearch_url": "",
                "consumer_group": "clickstream-demo",
            },
            environ={},  # the demo never picks up a real cluster from CLICKSTREAM_* variables
        )
        try:
            return _run(
                options, settings, admin, database=database, stop=stop, out=out, keep=not temporary
            )
        finally:
            del admin  # the mock cluster ends with its owner, after every client closed
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)


def _run(
    options: DemoOptions,
    settings: Settings,
    admin: AdminClient,
    *,
    database: Path,
    stop: threading.Event,
    out: Any,
    keep: bool,
) -> int:
    seed = options.seed if options.seed is not None else secrets.randbits(32)
    engine = make_engine(settings.database_url.get_secret_value(), application_name="demo")
    producer = EventProducer(
        producer_config(settings, ProducerTuning(client_id="clickstream-demo")),
        topic=settings.topic,
    )
    totals = _Totals()
    # The simulated shop opens `history` ago: the events of that past (sent at once) fill the
    # dashboard and bring the traffic to its steady rate; later ones are sent in real time.
    history = _BACKFILL_WINDOW if options.backfill else _WARM_UP
    events = TrafficSimulator(
        replace(SimulatorConfig(), events_per_second=options.rate),
        seed=seed,
        clock=_utc_now,
        start=_utc_now() - history,
    ).events()
    _log.info("simulating from %s ago at %g events/s (seed %d)", history, options.rate, seed)
    # The first event creates the topic, so the consumer finds it when it subscribes.
    _send_all(producer, [next(events)], totals)
    producer.flush(timeout=10)
    _wait_for_topic(admin, settings.topic, timeout=30)

    failed = threading.Event()
    consumer_stop, producer_stop = threading.Event(), threading.Event()
    consumer = _Worker(
        "consumer",
        lambda: run(
            settings,
            ConsumerOptions(opensearch=False, progress_interval=_PROGRESS_S, batch_size=1000),
            stop=consumer_stop,
        ),
        failed,
    )
    producing = _Worker(
        "producer",
        lambda: _produce_live(producer, events, totals, producer_stop, lambda: _stored(engine)),
        failed,
    )
    banner = (
        f"Demo: Kafka is librdkafka's in-process mock cluster and the database is SQLite "
        f"({database.name}); production uses Apache Kafka and PostgreSQL, plus OpenSearch."
    )
    app = DashboardApp(engine, refresh_seconds=options.refresh, banner=banner)
    try:
        server = DashboardServer(app, host=options.host, port=options.port)
    except OSError as exc:
        _log.error(
            "cannot listen on %s:%d: %s (another port: --port N, or --port 0 for any free one)",
            options.host,
            options.port,
            exc,
        )
        producer.flush(timeout=5)
        engine.dispose()
        return 2
    consumer.start()
    producing.start()
    server.start()
    out.write(_banner(settings, database, server.url, options))
    out.flush()

    deadline = time.monotonic() + options.duration if options.duration else None
    interrupted = False
    try:
        while not stop.is_set() and not failed.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                _log.info("ran for %g s: stopping", options.duration)
                break
            stop.wait(0.2)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        _log.info("stopping: producer, then consumer, then dashboard")
        producer_stop.set()
        producer.cancel()
        producing.join(timeout=30)
        producer.flush(timeout=10)
        delivered = producer.stats.delivered
        if not interrupted and not failed.is_set():
            _drain(engine, delivered, failed)
        # Closing clients of the in-process cluster log "FAIL ... Disconnected" at INFO: the
        # expected end of a connection here, not a fault (warnings still show).
        client_log = logging.getLogger("clickstream.librdkafka")
        client_level = client_log.level
        client_log.setLevel(logging.WARNING)
        consumer_stop.set()
        consumer.join(timeout=60)
        client_log.setLevel(client_level)
        server.close()
        stored = _stored(engine)
        engine.dispose()
    errors = [f"{w.name}: {w.error}" for w in (consumer, producing) if w.error is not None]
    out.write(
        f"\nproduced {totals.sent:,} events (delivered {delivered:,}); "
        f"the database holds {stored:,} events" + (f"; kept in {database}" if keep else "") + "\n"
    )
    if errors:
        out.write("failed: " + "; ".join(errors) + "\n")
    out.flush()
    return 1 if errors else 0


def _drain(engine: Engine, delivered: int, failed: threading.Event) -> None:
    """Give the consumer a little time to store what the broker acknowledged."""
    deadline = time.monotonic() + _DRAIN_TIMEOUT_S
    while time.monotonic() < deadline and not failed.is_set():
        if _stored(engine) >= delivered:
            return
        time.sleep(0.2)
    _log.warning("the consumer had not stored every delivered event when the demo stopped")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        msg = f"must be > 0, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


_positive.__name__ = "float"  # argparse says "invalid float value: 'abc'"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clickstream.demo",
        description=(
            "Run the whole clickstream pipeline in one process with nothing to install: "
            "librdkafka's in-process mock Kafka cluster, a SQLite database built by the Alembic "
            "migrations, the real simulator and producer, the real consumer, and the live "
            "dashboard. Production uses Apache Kafka, PostgreSQL and OpenSearch instead."
        ),
        epilog=(
            "examples:\n"
            "  python -m clickstream.demo                       # open http://127.0.0.1:8050/\n"
            "  python -m clickstream.demo --backfill            # start with an hour of history\n"
            "  python -m clickstream.demo --rate 50 --port 9000\n"
            "  python -m clickstream.demo --duration 60 --data-dir .clickstream-demo\n\n"
            "Ctrl-C stops the producer, lets the consumer store what was sent, and exits 0.\n"
            "Without --data-dir the database lives in a temporary folder removed at exit."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="dashboard address (default %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8050, help="dashboard port (default %(default)s; 0 = any free)"
    )
    parser.add_argument(
        "--rate", type=_positive, default=30.0, help="live events per second (default %(default)s)"
    )
    parser.add_argument(
        "--duration",
        type=_positive,
        metavar="SECONDS",
        help="stop after SECONDS (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--backfill",
        action="store_true",
        help="start with the last hour of traffic (at --rate) instead of the last 10 minutes",
    )
    parser.add_argument("--seed", type=int, help="simulator seed (default: random)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep the SQLite database in this folder (default: a temp dir)",
    )
    parser.add_argument(
        "--refresh",
        type=_positive,
        default=2.0,
        metavar="SECONDS",
        help="dashboard refresh (default %(default)s)",
    )
    add_log_level(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 after a clean stop (Ctrl-C, SIGTERM or ``--duration``)."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    options = DemoOptions(
        host=args.host,
        port=args.port,
        rate=args.rate,
        duration=args.duration,
        backfill=args.backfill,
        seed=args.seed,
        data_dir=args.data_dir,
        refresh=args.refresh,
    )
    stop = threading.Event()
    signals = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            raise KeyboardInterrupt  # a second Ctrl-C: stop without waiting for the consumer
        _log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run_demo(options, stop=stop)
    except (ClickstreamError, KafkaException) as exc:
        _log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main())

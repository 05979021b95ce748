"""``python -m clickstream.produce``: send simulated shop traffic to Kafka.

Live mode (the default) stamps events with the current time and sends each one when it
happens, at ``--rate`` events per second on average, so dashboards show "now". ``--backfill``
spreads ``--count`` events over a past window and sends them as fast as allowed. ``--rate 0``
sends as fast as possible. See docs/producer.md.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from itertools import islice
from types import FrameType
from typing import Final, Protocol

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from clickstream.cli import add_log_level, number, whole_number
from clickstream.errors import ClickstreamError, ConfigError, DeliveryError, TransientError
from clickstream.producer import COMPRESSION_TYPES, EventProducer, ProducerTuning, producer_config
from clickstream.settings import KAFKA_CONNECTION_FIELDS, SETTING_FLAGS, load_settings
from clickstream.simulator import IMPLEMENTATION as SIMULATOR_IMPLEMENTATION
from clickstream.simulator import (
    MAX_EVENTS_PER_SECOND,
    MIN_EVENTS_PER_SECOND,
    SimulatedEvent,
    SimulatorConfig,
    TrafficSimulator,
    WireEvent,
)

__all__ = ["GC_THRESHOLDS", "ExitCode", "main", "parse_duration", "tune_garbage_collector"]

logger = logging.getLogger("clickstream.produce")  # also when run as __main__


class ExitCode(IntEnum):
    """Exit statuses of the command (documented in ``--help`` and docs/producer.md)."""

    OK = 0
    DELIVERY_FAILED = 1
    BAD_CONFIGURATION = 2
    KAFKA_UNAVAILABLE = 3
    INTERRUPTED = 130


_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)", re.ASCII)
_DURATION_UNITS: Final = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DEFAULT_CONFIG: Final = SimulatorConfig()
"""Defaults of the simulation flags (read from an instance: the compiled class has no defaults
as class attributes)."""
_LIVE_RATE: Final = 50.0
"""Default events per second of live traffic."""
_MAX_DURATION_S: Final = 3650 * 86400.0
"""Longest backfill window: ten years back from now stays well after 1970, the earliest
``occurred_at`` the contract accepts."""
_DEFAULT_STOP_GRACE_S: Final = 20.0
"""After a stop signal, how long the producer waits for the last acknowledgements: below the
30 s a supervisor such as Kubernetes gives before it kills, so that the summary is printed."""
_MAX_DELIVERY_TIMEOUT_S: Final = 2_147_483.0
"""librdkafka's largest ``message.timeout.ms`` (0 would mean no timeout at all)."""
_BEHIND_NOTE_S: Final = 5.0
"""A paced run this far behind its schedule says so (and again every _BEHIND_NOTE_EVERY_S)."""
_BEHIND_NOTE_EVERY_S: Final = 30.0
_CHECK_EVERY: Final = 512
"""Look at the clock (progress, log lines) once per this many events."""
GC_THRESHOLDS: Final = (10_000, 20, 100)
"""The garbage collector's thresholds in a producer process (Python's default: 700, 10, 10).

The simulator keeps every queued event of the sessions in progress alive, so by default the
collector ran every few hundred events and took about a sixth of the compiled simulator's time
(docs/producer.md). Nothing the producer keeps forms reference cycles at that rate; memory stays
flat (``python -m bench.producer --soak 5``)."""


def parse_duration(text: str) -> timedelta:
    """Parse ``90s``, ``15m``, ``2h``, ``1d`` or combinations such as ``1h30m``.

    Raises:
        ValueError: the text is not such a duration, or it is zero.
    """
    compact = text.strip().lower().replace(" ", "")
    matches = list(_DURATION_RE.finditer(compact))
    if not matches or "".join(m.group(0) for m in matches) != compact:
        msg = f"expected a duration such as 90s, 15m, 2h, 1d or 1h30m, got {text!r}"
        raise ValueError(msg)
    seconds = sum(float(m.group(1)) * _DURATION_UNITS[m.group(2)] for m in matches)
    if seconds <= 0:
        msg = f"the duration must be positive, got {text!r}"
        raise ValueError(msg)
    if seconds > _MAX_DURATION_S:  # also inf, from hundreds of digits
        msg = f"the duration must be at most {_MAX_DURATION_S // 86400:g}d, got {text!r}"
        raise ValueError(msg)
    return timedelta(seconds=seconds)


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    value = float(text)
    if value != 0 and not MIN_EVENTS_PER_SECOND <= value <= MAX_EVENTS_PER_SECOND:
        msg = (
            f"must be 0 (as fast as possible) or lie in [{MIN_EVENTS_PER_SECOND:g}, "
            f"{MAX_EVENTS_PER_SECOND:,.0f}] events per second, got {text}"
        )
        raise argparse.ArgumentTypeError(msg)
    return value


_rate.__name__ = "float"  # argparse says "invalid float value: 'abc'"


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        msg = f"must lie in [0, 1], got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


_fraction.__name__ = "float"  # argparse says "invalid float value: 'abc'"


def _count(text: str) -> int:
    value = int(text)
    if not -1 <= value <= sys.maxsize:
        msg = f"must be a number of events up to {sys.maxsize}, or -1 for no limit; got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


_count.__name__ = "int"  # argparse says "invalid int value: 'abc'"


def _parser() -> argparse.ArgumentParser:
    defaults = ProducerTuning()
    parser = argparse.ArgumentParser(
        prog="python -m clickstream.produce",
        description=(
            "Simulate visitors of a web shop and send their click events to Kafka "
            "(idempotent producer, keyed by user_id)."
        ),
        epilog=(
            "Examples:\n"
            "  python -m clickstream.produce                      # 15 events, live\n"
            "  python -m clickstream.produce --count -1 --rate 200  # until Ctrl-C\n"
            "  python -m clickstream.produce --backfill 2h --count 500000\n"
            "  python -m clickstream.produce --stdout --count 5 --seed 7  # NDJSON, no Kafka\n"
            "\n"
            "Connection settings come from the CLICKSTREAM_* environment variables and,\n"
            "when CLICKSTREAM_STACK_OUTPUTS or CLICKSTREAM_PULUMI_STACK is set, the Pulumi\n"
            "stack outputs; the variables override the outputs, and flags override both\n"
            "(TLS material comes only from the variables or the outputs).\n"
            "A stop (Ctrl-C, SIGTERM) ends the events, waits up to --stop-grace seconds for\n"
            "the last acknowledgements and prints a summary; a second Ctrl-C exits at once.\n"
            "Exit status: 0 every event delivered, 1 a delivery failed (or was still\n"
            "unacknowledged when the stop's grace ended), 2 bad configuration, 3 Kafka\n"
            "unreachable or the topic missing, 130 interrupted twice."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to send")
    what.add_argument(
        "--count",
        type=_count,
        default=15,
        help="number of events; -1 runs until stopped (default: %(default)s)",
    )
    what.add_argument(
        "--rate",
        type=_rate,
        help="events per second; 0 = as fast as possible (default: 50 live, 0 with --backfill). "
        "Live, this is the steady rate: traffic builds up as visitors arrive and their "
        "sessions get under way (about 40%% of it in the first minute, 95%% after ten)",
    )
    what.add_argument(
        "--backfill",
        type=_duration,
        metavar="DURATION",
        help="spread --count events over this past window (e.g. 2h) instead of live",
    )
    what.add_argument(
        "--seed",
        type=whole_number(0),
        help="random seed, a whole number >= 0; the same seed gives the same events "
        "(default: random)",
    )
    what.add_argument(
        "--conversion-rate",
        type=_fraction,
        default=_DEFAULT_CONFIG.conversion_rate,
        help="share of sessions that buy (default: %(default)s)",
    )
    what.add_argument(
        "--site-url",
        default=_DEFAULT_CONFIG.site_url,
        help="origin of the simulated shop (default: %(default)s)",
    )
    what.add_argument(
        "--validate",
        action="store_true",
        help="validate each event with the ClickEvent model before sending (slower)",
    )
    where = parser.add_argument_group("where to send it")
    where.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers (default: $CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS or "
        "127.0.0.1:19092)",
    )
    where.add_argument(
        "--topic", help="events topic (default: $CLICKSTREAM_TOPIC or clickstream.events)"
    )
    where.add_argument(
        "--stdout",
        action="store_true",
        help="write the events to stdout as JSON lines instead of sending them to Kafka",
    )
    tuning = parser.add_argument_group("producer tuning")
    tuning.add_argument(
        "--compression",
        choices=COMPRESSION_TYPES,
        default=defaults.compression,
        help="batch compression (default: %(default)s)",
    )
    tuning.add_argument(
        "--linger-ms",
        type=whole_number(0, 900_000),
        default=defaults.linger_ms,
        help="how long a batch may wait to fill (default: %(default)s)",
    )
    tuning.add_argument(
        "--batch-bytes",
        type=whole_number(1, 2_147_483_647),
        default=defaults.batch_bytes,
        help="largest batch per partition in bytes (default: %(default)s)",
    )
    tuning.add_argument(
        "--connect-timeout",
        type=number(0.1, 3600.0),
        default=10.0,
        help="seconds to wait for the broker at start before giving up (default: %(default)s)",
    )
    tuning.add_argument(
        "--delivery-timeout",
        type=number(0.001, _MAX_DELIVERY_TIMEOUT_S),
        default=defaults.delivery_timeout_s,
        help="seconds a message may wait for acknowledgement, retries included "
        "(default: %(default)s)",
    )
    tuning.add_argument(
        "--stop-grace",
        type=number(0.0, 3600.0),
        default=_DEFAULT_STOP_GRACE_S,
        metavar="SECONDS",
        help="after SIGINT/SIGTERM, how long to wait for Kafka to acknowledge what was sent "
        "(at most --delivery-timeout + 5); what is still unacknowledged then is purged and "
        "counted as failed, and the exit status is 1 (default: %(default)s; keep it below "
        "your supervisor's kill timeout)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--progress",
        choices=("auto", "bar", "log"),
        default="auto",
        help="a live progress bar, periodic log lines, or the bar on a terminal only "
        "(default: %(default)s)",
    )
    output.add_argument(
        "--log-interval",
        type=number(0.1, 86400.0),
        default=10.0,
        help="seconds between progress log lines (default: %(default)s)",
    )
    add_log_level(output)
    return parser


@dataclass
class RunResult:
    """What a run did; ``failed`` includes messages still undelivered at the end."""

    sent: int
    delivered: int
    failed: int
    seconds: float
    interrupted: bool
    stopped_by: str = ""


class _StopFlag:
    """Set by SIGINT/SIGTERM: stop generating, flush what was sent, report."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._on_stop: list[Callable[[], None]] = []

    def on_stop(self, callback: Callable[[], None]) -> None:
        self._on_stop.append(callback)
        if self.requested:  # the signal came first: do not wait for a second one
            callback()

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        # Runs between two bytecodes of the main thread: set flags only (no logging, which
        # could deadlock on a lock the interrupted code holds).
        if self.requested:
            raise KeyboardInterrupt  # a second Ctrl-C: the user means it
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        for callback in self._on_stop:
            callback()


class _Reporter(Protocol):
    def update(self, *, sent: int, delivered: int, failed: int) -> None: ...

    def close(self) -> None: ...


class _BarReporter:
    """A live progress bar (for a terminal): sent, rate, delivered, failed."""

    def __init__(self, console: Console, total: int | None) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]producing"),
            BarColumn(),
            MofNCompleteColumn() if total else TextColumn("{task.completed:,} sent"),
            TextColumn("{task.fields[rate]:>9,.0f} ev/s"),
            TextColumn("delivered {task.fields[delivered]:,}"),
            TextColumn("[red]failed {task.fields[failed]:,}"),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=8,
        )
        self._task: TaskID = self._progress.add_task(
            "produce", total=total, rate=0.0, delivered=0, failed=0
        )
        self._rate = _RateMeter()
        self._progress.start()

    def update(self, *, sent: int, delivered: int, failed: int) -> None:
        self._progress.update(
            self._task,
            completed=sent,
            rate=self._rate(sent),
            delivered=delivered,
            failed=failed,
        )

    def close(self) -> None:
        self._progress.stop()


class _LogReporter:
    """A log line every ``interval`` seconds (for logs, pipes and CI)."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = time.monotonic() + interval
        self._rate = _RateMeter()

    def update(self, *, sent: int, delivered: int, failed: int) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._interval
            logger.info(
                "sent %d (%.0f events/s), delivered %d, failed %d",
                sent,
                self._rate(sent),
                delivered,
                failed,
            )

    def close(self) -> None:
        return None


class _RateMeter:
    """Events per second over the last few seconds."""

    def __init__(self, window: float = 3.0) -> None:
        self._window = window
        self._samples: list[tuple[float, int]] = [(time.monotonic(), 0)]

    def __call__(self, count: int) -> float:
        now = time.monotonic()
        samples = self._samples
        samples.append((now, count))
        while len(samples) > 2 and now - samples[0][0] > self._window:
            samples.pop(0)
        then, before = samples[0]
        return (count - before) / (now - then) if now > then else 0.0


def _messages(args: argparse.Namespace, seed: int) -> Iterator[WireEvent]:
    config = SimulatorConfig(conversion_rate=args.conversion_rate, site_url=args.site_url)
    clock = _utc_now
    if args.backfill is not None:
        simulator = TrafficSimulator.backfill(
            config, seed=seed, clock=clock, window=args.backfill, count=args.count
        )
    elif args.rate > 0:
        simulator = TrafficSimulator(
            replace(config, events_per_second=args.rate), seed=seed, clock=clock
        )
    else:
        # Unpaced live traffic: simulated time runs ahead of the clock, so events are stamped
        # no later than "now" (a consumer rejects events from the future).
        simulator = TrafficSimulator(config, seed=seed, clock=clock, clamp_to_clock=True)
    # The wire path makes the same bytes as SimulatedEvent.to_json(), without the records.
    messages = _validated(simulator.events()) if args.validate else simulator.messages()
    return messages if args.count < 0 else islice(messages, args.count)


def _validated(events: Iterator[SimulatedEvent]) -> Iterator[WireEvent]:
    """Each event through the ClickEvent model (full validation) before it is sent."""
    for event in events:
        yield event.visitor.key, event.to_click_event().to_json(), event.occurred_ms


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _Sink(Protocol):
    """Where events go: Kafka, or stdout as JSON lines."""

    @property
    def delivered(self) -> int: ...

    @property
    def failed(self) -> int: ...

    def send(self, key: bytes, value: bytes) -> bool: ...

    def send_many(self, messages: Iterator[WireEvent]) -> int: ...

    def idle(self, seconds: float) -> None: ...

    def check(self) -> None: ...

    def finish(self) -> None: ...


class _KafkaSink:
    def __init__(
        self, producer: EventProducer, *, flush_timeout: float, stop: _StopFlag, stop_grace: float
    ) -> None:
        self._producer = producer
        self._flush_timeout = flush_timeout
        self._stop = stop
        self._stop_grace = stop_grace
        self.send = producer.send
        self.send_many = producer.send_many

    @property
    def delivered(self) -> int:
        return self._producer.stats.delivered

    @property
    def failed(self) -> int:
        return self._producer.stats.failed

    def idle(self, seconds: float) -> None:
        self._producer.poll(seconds)  # serves delivery reports while waiting

    def check(self) -> None:
        if self._producer.fatal_error is not None:
            raise DeliveryError(self._producer.fatal_error)

    def finish(self) -> None:
        waiting = self._producer.in_flight
        if waiting:
            stopped = self._stop.requested
            logger.info(
                "waiting up to %.0f s%s for %d delivery report(s) (Ctrl-C twice: exit at once)",
                min(self._stop_grace, self._flush_timeout) if stopped else self._flush_timeout,
                " (--stop-grace)" if stopped and self._stop_grace < self._flush_timeout else "",
                waiting,
            )
        self._producer.flush(timeout=self._flush_timeout, stop_grace=self._stop_grace)


class _StdoutSink:
    def __init__(self) -> None:
        self._out = sys.stdout.buffer
        self.delivered = 0
        self.failed = 0

    def send(self, key: bytes, value: bytes) -> bool:
        self._out.write(value + b"\n")
        self.delivered += 1
        return True

    def send_many(self, messages: Iterator[WireEvent]) -> int:
        write, count = self._out.write, 0
        for _, value, _ in messages:
            write(value + b"\n")
            count += 1
        self.delivered += count
        return count

    def idle(self, seconds: float) -> None:
        self._out.flush()
        time.sleep(seconds)

    def check(self) -> None:
        return None

    def finish(self) -> None:
        self._out.flush()


def _run(
    messages: Iterator[WireEvent],
    sink: _Sink,
    *,
    pace_by_event_time: bool,
    rate: float,
    stop: _StopFlag,
    reporter: _Reporter,
) -> RunResult:
    started = time.monotonic()
    sent = 0
    send = sink.send
    lag = _LagNote(started, live=pace_by_event_time)

    def report() -> None:
        reporter.update(sent=sent, delivered=sink.delivered, failed=sink.failed)

    # Pacing: live events go out when they happen (their occurred_at); a rate-limited
    # backfill sends event n at start + n / rate.
    wall_ms = _wall_ms()
    try:
        while not (pace_by_event_time or rate > 0 or stop.requested):
            # Unpaced: whole chunks through the sink's loop (no Python call per event).
            done = sink.send_many(islice(messages, _CHECK_EVERY))
            sent += done
            report()
            sink.check()
            if done < _CHECK_EVERY:  # the end of the events, or cancelled while waiting
                break
        for key, value, occurred_ms in messages:
            if stop.requested:
                break
            if pace_by_event_time:
                if occurred_ms > wall_ms:
                    wall_ms = _wait_until(occurred_ms, sink, stop, report)
            elif rate > 0:
                _wait_until_monotonic(started + sent / rate, sink, stop)
            if stop.requested or not send(key, value):
                break
            sent += 1
            if sent % _CHECK_EVERY == 0:
                report()
                sink.check()
                if pace_by_event_time:
                    lag.note((_wall_ms() - occurred_ms) / 1000, sent=sent, rate=rate)
                elif rate > 0:
                    lag.note(time.monotonic() - started - sent / rate, sent=sent, rate=rate)
        report()
        sink.finish()
    finally:
        report()
        reporter.close()
    return RunResult(
        sent=sent,
        delivered=sink.delivered,
        failed=sent - sink.delivered,
        seconds=time.monotonic() - started,
        interrupted=stop.requested,
        stopped_by=stop.signal_name,
    )


class _LagNote:
    """Says when a paced run falls behind its schedule: a --rate this process cannot make."""

    def __init__(self, started: float, *, live: bool) -> None:
        self._started = started
        self._live = live
        self._next = 0.0

    def note(self, behind: float, *, sent: int, rate: float) -> None:
        now = time.monotonic()
        if behind < _BEHIND_NOTE_S or now < self._next:
            return
        self._next = now + _BEHIND_NOTE_EVERY_S
        made = sent / max(now - self._started, 1e-9)
        logger.warning(
            "sending %.0f s behind schedule: --rate %g is more than this process makes "
            "(%.0f events/s so far)%s",
            behind,
            rate,
            made,
            "; events keep their simulated times, so they arrive late" if self._live else "",
        )


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _wait_until(due_ms: int, sink: _Sink, stop: _StopFlag, report: Callable[[], None]) -> int:
    """Idle (serving delivery reports) until the wall clock reaches ``due_ms``; return it."""
    now = _wall_ms()
    while now < due_ms and not stop.requested:
        sink.idle(min((due_ms - now) / 1000, 0.2))
        report()
        now = _wall_ms()
    return now


def _wait_until_monotonic(due: float, sink: _Sink, stop: _StopFlag) -> None:
    while not stop.requested:
        left = due - time.monotonic()
        if left <= 0:
            return
        sink.idle(min(left, 0.2))


def _configure_logging(level: str, console: Console | None) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if console is not None:
        handler = RichHandler(console=console, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m clickstream.produce``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.backfill is not None and args.count <= 0:
        parser.error("--backfill needs a positive --count (how many events to spread)")
    if args.rate is None:
        args.rate = 0.0 if args.backfill is not None else _LIVE_RATE
    err_console = Console(stderr=True)
    use_bar = args.progress == "bar" or (args.progress == "auto" and err_console.is_terminal)
    _configure_logging(args.log_level, err_console if use_bar else None)
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    stop = _StopFlag()
    previous = _install_signal_handlers(stop)
    try:
        return _main(args, seed=seed, stop=stop, console=err_console, use_bar=use_bar)
    except KeyboardInterrupt:
        logger.error("interrupted twice: exiting without waiting for deliveries")
        return ExitCode.INTERRUPTED
    finally:
        _restore_signal_handlers(previous)


def _main(
    args: argparse.Namespace, *, seed: int, stop: _StopFlag, console: Console, use_bar: bool
) -> int:
    try:
        messages = _messages(args, seed)
    except ConfigError as exc:
        logger.error("%s", exc)
        return ExitCode.BAD_CONFIGURATION
    logger.info("simulating traffic with seed %d (simulator: %s)", seed, SIMULATOR_IMPLEMENTATION)
    total = args.count if args.count >= 0 else None

    def reporter() -> _Reporter:
        return _BarReporter(console, total) if use_bar else _LogReporter(args.log_interval)

    by_event_time = args.backfill is None and args.rate > 0
    if args.stdout:
        if sys.stdout is None:  # started with standard output closed (`>&-`)
            logger.error("--stdout: standard output is closed")
            return ExitCode.BAD_CONFIGURATION
        try:
            result = _run(
                messages,
                _StdoutSink(),
                pace_by_event_time=by_event_time,
                rate=args.rate,
                stop=stop,
                reporter=reporter(),
            )
        except BrokenPipeError:
            # The reader went away (`| head`): done, as other filters are. Python would try
            # to flush stdout again at exit; point it at /dev/null first.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return ExitCode.OK
        except OSError as exc:  # a full disk, a closed descriptor, ...
            logger.error("cannot write the events to standard output: %s", exc.strerror or exc)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return ExitCode.DELIVERY_FAILED
        logger.info("wrote %d events (seed %d)", result.sent, seed)
        _warn_if_short(result, count=args.count, backfill=args.backfill)
        return ExitCode.OK
    try:
        settings = load_settings(
            role="producer",
            overrides={"kafka_bootstrap_servers": args.bootstrap_servers, "topic": args.topic},
            # producer_config() reads the connection, the producer sends to the topic.
            uses=KAFKA_CONNECTION_FIELDS | {"topic"},
            command="clickstream.produce",
            flags=SETTING_FLAGS,
        )
        tuning = ProducerTuning(
            compression=args.compression,
            linger_ms=args.linger_ms,
            batch_bytes=args.batch_bytes,
            delivery_timeout_s=args.delivery_timeout,
        )
        producer = EventProducer(producer_config(settings, tuning), topic=settings.topic)
    except ConfigError as exc:
        logger.error("%s", exc)
        return ExitCode.BAD_CONFIGURATION
    where = f"{settings.topic} at {settings.kafka_bootstrap_servers}"
    stop.on_stop(producer.cancel)
    logger.info("connecting to Kafka (%s), waiting up to %g s", where, args.connect_timeout)
    try:
        partitions = producer.check_connection(timeout=args.connect_timeout)
    except TransientError as exc:
        if stop.requested:  # stopped before anything was sent: nothing failed
            _summary(
                RunResult(0, 0, 0, 0.0, interrupted=True, stopped_by=stop.signal_name),
                where=where,
                seed=seed,
                errors={},
            )
            return ExitCode.OK
        logger.error("cannot reach Kafka (%s): %s", where, exc)
        return ExitCode.KAFKA_UNAVAILABLE
    except ConfigError as exc:
        logger.error("%s", exc)
        return ExitCode.KAFKA_UNAVAILABLE
    mode = f"backfill over {args.backfill}" if args.backfill else "live"
    logger.info(
        "producing %s events to %s (%d partitions), %s, %s, seed %d",
        "unlimited" if args.count < 0 else f"{args.count:,}",
        where,
        partitions,
        mode,
        f"{args.rate:g} events/s" if args.rate > 0 else "as fast as possible",
        seed,
    )
    if by_event_time:
        # Live times start now, not before the wait for the broker: made again (cheap, and it
        # passed its checks above) so that the first events are not late by that wait.
        messages = _messages(args, seed)
    sink = _KafkaSink(
        producer, flush_timeout=args.delivery_timeout + 5.0, stop=stop, stop_grace=args.stop_grace
    )
    try:
        result = _run(
            messages,
            sink,
            pace_by_event_time=by_event_time,
            rate=args.rate,
            stop=stop,
            reporter=reporter(),
        )
    except ClickstreamError as exc:
        logger.error("%s", exc)
        producer.flush(timeout=5.0)
        return ExitCode.DELIVERY_FAILED
    _summary(result, where=where, seed=seed, errors=producer.stats.errors)
    _warn_if_short(result, count=args.count, backfill=args.backfill)
    return ExitCode.OK if result.failed == 0 else ExitCode.DELIVERY_FAILED


def _warn_if_short(result: RunResult, *, count: int, backfill: timedelta | None) -> None:
    # A backfill is dense enough to hold --count events with a wide margin; should chance
    # still leave the window short, say so rather than end as if all were sent.
    if backfill is not None and not result.interrupted and result.sent < count:
        logger.warning(
            "the %s window held only %d of the %d events asked for: run again with another "
            "--seed or a longer --backfill",
            backfill,
            result.sent,
            count,
        )


def _summary(result: RunResult, *, where: str, seed: int, errors: dict[str, int]) -> None:
    rate = result.sent / result.seconds if result.seconds > 0 else 0.0
    line = (
        f"sent {result.sent:,} events to {where} in {result.seconds:.1f} s ({rate:,.0f}/s): "
        f"delivered {result.delivered:,}, failed {result.failed:,}; seed {seed}"
    )
    if result.interrupted:
        line += f" (stopped by {result.stopped_by or 'signal'})"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    if result.failed:
        details = ", ".join(f"{name} x{count}" for name, count in sorted(errors.items()))
        logger.error("%d event(s) were not delivered: %s", result.failed, details or "unknown")


_Handler = Callable[[int, FrameType | None], object] | int | None


def _install_signal_handlers(stop: _StopFlag) -> dict[int, _Handler]:
    if threading.current_thread() is not threading.main_thread():
        return {}  # signals can only be handled on the main thread (e.g. under a test runner)
    previous: dict[int, _Handler] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, stop)
    return previous


def _restore_signal_handlers(previous: dict[int, _Handler]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def tune_garbage_collector() -> None:
    """Set :data:`GC_THRESHOLDS` for this process (the command does, and the benchmark)."""
    gc.set_threshold(*GC_THRESHOLDS)


if __name__ == "__main__":
    tune_garbage_collector()
    raise SystemExit(main())

"""Producer throughput against the Kafka client's own ceiling, stage by stage.

Run ``python -m bench.producer`` with the local stack up. It measures, in one run:

* simulation only (records, no serialization), serialization only (the fast path and the
  pydantic path), records and serialization together, and the wire path
  (:meth:`~clickstream.simulator.TrafficSimulator.messages`, which makes the same bytes without
  the records): how fast events can be *made*;
* the ceiling: the client configured as :class:`~clickstream.producer.EventProducer`
  configures it, sending pre-serialized payloads (the very bytes and keys of the simulated
  events) in a bare ``produce`` loop (the same loop as ``EventProducer.send_many``) that polls
  as often as the producer does; and, for reference, the same with a Python delivery callback
  per message and ``poll(0)`` after each ``produce`` (the naive loop);
* end to end: :meth:`EventProducer.send_many <clickstream.producer.EventProducer.send_many>`
  (what ``python -m clickstream.produce`` uses when unpaced) fed by the simulator's wire path,
  events made inside the timed loop.

It prints events/s for each and the ratio end-to-end / ceiling. ``--soak MINUTES`` instead
produces continuously and samples the process's resident memory to show that it stays flat.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bench._cpu import CpuMeter, CpuUse, local_port, own_threads
from clickstream.kafka import librdkafka_logger
from clickstream.produce import GC_THRESHOLDS, tune_garbage_collector
from clickstream.producer import POLL_EVERY, EventProducer, ProducerTuning, producer_config
from clickstream.settings import Settings
from clickstream.simulator import IMPLEMENTATION, SimulatedEvent, TrafficSimulator


def _now() -> datetime:
    return datetime.now(UTC)


def _simulator(seed: int) -> TrafficSimulator:
    # The CLI's --rate 0 mode: unpaced, stamped no later than the clock.
    return TrafficSimulator(seed=seed, clock=_now, clamp_to_clock=True)


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def _timed(action: Callable[[], int]) -> float:
    gc.collect()
    started = time.perf_counter()
    count = action()
    return _rate(count, time.perf_counter() - started)


@dataclass(frozen=True, slots=True)
class _Run:
    """One timed Kafka run: its rate, and the CPU time used per event while it ran."""

    rate: float
    cpu: CpuUse
    python: float
    """µs per event of this process's main thread (the Python code and the produce calls)."""
    client: float
    """µs per event of this process's other threads (librdkafka's: batching, compression, I/O)."""


def _metered(action: Callable[[], int], meter: CpuMeter) -> _Run:
    gc.collect()
    before, threads = meter.sample(), own_threads()
    started = time.perf_counter()
    count = action()
    seconds = time.perf_counter() - started
    after, threads_after = meter.sample(), own_threads()
    cpu = CpuUse.between(before, after)
    scale = 1e6 / count
    return _Run(
        rate=_rate(count, seconds),
        cpu=cpu,
        python=(threads_after[0] - threads[0]) * scale,
        client=(threads_after[1] - threads[1]) * scale,
    )


def _generate(count: int, seed: int) -> int:
    for _ in islice(_simulator(seed), count):
        pass
    return count


def _generate_and_serialize(count: int, seed: int) -> int:
    for event in islice(_simulator(seed), count):
        event.to_json()
    return count


def _wire(count: int, seed: int) -> int:
    for _ in islice(_simulator(seed).messages(), count):
        pass
    return count


def _serialize(events: Sequence[SimulatedEvent]) -> int:
    for event in events:
        event.to_json()
    return len(events)


def _serialize_pydantic(events: Sequence[SimulatedEvent]) -> int:
    # The typed path: validate into ClickEvent, then ClickEvent.to_json().
    for event in events:
        event.to_click_event().to_json()
    return len(events)


def _produce_when_room(
    produce: Callable[..., None],
    poll: Callable[[float], int],
    topic: str,
    value: bytes,
    key: bytes,
) -> None:
    """``produce``; while the client's queue is full, serve callbacks and try again."""
    while True:
        try:
            produce(topic, value, key)
        except BufferError:
            poll(0.05)
            continue
        return


def _ceiling(config: dict[str, Any], topic: str, messages: Sequence[tuple[bytes, bytes]]) -> int:
    """The bare client as EventProducer configures it: produce, poll(0) every POLL_EVERY."""
    failed = 0

    def on_delivery(error: object, _message: object) -> None:
        nonlocal failed
        if error is not None:
            failed += 1

    producer = Producer({**config, "delivery.report.only.error": True, "on_delivery": on_delivery})
    produce, poll = producer.produce, producer.poll
    sent = 0
    for key, value in messages:
        try:
            produce(topic, value, key)
        except BufferError:
            _produce_when_room(produce, poll, topic, value, key)
        sent += 1
        if not sent % POLL_EVERY:
            poll(0)
    producer.flush(60)
    delivered = sent - failed - len(producer)
    if delivered != len(messages):
        msg = f"ceiling run delivered {delivered} of {len(messages)}"
        raise RuntimeError(msg)
    return delivered


def _naive_client(
    config: dict[str, Any], topic: str, messages: Sequence[tuple[bytes, bytes]]
) -> int:
    """The client with a Python callback per delivery and poll(0) after every produce."""
    delivered = 0

    def on_delivery(error: object, _message: object) -> None:
        nonlocal delivered
        if error is None:
            delivered += 1

    producer = Producer({**config, "on_delivery": on_delivery})
    produce, poll = producer.produce, producer.poll
    for key, value in messages:
        _produce_when_room(produce, poll, topic, value, key)
        poll(0)
    producer.flush(60)
    if delivered != len(messages):
        msg = f"naive client run delivered {delivered} of {len(messages)}"
        raise RuntimeError(msg)
    return delivered


def _end_to_end(config: dict[str, Any], topic: str, count: int, seed: int) -> int:
    producer = EventProducer(config, topic=topic)
    producer.send_many(islice(_simulator(seed).messages(), count))
    producer.flush(timeout=60)
    if producer.stats.delivered != count:
        msg = f"end-to-end run delivered {producer.stats.delivered} of {count}"
        raise RuntimeError(msg)
    return count


def _rss_mib() -> float:
    # Resident set size from /proc (Linux): pages * page size.
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


def _soak(config: dict[str, Any], topic: str, minutes: float, sample_seconds: float) -> None:
    producer = EventProducer(config, topic=topic)
    messages = _simulator(seed=1).messages()
    started = time.monotonic()
    next_sample, end = started, started + minutes * 60
    sent = 0
    samples: list[tuple[float, int, float]] = []
    print(f"{'seconds':>8} {'sent':>12} {'events/s':>10} {'RSS MiB':>8}")
    while True:
        sent += producer.send_many(islice(messages, 4096))
        now = time.monotonic()
        if now >= next_sample:
            elapsed = now - started
            samples.append((elapsed, sent, _rss_mib()))
            print(f"{elapsed:8.0f} {sent:12,} {_rate(sent, elapsed):10,.0f} {samples[-1][2]:8.1f}")
            next_sample = now + sample_seconds
        if now >= end:
            break
    producer.flush(timeout=60)
    rss = [sample[2] for sample in samples]
    settled = rss[len(rss) // 4 :] or rss
    print(
        f"\nsoak: {sent:,} events in {minutes:g} min, delivered {producer.stats.delivered:,}, "
        f"failed {producer.stats.failed}"
    )
    print(
        f"RSS MiB: first {rss[0]:.1f}, after the first quarter min {min(settled):.1f} "
        f"max {max(settled):.1f} last {rss[-1]:.1f} "
        f"(growth over the last three quarters: {settled[-1] - settled[0]:+.1f} MiB)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print events/s per stage and the ratio to the client's ceiling."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.producer",
        description="Producer events/s versus the Kafka client's ceiling, stage by stage.",
        epilog="Examples:\n  python -m bench.producer\n  python -m bench.producer --soak 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bootstrap-servers",
        default="127.0.0.1:19092",
        help="Kafka (default: the local stack's, 127.0.0.1:19092)",
    )
    parser.add_argument(
        "--events", type=int, default=300_000, help="events per Kafka run (default 300000)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per stage; the best is kept (default 3)"
    )
    parser.add_argument(
        "--partitions", type=int, default=6, help="partitions of the benchmark topic (default 6)"
    )
    parser.add_argument(
        "--soak",
        type=float,
        metavar="MINUTES",
        help="produce for MINUTES and sample memory instead",
    )
    parser.add_argument(
        "--sample-seconds",
        type=float,
        default=10.0,
        help="interval of the soak's resident-memory samples (default 10)",
    )
    args = parser.parse_args(argv)
    tune_garbage_collector()  # as `python -m clickstream.produce` runs

    settings = Settings(kafka_bootstrap_servers=args.bootstrap_servers)
    config = producer_config(settings, ProducerTuning())
    admin_config: dict[str, Any] = {
        "bootstrap.servers": args.bootstrap_servers,
        "logger": librdkafka_logger(),
    }
    admin = AdminClient(admin_config)
    topic = f"bench-producer-{uuid.uuid4().hex[:8]}"
    try:
        admin.create_topics([NewTopic(topic, args.partitions, 1)])[topic].result(timeout=30)
    except KafkaException as exc:
        print(f"cannot create a topic at {args.bootstrap_servers}: {exc} (is the stack up?)")
        return 3
    try:
        time.sleep(1.0)  # let the partitions get leaders
        if args.soak:
            _soak(config, topic, args.soak, args.sample_seconds)
            return 0
        meter = CpuMeter({"Kafka": local_port(args.bootstrap_servers, 9092)})
        _report(args, config, topic, meter)
    finally:
        admin.delete_topics([topic])[topic].result(timeout=30)
    return 0


def _report(args: argparse.Namespace, config: dict[str, Any], topic: str, meter: CpuMeter) -> None:
    count, repeat = args.events, args.repeat
    print(
        f"producer benchmark, {count:,} events per run, best of {repeat}, "
        f"{datetime.now(UTC):%Y-%m-%d}"
    )
    print(f"simulator: {IMPLEMENTATION}; garbage collector thresholds {GC_THRESHOLDS}")

    def best(action: Callable[[], int]) -> float:
        return max(_timed(action) for _ in range(repeat))

    # Stages that make events first, while no sample is kept alive (100,000 records in the
    # heap would make the garbage collector work harder than in the command's process).
    generate = best(lambda: _generate(count, seed=7))
    both = best(lambda: _generate_and_serialize(count, seed=7))
    wire = best(lambda: _wire(count, seed=7))
    sample = list(islice(_simulator(seed=7), min(count, 100_000)))
    sizes = [len(e.to_json()) for e in sample]
    print(f"event size: mean {statistics.fmean(sizes):.0f} bytes, max {max(sizes)}")
    serialize = best(lambda: _serialize(sample))
    pydantic_path = best(lambda: _serialize_pydantic(sample[:20_000]))
    sample.clear()
    messages = [(key, value) for key, value, _ in islice(_simulator(seed=7).messages(), count)]
    # The ceiling's payloads stay alive for the whole run, which the command's process never
    # has: keep them out of the garbage collector's passes, so they do not slow the end to end.
    gc.freeze()
    ceilings, naives, ends = [], [], []
    for _ in range(repeat):  # interleaved, so all see the same broker conditions
        ceilings.append(_metered(lambda: _ceiling(config, topic, messages), meter))
        naives.append(_timed(lambda: _naive_client(config, topic, messages)))
        ends.append(_metered(lambda: _end_to_end(config, topic, count, seed=7), meter))
    best_ceiling = max(ceilings, key=lambda run: run.rate)
    best_end = max(ends, key=lambda run: run.rate)
    ceiling, naive, end_to_end = best_ceiling.rate, max(naives), best_end.rate
    rows = [
        ("simulate (records only)", generate),
        ("serialize, fast path (SimulatedEvent.to_json)", serialize),
        ("serialize, pydantic path (ClickEvent validate + to_json)", pydantic_path),
        ("simulate + serialize (records, then to_json)", both),
        ("simulate + serialize (wire path, TrafficSimulator.messages)", wire),
        ("Kafka client ceiling (pre-serialized, produce loop)", ceiling),
        ("  for reference: naive client loop (callback per message)", naive),
        ("end to end (wire path + EventProducer)", end_to_end),
    ]
    width = max(len(name) for name, _ in rows)
    for name, rate in rows:
        print(f"{name:<{width}}  {rate:>10,.0f} events/s")
    print(f"\nend to end / client ceiling: {end_to_end / ceiling:.2f}")
    print(f"fast / pydantic serialization: {serialize / pydantic_path:.1f}x")
    # Where the time of one event goes; the stages roughly add up to the end-to-end figure.
    print(
        f"microseconds per event: make (wire path) {1e6 / wire:.1f} + bare client "
        f"{1e6 / ceiling:.1f} = {1e6 / wire + 1e6 / ceiling:.1f}; "
        f"measured end to end {1e6 / end_to_end:.1f}"
    )
    _print_cpu(count, [("Kafka client ceiling", best_ceiling), ("end to end", best_end)], meter)


def _print_cpu(count: int, runs: Sequence[tuple[str, _Run]], meter: CpuMeter) -> None:
    """CPU per event of the best runs: the Python thread, librdkafka's threads, the broker."""
    broker = "Kafka" in meter.pids
    cores = runs[0][1].cpu.cores
    print(
        f"\nCPU per event (µs) in the best run of each, all {cores} cores together; "
        "'bound' = cores / total;\n'other' is the machine's time less the rest (separate "
        f"counters: a few hundredths off, either way); metered: {meter.describe()}"
    )
    width = max(len(name) for name, _ in runs)
    columns = ["Python thread", "client threads", "broker" if broker else "", "other", "total"]
    head = "".join(f"  {c:>14}" for c in columns if c)
    print(f"{'':<{width}}  {'busy':>5}{head}  {'bound/s':>9}")
    for name, run in runs:
        per = run.cpu.per_item(count)
        own = run.python + run.client
        cells = [run.python, run.client]
        if broker:
            cells.append(per["Kafka"])
        cells += [per["rest"] - own, per["total"]]
        text = "".join(f"  {value:>14.2f}" for value in cells)
        print(f"{name:<{width}}  {run.cpu.utilisation:>5.0%}{text}  {run.cpu.bound(count):>9,.0f}")


if __name__ == "__main__":
    raise SystemExit(main())

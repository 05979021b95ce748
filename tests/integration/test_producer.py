"""The producer against a real broker: everything arrives, keyed, in order, exactly once."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from clickstream import produce, topics
from clickstream.events import ClickEvent, decode_event
from clickstream.producer import EventProducer, ProducerTuning, producer_config
from clickstream.settings import load_settings
from clickstream.simulator import SimulatorConfig, TrafficSimulator
from tests.support import ROOT, kill_hard, messages_on, read_all, wait_until

if TYPE_CHECKING:
    from devstack.kafka import RunningBroker

FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


def _decode(value: bytes | None) -> ClickEvent:
    return decode_event(value, now=FAR_FUTURE, future_tolerance=timedelta(0))


def test_cli_sends_50000_events_intact_keyed_and_in_order_per_user(
    stack, kafka_topic_factory: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    topic = kafka_topic_factory(3)
    exit_code = produce.main(
        [
            "--bootstrap-servers",
            stack.kafka_bootstrap,
            "--topic",
            topic,
            "--count",
            "50000",
            "--rate",
            "0",
            "--seed",
            "1234",
            "--progress",
            "log",
        ]
    )
    assert exit_code == 0
    assert "delivered 50,000, failed 0" in capsys.readouterr().out

    received = read_all(stack.kafka_bootstrap, topic, expected=50_000, timeout=120)
    assert len(received) == 50_000, "each event exactly once"
    # The CLI stamps events with the real clock, so compare everything but the time with the
    # same seed's events.
    expected = list(islice(TrafficSimulator(seed=1234, clock=lambda: datetime.now(UTC)), 50_000))
    expected_by_id = {event.event_id: event for event in expected}
    partition_of_user: dict[str, int] = {}
    read_order: dict[str, list[str]] = defaultdict(list)
    for message in sorted(received, key=lambda m: (m.partition, m.offset)):
        event = _decode(message.value)
        assert message.key == event.user_id.encode()
        assert partition_of_user.setdefault(event.user_id, message.partition) == message.partition
        read_order[event.user_id].append(event.event_id)
        want = expected_by_id[event.event_id].to_click_event()
        assert event.model_copy(update={"occurred_at": want.occurred_at}) == want
    sent_order: dict[str, list[str]] = defaultdict(list)
    for event in expected:
        sent_order[event.user_id].append(event.event_id)
    assert read_order == sent_order
    assert len(sent_order) > 5_000, "many visitors, spread over the partitions"
    assert len(set(partition_of_user.values())) == 3


def _producer(bootstrap: str, topic: str, tuning: ProducerTuning | None = None) -> EventProducer:
    """The library's producer for ``topic``, configured from settings as the CLI does."""
    settings = load_settings(
        role="producer",
        overrides={"kafka_bootstrap_servers": bootstrap, "topic": topic},
        environ={},
    )
    return EventProducer(producer_config(settings, tuning or ProducerTuning()), topic=topic)


def test_producer_api_delivers_the_exact_bytes(
    stack, kafka_topic_factory: Callable[..., str]
) -> None:
    topic = kafka_topic_factory(2)
    producer = _producer(stack.kafka_bootstrap, topic)
    assert producer.check_connection(timeout=10) == 2
    start = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    simulator = TrafficSimulator(
        SimulatorConfig(events_per_second=200), seed=99, clock=lambda: start
    )
    events = list(islice(simulator, 5_000))
    for event in events:
        assert producer.send(event.visitor.key, event.to_json())
    assert producer.flush(timeout=30) == 0
    assert (producer.stats.delivered, producer.stats.failed) == (5_000, 0)

    received = read_all(stack.kafka_bootstrap, topic, expected=5_000)
    assert sorted((m.key, m.value) for m in received) == sorted(
        (e.user_id.encode(), e.to_json()) for e in events
    )


def test_send_many_delivers_the_wire_path_and_counts_it(
    stack, kafka_topic_factory: Callable[..., str]
) -> None:
    topic = kafka_topic_factory(2)
    producer = _producer(stack.kafka_bootstrap, topic)
    start = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)

    def simulator() -> TrafficSimulator:
        config = SimulatorConfig(events_per_second=200)
        return TrafficSimulator(config, seed=98, clock=lambda: start)

    messages = simulator().messages()
    assert producer.send_many(islice(messages, 3_000)) == 3_000
    key, value, _ = next(messages)
    assert producer.send(key, value)
    assert producer.send_many(islice(messages, 1_999)) == 1_999
    assert producer.flush(timeout=30) == 0
    assert (producer.stats.delivered, producer.stats.failed) == (5_000, 0)

    received = read_all(stack.kafka_bootstrap, topic, expected=5_000)
    assert sorted((m.key, m.value) for m in received) == sorted(
        (e.user_id.encode(), e.to_json()) for e in islice(simulator(), 5_000)
    )


def test_send_many_stops_when_cancelled_while_the_queue_is_full(
    stack, kafka_topic_factory: Callable[..., str]
) -> None:
    topic = kafka_topic_factory(1)
    producer = _producer(stack.kafka_bootstrap, topic, ProducerTuning(queue_messages=100))
    producer.cancel()  # as a signal handler would: the first wait for room gives up
    queued = producer.send_many((b"k%d" % n, b"{}", 0) for n in range(1_000))
    assert 100 <= queued < 1_000
    assert producer.flush(timeout=30) == 0
    assert (producer.stats.delivered, producer.stats.failed) == (queued, 0)


def test_delivery_failures_make_the_cli_fail(
    stack, kafka_topic_factory: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    # The broker refuses every message: events are larger than this topic allows.
    topic = kafka_topic_factory(1, config={"max.message.bytes": "200"})
    exit_code = produce.main(
        [
            "--bootstrap-servers",
            stack.kafka_bootstrap,
            "--topic",
            topic,
            "--count",
            "20",
            "--rate",
            "0",
            "--progress",
            "log",
        ]
    )
    assert exit_code == produce.ExitCode.DELIVERY_FAILED == 1
    assert "delivered 0, failed 20" in capsys.readouterr().out


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_gives_up_on_an_unreachable_broker() -> None:
    port = _closed_port()
    exit_code = produce.main(
        ["--bootstrap-servers", f"127.0.0.1:{port}", "--connect-timeout", "2", "--count", "5"]
    )
    assert exit_code == produce.ExitCode.KAFKA_UNAVAILABLE == 3


def test_cli_refuses_a_missing_topic(stack) -> None:
    exit_code = produce.main(
        [
            "--bootstrap-servers",
            stack.kafka_bootstrap,
            "--topic",
            f"no-such-topic-{uuid.uuid4().hex}",
            "--connect-timeout",
            "10",
        ]
    )
    assert exit_code == produce.ExitCode.KAFKA_UNAVAILABLE


@pytest.fixture
def topic_names(stack) -> Iterator[tuple[str, str]]:
    name = f"test-topics-{uuid.uuid4().hex[:12]}"
    names = (name, name + ".dlq")
    yield names
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [n for n in names if n in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            future.result(timeout=30)


def test_topics_command_is_idempotent(
    stack, topic_names: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    events, dlq = topic_names
    argv = [
        "--bootstrap-servers",
        stack.kafka_bootstrap,
        "--topic",
        events,
        "--dlq-topic",
        dlq,
        "--partitions",
        "4",
    ]
    assert topics.main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{events}: created (4 partitions)",
        f"{dlq}: created (1 partition)",
    ]
    assert topics.main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{events}: exists (4 partitions)",
        f"{dlq}: exists (1 partition)",
    ]
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    metadata = admin.list_topics(timeout=10).topics
    assert len(metadata[events].partitions) == 4
    assert len(metadata[dlq].partitions) == 1
    # The dead-letter topic takes whole messages of the events topic plus their headers.
    [described] = admin.describe_configs([ConfigResource("topic", dlq)]).values()
    assert described.result(10)["max.message.bytes"].value == str(2 * 1024 * 1024)


def test_topics_command_reports_a_refusal_and_what_it_created(
    stack, topic_names: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    # Kafka refuses a name that differs from an existing topic's only by '.' versus '_'; the
    # dead-letter topic is still created, and the error says so.
    events, dlq = topic_names
    twin = events.replace("-", "_") + "_x"
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    admin.create_topics([NewTopic(twin, 1, 1)])[twin].result(30)
    try:
        argv = ["--bootstrap-servers", stack.kafka_bootstrap, "--dlq-topic", dlq]
        assert topics.main([*argv, "--topic", twin.replace("_", ".")]) == 3
        assert f"cannot create topic '{twin.replace('_', '.')}'" in caplog.text
        assert f"(created: {dlq})" in caplog.text
        assert dlq in admin.list_topics(timeout=10).topics
    finally:
        admin.delete_topics([twin])[twin].result(30)


@pytest.mark.parametrize(
    "argv",
    [
        ["--timeout", "-1"],
        ["--timeout", "nan"],
        ["--retention-days", "999999999999"],
        ["--dlq-retention-days", "0"],
        ["--partitions", "abc"],
    ],
)
def test_topics_command_refuses_bad_flags_as_arguments(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        topics.main(argv)
    assert exit_.value.code == 2
    assert "_" + "positive" not in capsys.readouterr().err  # names the type, not a helper


def test_topics_command_refuses_tls_material_librdkafka_cannot_read(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLICKSTREAM_KAFKA_SSL_CA", "not a certificate")
    assert topics.main(["--timeout", "2"]) == 2
    assert "CLICKSTREAM_KAFKA_SSL_" in caplog.text


def test_topics_command_gives_up_on_an_unreachable_broker() -> None:
    port = _closed_port()
    assert topics.main(["--bootstrap-servers", f"127.0.0.1:{port}", "--timeout", "2"]) == 3


def _start_unlimited(
    bootstrap: str, topic: str, *args: str, stderr: Any = subprocess.PIPE
) -> subprocess.Popen[bytes]:
    """``clickstream.produce --count -1`` with a progress line every half second."""
    command = [sys.executable, "-m", "clickstream.produce", "--bootstrap-servers", bootstrap]
    command += ["--topic", topic, "--count", "-1", "--progress", "log", "--log-interval", "0.5"]
    return subprocess.Popen(
        [*command, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=stderr,
    )


def test_sigterm_stops_flushes_and_reports(stack, kafka_topic_factory: Callable[..., str]) -> None:
    topic = kafka_topic_factory(3)
    process = _start_unlimited(stack.kafka_bootstrap, topic, "--rate", "500")
    try:
        assert process.stderr is not None
        # Wait until events are flowing (a progress line with a non-zero count).
        for line in process.stderr:
            if re.search(rb"sent [1-9]\d*", line):
                break
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr.decode()
    summary = stdout.decode()
    match = re.search(r"sent ([\d,]+) events .* delivered ([\d,]+), failed 0", summary)
    assert match is not None, summary
    sent = int(match.group(1).replace(",", ""))
    assert sent > 0
    assert match.group(1) == match.group(2)
    assert "(stopped by SIGTERM)" in summary
    received = read_all(stack.kafka_bootstrap, topic, expected=sent)
    assert len(received) == sent
    assert all(json.loads(m.value or b"")["user_id"].encode() == m.key for m in received)


def test_a_stop_is_honoured_while_kafka_hangs(own_broker: RunningBroker, tmp_path: Path) -> None:
    """A hung broker (its connections open, nothing answered) holds a stop for --stop-grace only.

    Before, the stop waited for the last acknowledgements up to --delivery-timeout + 5 s (125 s
    by default). Now what is still unacknowledged when the grace ends is purged and counted as
    failed (exit status 1), and the summary accounts for every event: what it calls delivered
    is in the topic, and nothing beyond what was sent.
    """
    topic = "hang.events"
    admin = AdminClient({"bootstrap.servers": own_broker.bootstrap})
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
    log = tmp_path / "producer.log"
    with log.open("wb") as stderr:
        process = _start_unlimited(
            own_broker.bootstrap, topic, "--rate", "2000", "--stop-grace", "3", stderr=stderr
        )
        try:
            wait_until(
                lambda: re.search(r"delivered [1-9]", log.read_text(errors="replace")),
                timeout=60,
                what="acknowledged events",
            )
            os.kill(own_broker.pid, signal.SIGSTOP)
            time.sleep(1.0)  # events go on being sent, and none is acknowledged
            process.send_signal(signal.SIGTERM)
            # A liveness bound, not a measure: before, this waited 125 s for the broker.
            stdout, _ = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                kill_hard(process)
            os.kill(own_broker.pid, signal.SIGCONT)
    output = log.read_text(errors="replace")
    assert process.returncode == 1, output[-3000:]
    assert "still unacknowledged" in output and "after the stop" in output, output[-3000:]
    summary = stdout.decode()
    match = re.search(r"sent ([\d,]+) events .* delivered ([\d,]+), failed ([\d,]+)", summary)
    assert match is not None, summary + output[-3000:]
    sent, delivered, failed = (int(group.replace(",", "")) for group in match.groups())
    assert failed > 0 and delivered > 0 and sent == delivered + failed, summary
    assert "(stopped by SIGTERM)" in summary
    # Purged events that were already sent may or may not have reached the broker.
    assert delivered <= messages_on(own_broker.bootstrap, topic) <= sent

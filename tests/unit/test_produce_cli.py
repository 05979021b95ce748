"""The produce command without a broker: arguments, durations, JSON-lines output."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from itertools import islice

import pytest

from clickstream import produce
from clickstream.events import decode_event
from clickstream.producer import ProducerTuning, producer_config
from clickstream.settings import Settings
from clickstream.simulator import TrafficSimulator


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(minutes=90)),
        (" 2H ", timedelta(hours=2)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert produce.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "2", "h", "2 hours", "-1h", "0s", "1h-5m", "2w"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        produce.parse_duration(text)


def _stdout_lines(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> list[bytes]:
    assert produce.main(["--stdout", "--progress", "log", *argv]) == 0
    return capsysbinary.readouterr().out.splitlines()


def test_stdout_writes_valid_events_as_json_lines(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    lines = _stdout_lines(capsysbinary, "--count", "40", "--seed", "3", "--rate", "0")
    assert len(lines) == 40
    now = datetime.now(UTC)
    events = [decode_event(line, now=now, future_tolerance=timedelta(0)) for line in lines]
    assert len({e.event_id for e in events}) == 40
    # Live mode: the first event happens now, none in the future.
    assert now - timedelta(minutes=1) < events[0].occurred_at <= now


def test_unpaced_output_is_exactly_the_count_in_the_seeds_order(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    # Unpaced, events go out in chunks of 512: 1,100 is two whole chunks and a part.
    lines = _stdout_lines(capsysbinary, "--count", "1100", "--seed", "6", "--rate", "0")
    simulator = TrafficSimulator(seed=6, clock=lambda: datetime.now(UTC))
    expected = [event.event_id for event in islice(simulator, 1100)]
    assert [json.loads(line)["event_id"] for line in lines] == expected


def test_default_is_15_events(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert len(_stdout_lines(capsysbinary, "--seed", "1")) == 15


def test_same_seed_same_events_apart_from_the_time(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    def without_time(lines: list[bytes]) -> list[dict[str, object]]:
        return [{k: v for k, v in json.loads(x).items() if k != "occurred_at"} for x in lines]

    def run(seed: str) -> list[dict[str, object]]:
        argv = ("--count", "30", "--seed", seed, "--rate", "0")
        return without_time(_stdout_lines(capsysbinary, *argv))

    first, second, other = run("9"), run("9"), run("10")
    assert first == second
    assert first != other


def test_validate_flag_writes_the_same_bytes(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    # --validate goes through ClickEvent; the bytes must not change.
    fast = _stdout_lines(capsysbinary, "--count", "25", "--seed", "4", "--backfill", "1h")
    checked = _stdout_lines(
        capsysbinary, "--count", "25", "--seed", "4", "--backfill", "1h", "--validate"
    )
    assert [json.loads(x)["event_id"] for x in fast] == [json.loads(x)["event_id"] for x in checked]
    assert [{**json.loads(x), "occurred_at": 0} for x in fast] == [
        {**json.loads(x), "occurred_at": 0} for x in checked
    ]


def test_backfill_events_lie_in_the_past_window(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    before = datetime.now(UTC)
    lines = _stdout_lines(capsysbinary, "--count", "500", "--backfill", "2h", "--seed", "2")
    after = datetime.now(UTC)
    times = [decode_event(x, now=after, future_tolerance=timedelta(0)).occurred_at for x in lines]
    assert len(times) == 500
    assert times == sorted(times)
    # The first a little after the window's start (the margin), the last within a second
    # of the clock (a backfill this small is shifted to end now).
    assert before - timedelta(hours=2, seconds=1) <= times[0] <= before - timedelta(hours=1)
    assert before - timedelta(seconds=1) < times[-1] <= after


def test_backfill_needs_a_positive_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        produce.main(["--backfill", "2h", "--count", "-1"])
    assert exit_info.value.code == 2
    assert "--backfill needs a positive --count" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--count", "-2"],
        ["--rate", "-1"],
        ["--conversion-rate", "1.5"],
        ["--backfill", "yesterday"],
        ["--compression", "brotli"],
        # Values that used to end in a traceback further in (math domain error, overflow):
        ["--rate", "inf"],
        ["--rate", "1e400"],
        ["--backfill", "800000d", "--count", "10"],
        ["--backfill", "9" * 400 + "d", "--count", "10"],
        ["--delivery-timeout", "inf"],
        ["--delivery-timeout", "1e-6"],  # would become message.timeout.ms=0: no timeout at all
        ["--connect-timeout", "0"],
        ["--connect-timeout", "nan"],
        ["--linger-ms", "-1"],
        ["--batch-bytes", "0"],
        ["--stop-grace", "-1"],
        ["--stop-grace", "nan"],
        ["--stop-grace", "3601"],
        ["--log-interval", "0"],
        ["--log-interval", "-5"],
        # A rate so high the simulated clock stopped (sessions made forever, memory to OOM),
        # or so low the time buckets overflowed; a count past what islice takes.
        ["--rate", "1e20"],
        ["--rate", "1e-310"],
        ["--count", "99999999999999999999"],
        # random.Random(-5) is Random(5): two producers would send the same event ids.
        ["--seed", "-5"],
    ],
)
def test_bad_arguments_exit_with_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        produce.main([*argv, "--stdout"])
    assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_the_longest_backfill_window_is_ten_years() -> None:
    assert produce.parse_duration("3650d") == timedelta(days=3650)
    with pytest.raises(ValueError, match="at most 3650d"):
        produce.parse_duration("3651d")


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("CLICKSTREAM_TOPIC", "", "CLICKSTREAM_TOPIC: "),
        ("CLICKSTREAM_TOPIC", "bad/name", "Kafka topic name"),
        ("CLICKSTREAM_DLQ_TOPIC", "clickstream.events", "must differ from the events topic"),
    ],
)
def test_topic_settings_are_checked_before_connecting(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    words: str,
) -> None:
    for name in ("CLICKSTREAM_TOPIC", "CLICKSTREAM_DLQ_TOPIC"):  # whatever the shell has
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value)
    # Nothing listens on port 9: had the settings passed, this would be exit 3 instead.
    argv = ["--bootstrap-servers", "127.0.0.1:9", "--connect-timeout", "1"]
    assert produce.main(argv) == produce.ExitCode.BAD_CONFIGURATION
    assert words in capsys.readouterr().err


def test_stdout_into_a_reader_that_stops_early_exits_0() -> None:
    # `produce --stdout | head -1`: the reader closes the pipe; that ends the run, quietly.
    command = [sys.executable, "-m", "clickstream.produce", "--stdout", "--count", "200000"]
    command += ["--rate", "0", "--seed", "1"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()
        process.stdout.close()
        try:
            errors = process.stderr.read()
            status = process.wait(timeout=120)
        finally:
            process.kill()
    assert json.loads(first)["event_id"]
    assert status == 0, errors
    assert b"BrokenPipeError" not in errors and b"Traceback" not in errors


def test_ctrl_c_is_heard_while_waiting_for_a_broker() -> None:
    # Nothing listens on port 9. With a ten-minute connect timeout, only the signal ends the
    # wait; before, the single long list_topics() call held it until the timeout.
    command = [sys.executable, "-m", "clickstream.produce", "--bootstrap-servers"]
    command += ["127.0.0.1:9", "--connect-timeout", "600", "--progress", "log"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        seen = []
        for line in process.stderr:  # the signal handlers are in place once it says this
            seen.append(line)
            if "connecting to Kafka" in line:
                break
        process.send_signal(signal.SIGINT)
        try:
            status = process.wait(timeout=60)
        finally:
            process.kill()  # not heard: do not wait out the ten minutes
        errors = "".join(seen) + process.stderr.read()
        summary = process.stdout.read()
    # Stopped before anything was sent: a clean stop, with the usual summary.
    assert status == produce.ExitCode.OK, errors
    assert "sent 0 events" in summary and "(stopped by SIGINT)" in summary, summary


def test_malformed_bootstrap_servers_is_a_configuration_error() -> None:
    assert (
        produce.main(["--bootstrap-servers", "no-port-here"]) == produce.ExitCode.BAD_CONFIGURATION
    )


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        produce.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Examples:" in text
    assert "--backfill" in text
    assert "Exit status" in text


def test_producer_configuration_is_idempotent_and_batched() -> None:
    config = producer_config(
        Settings(kafka_bootstrap_servers="broker:9092"), ProducerTuning(compression="zstd")
    )
    assert config["bootstrap.servers"] == "broker:9092"
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["compression.type"] == "zstd"
    assert config["linger.ms"] == 20
    assert config["batch.size"] == 1_048_576
    assert config["message.timeout.ms"] == 120_000


def test_a_short_backfill_window_still_holds_the_whole_count(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    # 100 s is shorter than the average session: most sessions are cut at the window's end.
    lines = _stdout_lines(capsysbinary, "--count", "20000", "--seed", "42", "--backfill", "100s")
    assert len(lines) == 20_000


def test_a_backfill_short_of_its_count_says_so(caplog: pytest.LogCaptureFixture) -> None:
    short = produce.RunResult(sent=90, delivered=90, failed=0, seconds=1.0, interrupted=False)
    stopped = produce.RunResult(sent=90, delivered=90, failed=0, seconds=1.0, interrupted=True)
    with caplog.at_level("WARNING", logger="clickstream.produce"):
        produce._warn_if_short(stopped, count=100, backfill=timedelta(seconds=100))
        produce._warn_if_short(short, count=90, backfill=timedelta(seconds=100))
        produce._warn_if_short(short, count=100, backfill=None)
        assert not caplog.records
        produce._warn_if_short(short, count=100, backfill=timedelta(seconds=100))
    [record] = caplog.records
    assert "held only 90 of the 100 events" in record.getMessage()


@pytest.mark.parametrize(
    "argv",
    [
        ["--site-url", "https://a b.com"],
        ["--site-url", "https://shop.example.com?x=1"],
        ["--backfill", "1s", "--count", "1000000000000"],
    ],
)
def test_a_configuration_that_would_make_invalid_or_impossible_traffic_exits_2(
    argv: list[str], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert produce.main(["--stdout", "--progress", "log", *argv]) == 2
    assert capsysbinary.readouterr().out == b""  # not one event


def test_a_paced_run_that_falls_behind_says_so_at_most_every_30_s(
    caplog: pytest.LogCaptureFixture,
) -> None:
    note = produce._LagNote(time.monotonic() - 1000.0, live=True)
    with caplog.at_level(logging.WARNING, logger="clickstream.produce"):
        note.note(4.9, sent=100_000, rate=1e6)  # within 5 s: quiet
        note.note(6.0, sent=500_000, rate=1e6)
        note.note(9.0, sent=600_000, rate=1e6)  # said already, less than 30 s ago
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("sending 6 s behind schedule: --rate 1e+06 is more than this process")
    assert "(500 events/s so far)" in line  # 500,000 in the 1,000 s since the start
    assert "arrive late" in line

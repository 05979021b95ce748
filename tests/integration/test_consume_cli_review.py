"""The consumer stopped by signals as a user stops it, against the real services: the summary's
numbers match the tables, and a restart stores nothing twice and loses nothing."""

from __future__ import annotations

import re
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support import (
    consumer_env,
    produce_events,
    random_events,
    run_consumer,
    scalar,
    start_consumer,
    wait_until,
)

pytestmark = pytest.mark.integration

_SUMMARY = re.compile(
    r"consumed (\d+), stored (\d+), duplicates (\d+), dead-lettered (\d+) \(reasons: (.*)\)"
)


def _summaries(output: str) -> list[tuple[int, int, int, int, str]]:
    return [(int(a), int(b), int(c), int(d), e) for a, b, c, d, e in _SUMMARY.findall(output)]


def _stop(process: subprocess.Popen[bytes], timeout: float = 120) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def _stored(database_url: str) -> int:
    return int(scalar(database_url, "SELECT count(*) FROM events"))


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT]])
def test_stopped_mid_run_then_restarted_stores_every_event_once(
    stack, topics, migrated_database_url, tmp_path: Path, signals: list[signal.Signals]
) -> None:
    events = random_events(77, users=1000, per_user=15)  # 15,000 events
    t = topics(3)
    env = consumer_env(
        bootstrap=stack.kafka_bootstrap,
        topic=t.events,
        group=f"test-{uuid.uuid4()}",
        database_url=migrated_database_url,
    )
    produce_events(stack.kafka_bootstrap, t.events, events)
    first_log = tmp_path / "first.log"
    process = start_consumer(env, "--no-opensearch", "--batch-size", "300", log=first_log)
    try:
        wait_until(lambda: _stored(migrated_database_url) > 0, timeout=120, what="the first batch")
        for signum in signals:
            process.send_signal(signum)
        code = _stop(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    first = first_log.read_text(errors="replace")
    stored_first = _stored(migrated_database_url)
    if code == 0:  # a clean stop (the only outcome of one signal): the summary is the truth
        [(consumed, stored, duplicates, dead, reasons)] = _summaries(first)
        assert (stored, duplicates, dead, reasons) == (stored_first, 0, 0, "none")
        assert consumed == stored_first
    else:  # a second signal that came while the batch ran: out at once, nothing committed
        assert code == 130, first[-3000:]
        assert "exiting at once" in first
        assert _summaries(first) == []

    output = run_consumer(env, "--no-opensearch", log=tmp_path / "second.log")
    [(consumed, stored, duplicates, dead, _)] = _summaries(output)
    assert _stored(migrated_database_url) == len(events)
    distinct = scalar(migrated_database_url, "SELECT count(DISTINCT event_id) FROM events")
    assert distinct == len(events)
    assert stored == len(events) - stored_first
    assert dead == 0
    if code == 0:  # offsets were committed with the rows: nothing is read twice
        assert (consumed, duplicates) == (len(events) - stored_first, 0)
    else:  # the uncommitted batch comes again; what it had stored is a duplicate
        assert consumed == stored + duplicates

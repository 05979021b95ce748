"""The benchmarks' own measures: the CPU meter (which process is a service, what it and the
machine used), and the committed count the consumer benchmark's clock starts from."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from bench._cpu import CpuMeter, CpuSample, CpuUse, local_port, own_threads
from bench.consumer import (
    Figure,
    PipelineFigure,
    Throughput,
    _ratios,
    _same_rows,
    committed_by,
)
from clickstream.db import make_engine
from clickstream.db.migrate import upgrade
from clickstream.db.models import sessions_table, traffic_minute_table
from clickstream.events import ClickEvent
from clickstream.store import SessionRules
from tests.support import random_events, write_in_random_batches

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

# A "service": listens on a port and, when told to, burns CPU in a child process of its own (as
# PostgreSQL's connection processes do) and then in itself. The child says when it is halfway,
# so that the test can take its first sample while the child is alive.
_SERVICE = r"""
import socket, subprocess, sys, time
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
sys.stdin.readline()
burn = (
    "import time\ndef burn(s):\n end = time.process_time() + s\n"
    " while time.process_time() < end: pass\n"
    "burn(0.3)\nprint('half', flush=True)\nburn(0.3)\n"
)
child = subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip(), flush=True)
child.wait()
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("done", flush=True)
sys.stdin.readline()
"""


@contextmanager
def _service() -> Iterator[tuple[subprocess.Popen[str], int]]:
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVICE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        yield process, int(process.stdout.readline())
    finally:
        process.kill()
        process.wait()


def test_a_service_is_the_process_on_its_port_with_its_children_ended_or_not() -> None:
    with _service() as (process, port):
        meter = CpuMeter({"svc": port, "nobody": _free_port(), "remote": None})
        assert meter.pids == {"svc": process.pid}
        assert meter.missing == {"nobody": "no local listener found"}
        assert f"svc: pid {process.pid} (python" in meter.describe()
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("go\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "half"
        before = meter.sample()  # the child is alive, 0.3 s of CPU into its 0.6 s
        assert process.stdout.readline().strip() == "done"
        after = meter.sample()
    used = CpuUse.between(before, after)
    # After the first sample: the child's second 0.3 s (it ended: counted through the service's
    # cutime, its first half not again) and the service's own 0.3 s. Clock ticks are 10 ms.
    assert 0.5 <= used.services["svc"] <= 0.78
    assert set(used.services) == {"svc"}
    assert used.busy >= used.services["svc"] - 0.05
    assert used.seconds == pytest.approx(after.at - before.at)


def test_own_threads_splits_the_main_thread_from_the_others_ended_ones_too() -> None:
    def burn(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    main, other = own_threads()
    worker = threading.Thread(target=burn, args=(0.3,))
    worker.start()
    worker.join()  # ended before the second reading
    burn(0.2)
    main_after, other_after = own_threads()
    assert 0.15 <= main_after - main <= 0.35
    assert 0.25 <= other_after - other <= 0.45


def test_the_machine_counts_this_process_s_own_work() -> None:
    meter = CpuMeter({})
    before = meter.sample()
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    used = CpuUse.between(before, meter.sample())
    assert used.services == {}
    assert used.busy >= 0.25


def test_per_item_rest_and_bound_are_simple_arithmetic() -> None:
    use = CpuUse.between(
        CpuSample(at=10.0, busy=100.0, steal=1.0, services={"pg": 5.0, "os": 7.0}),
        CpuSample(at=12.0, busy=103.0, steal=1.5, services={"pg": 6.0, "os": 7.5}),
    )
    assert use.seconds == 2.0
    assert use.steal == 0.5
    assert use.rest == pytest.approx(1.5)  # 3.0 busy - 1.0 - 0.5
    per = use.per_item(1000)
    assert per == pytest.approx({"pg": 1000.0, "os": 500.0, "rest": 1500.0, "total": 3000.0})
    assert use.bound(1000) == pytest.approx(1000 * use.cores / 3.0)
    assert use.utilisation == pytest.approx(3.0 / (2.0 * use.cores))
    assert use.per_item(0) == {}


def test_a_service_whose_time_went_back_restarted_and_is_left_out() -> None:
    use = CpuUse.between(
        CpuSample(at=0.0, busy=10.0, steal=0.0, services={"pg": 5.0, "os": 7.0}),
        CpuSample(at=1.0, busy=11.0, steal=0.0, services={"pg": 0.2, "os": 7.5}),
    )
    assert use.services == {"os": 0.5}
    assert use.rest == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("url", "default", "expected"),
    [
        ("127.0.0.1:19092", 9092, 19092),
        ("localhost:19092,localhost:19093", 9092, 19092),
        ("postgresql+psycopg://u:p@127.0.0.1:15432/db", 5432, 15432),
        ("postgresql+psycopg://u:p@localhost/db", 5432, 5432),
        ("http://[::1]:19200", 9200, 19200),
        ("https://localhost", 9200, 443),
        ("http://127.0.0.1/", 9200, 80),
        ("localhost:abc", 9092, None),
        ("https://kafka-x.aivencloud.com:12345", 9092, None),
        ("db.example.com:5432", 5432, None),
    ],
)
def test_only_loopback_urls_name_a_local_port(url: str, default: int, expected: int | None) -> None:
    assert local_port(url, default) == expected


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_events_committed_before_the_group_formed_are_read_not_assumed() -> None:
    # The consumer benchmark's clock for several processes starts when the group has formed.
    # A run whose first reading came after that moment once counted every event as measured
    # (30,000 events in 0.00 s); now such a run has nothing left to measure.
    samples = [(1.0, 0), (2.0, 4000), (3.0, 9000), (4.0, 10000)]
    assert committed_by(samples, 2.5, 10000) == 4000
    assert committed_by(samples, 2.0, 10000) == 4000
    assert committed_by(samples, 0.5, 10000) == 10000


def test_the_ceiling_s_same_rows_are_the_rows_the_store_leaves(tmp_path: Path) -> None:
    # The consumer benchmark's ceilings write "the same rows" as the pipeline: its sessions
    # and traffic_minute rows, computed apart from the store, must equal what the store left.
    rng = random.Random(5)
    events = [
        ClickEvent.model_validate_json(json.dumps(e))
        for e in random_events(77, users=40, per_user=20)
    ]
    url = f"sqlite:///{tmp_path / 'same.db'}"
    upgrade(url)
    engine = make_engine(url)
    write_in_random_batches(engine, events, rng, SessionRules())
    with engine.connect() as conn:
        stored_sessions = {
            row["session_id"]: {k: v for k, v in row.items() if k != "updated_at"}
            for row in map(dict, conn.execute(select(sessions_table)).mappings())
        }
        stored_minutes = {
            (row["minute"], row["device_type"], row["country"]): row
            for row in map(dict, conn.execute(select(traffic_minute_table)).mappings())
        }
    engine.dispose()
    sessions, minutes = _same_rows(events)
    assert len(sessions) == len(stored_sessions) > 40
    for row in sessions:
        assert {k: v for k, v in row.items() if k != "updated_at"} == stored_sessions[
            row["session_id"]
        ]
    assert len(minutes) == len(stored_minutes)
    for row in minutes:
        assert row == stored_minutes[row["minute"], row["device_type"], row["country"]]


def _figure(name: str, rate: float) -> Figure:
    return Figure(name, 1000, 1000 / rate, 0.0)


def _throughput(*, opensearch: bool, processes: bool) -> Throughput:
    def pipeline(name: str, rate: float) -> PipelineFigure:
        return PipelineFigure(name, 1000, 1000 / rate, 0.0)

    return Throughput(
        pipeline_pg=pipeline("pg", 20_000),
        pipeline_both=pipeline("both", 10_000) if opensearch else None,
        naive=_figure("naive", 100),
        copy_same_rows=_figure("ceiling: copy, same rows", 100_000),
        bulk_same_documents=_figure("ceiling: bulk, same documents", 40_000)
        if opensearch
        else None,
        copy_events=_figure("ceiling: copy, events", 200_000),
        bulk_events=_figure("ceiling: bulk, events", 80_000) if opensearch else None,
        decode=_figure("decode", 80_000),
        processes_pg=pipeline("pg x2", 30_000) if processes else None,
        processes_both=pipeline("both x2", 14_000) if processes and opensearch else None,
    )


def test_the_ceiling_goal_is_the_whole_pipeline_s_against_the_slower_same_rows_ceiling() -> None:
    ratios = {
        name: (value, verdict)
        for name, value, verdict in _ratios(_throughput(opensearch=True, processes=True))
    }
    goals = {name: value for name, (value, verdict) in ratios.items() if verdict.startswith("goal")}
    assert goals == pytest.approx(
        {
            "both / naive": 100.0,
            "both / slower sink's ceiling (bulk, same documents)": 0.25,
            "both x2 / naive": 140.0,
            "both x2 / slower sink's ceiling (bulk, same documents)": 0.35,
        }
    )
    assert ratios["both x2 / slower sink's ceiling (bulk, same documents)"][1].endswith("MISSED")
    # For information only: the events-only ceilings, and PostgreSQL alone against COPY.
    assert ratios["both / ceiling: bulk, events"][0] == pytest.approx(0.125)
    assert ratios["pg x2 / ceiling: copy, same rows"][0] == pytest.approx(0.3)
    assert ratios["pg x2 / ceiling: copy, same rows"][1].startswith("for information")


def test_without_opensearch_postgresql_is_the_slower_sink_and_the_goal() -> None:
    ratios = _ratios(_throughput(opensearch=False, processes=False))
    goals = {name: value for name, value, verdict in ratios if verdict.startswith("goal")}
    assert goals == pytest.approx({"pg / naive": 200.0, "pg / ceiling: copy, same rows": 0.2})

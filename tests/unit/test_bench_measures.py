"""The benchmarks' own measures: the CPU meter (which process is a service, what it and the
machine used), and the committed count the consumer benchmark's clock starts from."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bench._cpu import CpuMeter, CpuSample, CpuUse, local_port
from bench.consumer import committed_by

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

# A "service": listens on a port, and when told to, burns CPU in a child process of its own
# (as PostgreSQL's connection processes do) that ends before it answers, then in itself.
_SERVICE = r"""
import socket, subprocess, sys, time
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
sys.stdin.readline()
burn = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass"
subprocess.run([sys.executable, "-c", burn], check=True)
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
        before = meter.sample()
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("go\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "done"
        after = meter.sample()
    used = CpuUse.between(before, after)
    # 0.4 s in the child that ended, 0.3 s in the service itself (clock ticks: 10 ms).
    assert 0.65 <= used.services["svc"] <= 1.2
    assert set(used.services) == {"svc"}
    assert used.busy >= used.services["svc"] - 0.05
    assert used.seconds == pytest.approx(after.at - before.at)


def test_the_machine_counts_this_process_s_own_work() -> None:
    meter = CpuMeter({})
    before = meter.sample()
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    used = CpuUse.between(before, meter.sample())
    assert used.services == {}
    assert used.busy >= 0.25
    assert used.rest == used.busy


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


@pytest.mark.parametrize(
    ("url", "default", "expected"),
    [
        ("127.0.0.1:19092", 9092, 19092),
        ("localhost:19092,localhost:19093", 9092, 19092),
        ("postgresql+psycopg://u:p@127.0.0.1:15432/db", 5432, 15432),
        ("postgresql+psycopg://u:p@localhost/db", 5432, 5432),
        ("http://[::1]:19200", 9200, 19200),
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

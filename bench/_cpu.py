"""Where the CPU time of a benchmark run goes: the machine, and each local service.

On a machine where the pipeline and every service it writes to share a few cores, events/s
alone says little about *why* a run was as fast as it was, and it moves by a quarter from one
hour to the next. CPU time per event does not move much, and it adds up: the cores divided by
the CPU seconds that one event costs everywhere (consumer, PostgreSQL, OpenSearch, Kafka) is
the most a run can reach on those cores, however well its parts overlap.

Read from ``/proc`` (Linux):

* the machine: ``/proc/stat``, time not idle on all cores (user, nice, system, irq, softirq)
  and, apart, the time the hypervisor gave to other machines (steal);
* a service: the process listening on its local TCP port (found once, when the meter is made)
  and its descendants, each with the time of its children that already ended (PostgreSQL's
  connection processes come and go; their time stays in the server's ``cutime``).

What no service accounts for is "the rest": the benchmark process (and, with it, a consumer
that runs in one of its threads), consumer processes, and anything else on the machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["CpuMeter", "CpuSample", "CpuUse", "local_port", "own_threads"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_LISTEN = "0A"


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds used so far: by the whole machine, and by each service's processes."""

    at: float
    """``time.perf_counter()`` when it was taken."""
    busy: float
    """The machine's CPU seconds not idle, all cores together (steal not included)."""
    steal: float
    """CPU seconds the hypervisor ran other machines while this one wanted to run."""
    services: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CpuUse:
    """The CPU seconds used between two samples."""

    seconds: float
    cores: int
    busy: float
    steal: float
    services: Mapping[str, float]

    @property
    def rest(self) -> float:
        """CPU seconds no service accounts for: the benchmark, consumer processes, others.

        Not clamped: the machine's and the processes' times are separate counters, each in
        clock ticks, so over a short interval this can come out slightly negative.
        """
        return self.busy - sum(self.services.values())

    @property
    def utilisation(self) -> float:
        """Busy share of every core over the interval (1.0: all cores busy all the time)."""
        return self.busy / (self.seconds * self.cores) if self.seconds > 0 else 0.0

    def per_item(self, count: int) -> dict[str, float]:
        """Microseconds of CPU per item: each service, ``rest`` and ``total``."""
        if count <= 0:
            return {}
        scale = 1e6 / count
        out = {name: used * scale for name, used in self.services.items()}
        out["rest"] = self.rest * scale
        out["total"] = self.busy * scale
        return out

    def bound(self, count: int) -> float:
        """Items per second if every core were busy at this CPU cost per item."""
        return count * self.cores / self.busy if self.busy > 0 else float("inf")

    @staticmethod
    def between(before: CpuSample, after: CpuSample) -> CpuUse:
        """What was used from ``before`` to ``after``."""
        return CpuUse(
            seconds=after.at - before.at,
            cores=os.cpu_count() or 1,
            busy=after.busy - before.busy,
            steal=after.steal - before.steal,
            # A service whose time went back (it restarted: another process) is left out.
            services={
                name: after.services[name] - used
                for name, used in before.services.items()
                if after.services.get(name, -1.0) >= used
            },
        )


def local_port(url: str, default_port: int) -> int | None:
    """The port of ``url`` (or ``host:port``) when it names this machine's loopback, else None.

    Without a port, an ``http``/``https`` URL means 80/443 and anything else ``default_port``.
    A port that is not a number is not a local service either.
    """
    text = url if "//" in url else f"//{url.split(',', maxsplit=1)[0]}"
    parts = urlsplit(text)
    if parts.hostname is None or parts.hostname not in _LOCAL_HOSTS:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return port or {"http": 80, "https": 443}.get(parts.scheme, default_port)


class CpuMeter:
    """Samples the machine's CPU time and that of the local services named in ``ports``.

    ``ports`` maps a service's name to its local TCP port; a port that no local process
    listens on (a remote service, or none) is left out of the samples.
    """

    def __init__(self, ports: Mapping[str, int | None]) -> None:
        wanted = {port for port in ports.values() if port is not None}
        listening, listeners = _listeners(wanted)
        self.pids: dict[str, int] = {
            name: listeners[port]
            for name, port in ports.items()
            if port is not None and port in listeners
        }
        self.missing: dict[str, str] = {
            name: "its port is open, but its process cannot be read (another user's?)"
            if port in listening
            else "no local listener found"
            for name, port in ports.items()
            if port is not None and name not in self.pids
        }
        """Services on a local port that are not metered, and why (their time is in "rest")."""

    def describe(self) -> str:
        """Which process is metered for each service (a proxy or a tunnel would show here)."""
        found = [f"{name}: pid {pid} ({_command(pid)})" for name, pid in self.pids.items()]
        found += [f"{name}: {why}" for name, why in self.missing.items()]
        return "; ".join(found) or "no local service"

    def sample(self) -> CpuSample:
        """The CPU seconds used so far (a few milliseconds to read)."""
        at = time.perf_counter()
        busy, steal = _machine()
        if not self.pids:
            return CpuSample(at, busy, steal)
        stats = _all_stats()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        services = {name: _tree(pid, stats, children) for name, pid in self.pids.items()}
        return CpuSample(at, busy, steal, services)


def own_threads() -> tuple[float, float]:
    """CPU seconds of this process so far: its main thread, and all its other threads (those
    that ended too: a client's threads end when it is closed)."""
    pid = os.getpid()
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    main = (int(fields[11]) + int(fields[12])) / _TICK
    times = os.times()
    return main, max(0.0, times.user + times.system - main)


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
    except OSError:
        return "?"


def _machine() -> tuple[float, float]:
    with Path("/proc/stat").open(encoding="ascii") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: inside user, nice]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / _TICK, steal / _TICK


def _all_stats() -> dict[int, tuple[int, float]]:
    """Per live process: its parent, and its CPU seconds with those of its ended children."""
    out: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            raw = Path(entry.path, "stat").read_bytes()
            fields = raw.rsplit(b")", 1)[1].split()
            # After the name: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17)
            used = sum(int(fields[i]) for i in (11, 12, 13, 14)) / _TICK
            out[int(entry.name)] = (int(fields[1]), used)
    return out


def _tree(
    pid: int, stats: Mapping[int, tuple[int, float]], children: Mapping[int, Iterable[int]]
) -> float:
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        if current in stats:
            total += stats[current][1]
        stack.extend(children.get(current, ()))
    return total


def _listeners(ports: set[int]) -> tuple[set[int], dict[int, int]]:
    """The ports of ``ports`` that something listens on (TCP, IPv4 or IPv6), and per port the
    local process listening on it, where its file descriptors can be read."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError):
            for line in Path(table).read_text(encoding="ascii").splitlines()[1:]:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if fields[3] == _LISTEN and port in ports:
                    inodes[f"socket:[{fields[9]}]"] = port
    found: dict[int, int] = {}
    if not inodes:
        return set(), found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with suppress(OSError):
            for fd in os.scandir(f"{entry.path}/fd"):
                with suppress(OSError):
                    listening = inodes.get(os.readlink(fd.path))
                    if listening is not None:
                        # The parent of a forked listener (PostgreSQL's postmaster) listens too.
                        found.setdefault(listening, int(entry.name))
    return set(inodes.values()), found

"""When to stop waiting for a server: the pure policy, and a small loop that applies it."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ReadinessPolicy", "StartupError", "Verdict", "judge", "wait_until_ready"]


class StartupError(RuntimeError):
    """A server did not become ready; the message says why and names its log file."""


class Verdict(enum.Enum):
    """What to do after one readiness probe."""

    READY = "ready"
    WAIT = "wait"
    DIED = "died"
    TIMED_OUT = "timed out"


@dataclass(frozen=True)
class ReadinessPolicy:
    """How long to wait for a server and how often to probe it (seconds)."""

    timeout_s: float
    interval_s: float = 0.5


def judge(*, ready: bool, alive: bool, elapsed_s: float, policy: ReadinessPolicy) -> Verdict:
    """Decide what one probe means.

    A ready server wins even at the deadline; a process that exited fails at once (no point
    waiting out the timeout); otherwise wait until ``policy.timeout_s`` has passed.
    """
    if ready:
        return Verdict.READY
    if not alive:
        return Verdict.DIED
    if elapsed_s >= policy.timeout_s:
        return Verdict.TIMED_OUT
    return Verdict.WAIT


def wait_until_ready(
    name: str,
    *,
    probe: Callable[[], bool],
    alive: Callable[[], bool],
    policy: ReadinessPolicy,
    log_path: Path,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Probe until ready and return the seconds waited.

    Raises:
        StartupError: the process exited or the timeout passed; the message points at ``log_path``.
    """
    start = clock()
    dead_checks = 0
    while True:
        verdict = judge(ready=probe(), alive=alive(), elapsed_s=clock() - start, policy=policy)
        if verdict is Verdict.READY:
            return clock() - start
        # One "not alive" reading can be a transient /proc read during the JVM's start-up;
        # the process is declared dead only when two consecutive readings agree.
        dead_checks = dead_checks + 1 if verdict is Verdict.DIED else 0
        if dead_checks >= 2:
            raise StartupError(f"{name} exited during startup; see its log: {log_path}")
        if verdict is Verdict.TIMED_OUT:
            raise StartupError(
                f"{name} was not ready after {policy.timeout_s:.0f} s; see its log: {log_path}"
            )
        sleep(policy.interval_s)

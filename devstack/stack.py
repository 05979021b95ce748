"""Bring the whole stack up or down, in parallel, and report on it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from devstack.config import StackConfig
from devstack.kafka import KafkaService
from devstack.maven import MavenError
from devstack.opensearch import OpenSearchService
from devstack.postgres import PostgresService
from devstack.readiness import ReadinessPolicy, StartupError, wait_until_ready
from devstack.service import Service

__all__ = [
    "SERVICE_NAMES",
    "Outcome",
    "Status",
    "bring_down",
    "bring_up",
    "make_services",
    "status",
]

logger = logging.getLogger(__name__)

SERVICE_NAMES = ("kafka", "postgres", "opensearch")
# A freshly started server may not have written its pid file yet (pg_ctl -W returns first).
_PID_GRACE_S = 10.0

_FACTORIES: dict[str, Callable[[StackConfig], Service]] = {
    "kafka": KafkaService,
    "postgres": PostgresService,
    "opensearch": OpenSearchService,
}


def make_services(config: StackConfig, names: Sequence[str] = SERVICE_NAMES) -> list[Service]:
    """Return the services called ``names``, in the given order.

    Raises:
        ValueError: an unknown name.
    """
    unknown = [name for name in names if name not in _FACTORIES]
    if unknown:
        raise ValueError(f"unknown service(s) {unknown}; choose from {list(SERVICE_NAMES)}")
    return [_FACTORIES[name](config) for name in names]


@dataclass(frozen=True)
class Outcome:
    """What ``up`` or ``down`` did to one service."""

    name: str
    state: Literal["started", "already running", "stopped", "not running", "failed"]
    seconds: float
    detail: str


def _prepare(service: Service) -> None:
    prepare = getattr(service, "prepare", None)
    if prepare is not None:
        prepare()


def _up_one(service: Service, timeout_s: float | None) -> Outcome:
    start = time.monotonic()
    try:
        if service.pid() is not None and service.probe():
            _prepare(service)
            return Outcome(service.name, "already running", 0.0, service.endpoint())
        if service.pid() is None:
            if service.port_taken():
                raise StartupError(
                    f"{service.name}: {service.endpoint()} is already served by a process this "
                    "stack did not start; stop it or choose another port (see --help)"
                )
            service.install()
            logger.info("%s: starting (log: %s)", service.name, service.log_path)
            service.start()
        spawned = time.monotonic()  # the grace period counts from the start, not the install
        wait_until_ready(
            service.name,
            probe=service.probe,
            alive=lambda: service.pid() is not None or time.monotonic() - spawned < _PID_GRACE_S,
            policy=ReadinessPolicy(timeout_s=timeout_s or service.startup_timeout_s),
            log_path=service.log_path,
        )
        _prepare(service)
    except (StartupError, MavenError, OSError) as exc:
        return Outcome(service.name, "failed", time.monotonic() - start, str(exc))
    seconds = time.monotonic() - start
    logger.info("%s: ready in %.1f s at %s", service.name, seconds, service.endpoint())
    return Outcome(service.name, "started", seconds, service.endpoint())


def bring_up(services: Sequence[Service], *, timeout_s: float | None = None) -> list[Outcome]:
    """Start every service that is not running, all at once, and wait until each is healthy.

    Idempotent: running healthy services are reported as such and left alone. A service that
    fails does not stop the others; its :class:`Outcome` carries the error and its log path.
    """
    with ThreadPoolExecutor(max_workers=max(1, len(services))) as pool:
        return list(pool.map(lambda service: _up_one(service, timeout_s), services))


def _down_one(service: Service, timeout_s: float) -> Outcome:
    start = time.monotonic()
    pid = service.pid()
    if pid is None:
        return Outcome(service.name, "not running", 0.0, "")
    try:
        gone = service.stop(timeout_s=timeout_s)
    except (StartupError, OSError) as exc:
        return Outcome(service.name, "failed", time.monotonic() - start, str(exc))
    if not gone:
        return Outcome(service.name, "failed", time.monotonic() - start, f"pid {pid} survived")
    return Outcome(service.name, "stopped", time.monotonic() - start, f"pid {pid}")


def bring_down(services: Sequence[Service], *, timeout_s: float = 30.0) -> list[Outcome]:
    """Stop every running service this stack started (SIGTERM, then SIGKILL after ``timeout_s``)."""
    with ThreadPoolExecutor(max_workers=max(1, len(services))) as pool:
        return list(pool.map(lambda service: _down_one(service, timeout_s), services))


@dataclass(frozen=True)
class Status:
    """How one service looks right now."""

    name: str
    state: Literal["up", "starting", "down", "foreign"]
    pid: int | None
    endpoint: str
    log_path: str


def status(services: Sequence[Service]) -> list[Status]:
    """Probe each service: ``up`` (healthy), ``starting`` (our process, not healthy yet),
    ``down``, or ``foreign`` (its port is served by a process this stack did not start)."""

    def one(service: Service) -> Status:
        pid = service.pid()
        if pid is not None:
            state: Literal["up", "starting", "down", "foreign"] = (
                "up" if service.probe() else "starting"
            )
        else:
            state = "foreign" if service.port_taken() else "down"
        return Status(service.name, state, pid, service.endpoint(), str(service.log_path))

    with ThreadPoolExecutor(max_workers=max(1, len(services))) as pool:
        return list(pool.map(one, services))

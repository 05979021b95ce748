"""What the stack needs from each server it manages."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

__all__ = ["Service"]


class Service(Protocol):
    """One server of the local stack, started in the background and found again by pid file."""

    name: str
    log_path: Path
    startup_timeout_s: float

    def install(self) -> None:
        """Make binaries/jars and on-disk state available (may download; idempotent)."""

    def start(self) -> None:
        """Start the server in the background (not running yet); returns without waiting."""

    def pid(self) -> int | None:
        """Return the pid of the server this stack started, if it is running."""

    def probe(self) -> bool:
        """Tell whether the server answers like a healthy one (quick; never raises)."""

    def port_taken(self) -> bool:
        """Tell whether the server's port already accepts connections."""

    def stop(self, *, timeout_s: float) -> bool:
        """Stop the server gracefully, killing it after ``timeout_s``; True when it is gone."""

    def endpoint(self) -> str:
        """Say how a client reaches the server (URL or ``host:port``)."""

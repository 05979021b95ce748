"""Background processes of the stack: start detached, find by pid file, stop gracefully."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

__all__ = [
    "as_user",
    "exclusive_lock",
    "free_tcp_port",
    "is_running",
    "port_open",
    "read_pid",
    "spawn",
    "stop_pid",
    "tail",
    "write_pid",
]

logger = logging.getLogger(__name__)


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session with stdout and stderr written to ``log_path``.

    The previous log is kept as ``<log_path>.1``, so the log holds this run only. The new session
    keeps the server alive after the calling shell or job is gone and away from signals sent to
    the caller's process group.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if log_path.exists():
        log_path.replace(log_path.with_name(log_path.name + ".1"))
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )


def write_pid(path: Path, pid: int) -> None:
    """Record ``pid`` in ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n", encoding="ascii")


def read_pid(path: Path) -> int | None:
    """Return the pid on the first line of ``path``, or None when absent or unreadable."""
    try:
        first = path.read_text(encoding="ascii").splitlines()[0]
        return int(first.strip())
    except (OSError, IndexError, ValueError):
        return None


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name in parentheses may hold spaces; the state follows the last ')'.
    return stat.rsplit(")", 1)[1].split()[0]


def is_running(pid: int | None, *, marker: str | None = None) -> bool:
    """Tell whether ``pid`` is a live (non-zombie) process whose command line contains ``marker``.

    The marker guards against a stale pid file whose number now belongs to another process.
    """
    if pid is None or pid <= 0:
        return False
    state = _proc_state(pid)
    if state is None or state in {"Z", "X"}:
        return False
    if marker is None:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return marker.encode() in cmdline


def stop_pid(pid: int, *, marker: str | None, timeout_s: float = 30.0) -> bool:
    """Send SIGTERM, wait up to ``timeout_s`` for exit, then SIGKILL.

    Returns:
        True if the process ended (or was not running), False if it survived SIGKILL.
    """
    if not is_running(pid, marker=marker):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_running(pid, marker=marker):
            return True
        time.sleep(0.2)
    logger.warning("pid %d ignored SIGTERM for %.0f s; killing it", pid, timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if not is_running(pid, marker=marker):
            return True
        time.sleep(0.1)
    return False


def port_open(host: str, port: int, *, timeout_s: float = 0.5) -> bool:
    """Tell whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (for throwaway servers in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 20) -> str:
    """Return the last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def as_user(user: str | None, argv: Sequence[str]) -> list[str]:
    """Prefix ``argv`` with ``runuser`` when running as root and ``user`` is given.

    PostgreSQL refuses to run as root, so as root its tools run as the ``postgres`` OS user;
    as any other user they run as that user.
    """
    if user is not None and os.geteuid() == 0:
        return ["runuser", "-u", user, "--", *argv]
    return list(argv)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing), waiting for other holders.

    Two ``up`` commands run at once would otherwise both start a server, and the loser's pid
    file would hide the winner.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another devstack command to finish (lock: %s)", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

"""What every ``python -m clickstream.*`` entry point shares: the log-level flag and log format."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Final

__all__ = [
    "INTERRUPTED",
    "LOG_FORMAT",
    "Stopped",
    "WaitWatch",
    "add_log_level",
    "configure_logging",
    "number",
    "stop_on_signals",
    "whole_number",
]

INTERRUPTED: Final = 130
"""Exit status of a command stopped by SIGINT or SIGTERM (128 + SIGINT, the shell's own)."""

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_log_level(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, subcommand: bool = False
) -> None:
    """Add ``--log-level`` (case-insensitive, default INFO).

    ``subcommand=True`` adds it to a subcommand's parser too, without a default of its own
    (which would override a ``--log-level`` given before the subcommand).
    """
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LEVELS,
        default=argparse.SUPPRESS if subcommand else "INFO",
        help="logging level: DEBUG, INFO, WARNING or ERROR (default INFO)",
    )


def configure_logging(level: str) -> None:
    """Log to stderr with timestamps; stdout stays free for results and summaries.

    Below ``DEBUG``, the OpenSearch client's own lines are left out, errors apart: it logs
    every request at INFO (several lines a second from a busy consumer) and every failed
    attempt at WARNING with a traceback, while the sink logs each retry in one line of its
    own. ``DEBUG`` keeps them all.
    """
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    client = logging.getLogger("opensearch")
    client.setLevel(logging.NOTSET if level == "DEBUG" else logging.ERROR)


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high`` (no upper bound if None)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            span = f"from {low:,} to {high:,}" if high is not None else f"of at least {low:,}"
            msg = f"must be a whole number {span}, got {text}"
            raise argparse.ArgumentTypeError(msg)
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value: 'abc'"
    return parse


def number(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number from ``low`` to ``high`` (so finite, and never NaN)."""

    def parse(text: str) -> float:
        value = float(text)
        if not low <= value <= high:
            msg = f"must be a number from {low:g} to {high:g}, got {text}"
            raise argparse.ArgumentTypeError(msg)
        return value

    parse.__name__ = "float"  # argparse names the type in "invalid float value: 'abc'"
    return parse


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived while a command ran (see :func:`stop_on_signals`).

    A :class:`BaseException`, like :class:`KeyboardInterrupt`, so that no ``except Exception``
    swallows it; unlike it, psycopg does not answer it by asking a server that may be hung to
    cancel the query (which waited ten seconds before the command could exit).
    """

    def __init__(self, signum: int) -> None:
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name}")


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Stopped` in the main thread.

    For one-shot commands: the entry point catches :class:`Stopped`, says in one line what was
    left undone and exits with :data:`INTERRUPTED`. Python runs a signal handler only between
    two bytecodes, so every wait inside the block must be in short slices (or in a client that
    checks for signals while it waits, as psycopg and urllib3 sockets do). Without this,
    SIGTERM ended the process at once with no word, and Ctrl-C printed a traceback. The
    previous handlers come back at the end (nothing is installed off the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_stopped(signum: int, _frame: FrameType | None) -> None:
        raise Stopped(signum)

    previous = {sig: signal.signal(sig, raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class _Wait:
    what: str
    hint: str
    began: float
    report_at: float
    reported: bool = False


class WaitWatch:
    """Says, from a thread of its own, when a wait on a server lasts: what for, and what to do.

    A driver that waits inside C code (psycopg for PostgreSQL) leaves the command silent for
    as long as the server does not answer: a server that is hung, or cut off by the network
    while the connection stays open, never answers, and no timeout fires. Wrap each such wait
    in :meth:`waiting`; when one lasts ``after`` seconds, a warning names it, and repeats every
    ``every`` seconds until it ends (then one line says it did). Waits do not nest.

    Args:
        logger: where the lines go.
        after: seconds a wait may take before it is reported.
        every: seconds between two reports of the same wait.
    """

    def __init__(self, logger: logging.Logger, *, after: float = 10.0, every: float = 30.0) -> None:
        self._logger = logger
        self._after = after
        self._every = every
        self._lock = threading.Lock()
        self._wait: _Wait | None = None
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    @contextmanager
    def waiting(self, what: str, *, hint: str = "") -> Iterator[None]:
        """Report the block if it lasts; ``what`` completes "waited N s for ...".

        ``hint`` (optional) suggests causes and says what the operator may do, e.g. that a
        stop loses nothing.
        """
        began = time.monotonic()
        wait = _Wait(what, hint, began, began + self._after)
        with self._lock:
            self._wait = wait
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._watch, name="wait-watch", daemon=True)
                self._thread.start()
        self._wake.set()
        try:
            yield
        except BaseException:
            with self._lock:
                self._wait = None
            raise
        with self._lock:
            self._wait = None
        if wait.reported:
            self._logger.info("the wait for %s ended after %.0f s", what, time.monotonic() - began)

    def close(self) -> None:
        """Stop the thread (idempotent); a wait still open is no longer reported."""
        self._closed = True
        self._wake.set()

    def _watch(self) -> None:
        while not self._closed:
            self._wake.clear()  # before reading: a wait that starts after this wakes us
            report: _Wait | None = None
            with self._lock:
                wait, now = self._wait, time.monotonic()
                if wait is not None and now >= wait.report_at:
                    report, wait.reported = wait, True
                    wait.report_at = now + self._every
                timeout = None if wait is None else wait.report_at - now
            if report is not None:
                self._logger.warning(
                    "waited %.0f s for %s; still waiting%s",
                    now - report.began,
                    report.what,
                    f". {report.hint}" if report.hint else "",
                )
            self._wake.wait(timeout)

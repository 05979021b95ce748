"""A call in a thread of its own, for waits that must not hold the caller."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

__all__ = ["in_daemon_thread"]

_T = TypeVar("_T")


def in_daemon_thread(call: Callable[[], _T], *, name: str) -> Future[_T]:
    """Start ``call()`` in a new daemon thread; its result or exception arrive in the future.

    For a call that may wait on a server without a limit (librdkafka's commit, a query to a
    hung database): the caller waits on the future in slices or with a timeout, so signals are
    heard and it can give up. A daemon thread, so that a call left waiting does not keep the
    process from exiting; it keeps what it uses alive until then.
    """
    future: Future[_T] = Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as exc:  # handed to whoever waits on the future
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future

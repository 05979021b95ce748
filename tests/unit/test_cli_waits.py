"""The stop and wait-report helpers every one-shot command shares (clickstream.cli)."""

from __future__ import annotations

import logging
import os
import signal
import threading

import pytest

from clickstream.cli import INTERRUPTED, Stopped, WaitWatch, stop_on_signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_raises_stopped_and_the_handlers_come_back(signum: int) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(Stopped) as raised, stop_on_signals():
        os.kill(os.getpid(), signum)
        threading.Event().wait(60)  # a liveness bound: the handler ends the wait
    assert raised.value.signal_name == signal.Signals(signum).name
    assert str(raised.value) == f"stopped by {signal.Signals(signum).name}"
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert INTERRUPTED == 130


def test_stopped_is_not_swallowed_by_except_exception() -> None:
    assert not issubclass(Stopped, Exception)


def test_a_wait_that_lasts_is_reported_with_what_for_and_the_hint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.waits")
    watch = WaitWatch(logger, after=0.05, every=3600)
    reported = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno == logging.WARNING:
                reported.set()

    logger.addHandler(seen := Seen())
    try:
        with (
            caplog.at_level(logging.INFO, logger="test.waits"),
            watch.waiting("the database to answer (a batch)", hint="Ctrl-C stops"),
        ):
            assert reported.wait(60), "the wait was never reported"  # liveness bound
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert warnings[0].startswith("waited ")
        assert "for the database to answer (a batch); still waiting. Ctrl-C stops" in warnings[0]
        infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert len(infos) == 1
        assert infos[0].startswith("the wait for the database to answer (a batch) ended after")
    finally:
        logger.removeHandler(seen)
        watch.close()


def test_a_short_wait_and_one_ended_by_an_error_say_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = WaitWatch(logging.getLogger("test.waits"), after=3600)
    try:
        with caplog.at_level(logging.DEBUG, logger="test.waits"):
            with watch.waiting("the database"):
                pass
            with pytest.raises(ValueError, match="boom"), watch.waiting("the database"):
                raise ValueError("boom")
    finally:
        watch.close()
    assert [r for r in caplog.records if r.name == "test.waits"] == []

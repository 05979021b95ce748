"""Logging set-up shared by every entry point."""

from __future__ import annotations

import logging

import pytest

from clickstream.cli import configure_logging


def _warn_with_traceback() -> None:
    try:
        raise ConnectionRefusedError("connection refused")
    except ConnectionRefusedError:
        logging.getLogger("opensearch").warning(
            "GET http://127.0.0.1:9/ [status:N/A]", exc_info=True
        )


def test_opensearch_warnings_lose_their_traceback_below_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    configure_logging("INFO")
    with caplog.at_level(logging.INFO):
        _warn_with_traceback()
    assert "GET http://127.0.0.1:9/" in caplog.text
    assert "Traceback" not in caplog.text
    assert "ConnectionRefusedError" not in caplog.text


def test_debug_keeps_the_traceback(caplog: pytest.LogCaptureFixture) -> None:
    configure_logging("INFO")
    configure_logging("DEBUG")
    with caplog.at_level(logging.DEBUG):
        _warn_with_traceback()
    assert "ConnectionRefusedError: connection refused" in caplog.text
    configure_logging("INFO")

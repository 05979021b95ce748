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


def test_the_opensearch_client_s_warnings_are_left_out_below_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The sink logs each failed attempt in one line of its own; the client's own warning
    # (with a 50-line traceback) only doubled it during an outage.
    configure_logging("INFO")
    with caplog.at_level(logging.INFO):
        _warn_with_traceback()
        logging.getLogger("opensearch").error("a client error stays")
    assert "GET http://127.0.0.1:9/" not in caplog.text
    assert "Traceback" not in caplog.text
    assert "a client error stays" in caplog.text


def test_debug_keeps_the_traceback(caplog: pytest.LogCaptureFixture) -> None:
    configure_logging("INFO")
    configure_logging("DEBUG")
    with caplog.at_level(logging.DEBUG):
        _warn_with_traceback()
    assert "ConnectionRefusedError: connection refused" in caplog.text
    configure_logging("INFO")


def test_the_opensearch_client_s_request_lines_are_left_out_below_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The client logs every request at INFO: a busy consumer's own lines drowned in them.
    configure_logging("INFO")
    request = logging.getLogger("opensearch")
    with caplog.at_level(logging.INFO):
        request.info("POST http://127.0.0.1:19200/_bulk [status:200 request:0.010s]")
        request.warning("POST http://127.0.0.1:19200/_bulk [status:429 request:0.010s]")
    assert "status:200" not in caplog.text
    assert "status:429" not in caplog.text
    configure_logging("DEBUG")
    with caplog.at_level(logging.DEBUG):
        request.info("GET http://127.0.0.1:19200/ [status:200 request:0.001s]")
    assert "GET http://127.0.0.1:19200/" in caplog.text
    configure_logging("INFO")

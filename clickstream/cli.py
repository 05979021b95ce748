"""What every ``python -m clickstream.*`` entry point shares: the log-level flag and log format."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Final

__all__ = ["LOG_FORMAT", "add_log_level", "configure_logging", "number", "whole_number"]

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

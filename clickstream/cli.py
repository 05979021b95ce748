"""What every ``python -m clickstream.*`` entry point shares: the log-level flag and log format."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Final

__all__ = ["LOG_FORMAT", "add_log_level", "configure_logging"]

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_log_level(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--log-level`` (case-insensitive, default INFO)."""
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LEVELS,
        default="INFO",
        help="logging level: DEBUG, INFO, WARNING or ERROR (default INFO)",
    )


def configure_logging(level: str) -> None:
    """Log to stderr with timestamps; stdout stays free for results and summaries."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)

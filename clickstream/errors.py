"""The one exception tree of clickstream.

Adapters translate driver errors at the boundary (``raise ... from exc``):
transient failures (a server is down, a timeout) are retried with backoff;
terminal ones (bad configuration, a rejected document, a failed delivery) are not.
"""

from __future__ import annotations

__all__ = [
    "ClickstreamError",
    "ConfigError",
    "DeliveryError",
    "InvalidEvent",
    "SinkError",
    "TerminalError",
    "TransientError",
]


class ClickstreamError(Exception):
    """Root of every error this package raises on purpose."""


class TerminalError(ClickstreamError):
    """Retrying will not help: the input, the configuration or the data is wrong."""


class TransientError(ClickstreamError):
    """A dependency is unavailable for now; the operation may be retried as a whole."""


class ConfigError(TerminalError):
    """A setting is missing or malformed; the message names the variable and what is expected."""


class DeliveryError(TerminalError):
    """Kafka did not acknowledge one or more produced messages."""


class SinkError(TerminalError):
    """A sink rejected data for a reason retrying cannot fix."""


class InvalidEvent(TerminalError):
    """A message that breaks the event contract.

    Attributes:
        reason: a stable machine-readable code (``not_json``, ``schema``, ``too_large``,
            ``future_timestamp``, ...), sent as a dead-letter header.
        detail: a human-readable explanation that names the offending field.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

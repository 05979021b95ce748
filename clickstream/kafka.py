"""Kafka adapter: librdkafka configuration from :class:`~clickstream.settings.Settings`.

TLS material (Aiven's project CA and per-user client certificate and key) is passed to
librdkafka in memory (``ssl.*.pem``); nothing is written to disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from confluent_kafka import KafkaError, KafkaException

from clickstream.errors import ConfigError, TransientError
from clickstream.settings import Settings

__all__ = [
    "DLQ_MAX_MESSAGE_BYTES",
    "ask_in_slices",
    "kafka_client_config",
    "librdkafka_logger",
    "list_topics",
    "require_topic",
]

_logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_METADATA_SLICE_S: Final = 1.0
"""Longest single metadata request: a signal handler runs only between two of them."""
_METADATA_NOTE_S: Final = 5.0
"""How long a metadata request goes unanswered before a line says that Kafka is awaited."""

DLQ_MAX_MESSAGE_BYTES: Final = 2 * 1024 * 1024
"""The dead-letter topic's ``max.message.bytes`` (``python -m clickstream.topics`` and Pulumi
set it), twice Kafka's default: any message the events topic took fits whole in a dead letter,
with the letter's headers."""


def kafka_client_config(settings: Settings) -> dict[str, str]:
    """The connection part of a librdkafka configuration, shared by every client.

    With no client certificate the connection is PLAINTEXT (the local stack); with one it is
    mutual TLS, as Aiven for Apache Kafka's certificate authentication expects.

    Raises:
        ConfigError: only part of the TLS material is configured.
    """
    config = {"bootstrap.servers": settings.kafka_bootstrap_servers}
    cert, key, ca = settings.kafka_ssl_certificate, settings.kafka_ssl_key, settings.kafka_ssl_ca
    if cert is None and key is None:
        if ca is not None:
            config["security.protocol"] = "SSL"
            config["ssl.ca.pem"] = ca.get_secret_value()
        return config
    if cert is None or key is None:
        missing = "KAFKA_SSL_KEY" if key is None else "KAFKA_SSL_CERTIFICATE"
        msg = (
            f"CLICKSTREAM_{missing} is not set: a client certificate and its key go together "
            "(PEM text, e.g. from the Pulumi stack outputs)"
        )
        raise ConfigError(msg)
    config["security.protocol"] = "SSL"
    config["ssl.certificate.pem"] = cert.get_secret_value()
    config["ssl.key.pem"] = key.get_secret_value()
    if ca is not None:
        config["ssl.ca.pem"] = ca.get_secret_value()
    # Aiven's broker certificates name the service host, so keep hostname verification on.
    config["ssl.endpoint.identification.algorithm"] = "https"
    return config


class _RepeatFilter(logging.Filter):
    """Drop a message that was already logged in the last ``interval`` seconds.

    librdkafka logs every failed reconnect (several a second while a broker is down); one line
    per distinct message every few seconds says the same.
    """

    def __init__(self, interval: float) -> None:
        super().__init__()
        self._interval = interval
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text, now = record.getMessage(), time.monotonic()
        if now - self._last.get(text, -self._interval) < self._interval:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[text] = now
        return True


def librdkafka_logger() -> logging.Logger:
    """The logger to pass as a client's ``"logger"``: librdkafka's own log lines, de-duplicated.

    Without it librdkafka writes straight to stderr. Lines arrive when the client is polled.
    """
    logger = logging.getLogger("clickstream.librdkafka")
    if not any(isinstance(f, _RepeatFilter) for f in logger.filters):
        logger.addFilter(_RepeatFilter(interval=10.0))
    return logger


def list_topics(client: Any, topic: str | None = None, *, timeout: float) -> Any:
    """The cluster's metadata (of ``topic`` alone, when given), waited for in short slices.

    librdkafka waits for a metadata answer inside C code, where Python's signal handlers do
    not run: one ``list_topics(timeout=30)`` against a hung broker held SIGINT for the whole
    30 s and said nothing meanwhile. Here each request waits at most a second, so a stop
    signal is acted on between two of them (the client keeps connecting in the background
    across them), and a wait longer than a few seconds is reported once, with the deadline.

    Args:
        client: any confluent-kafka client (it has ``list_topics``).
        topic: ask about this topic only, or about every topic (None).
        timeout: seconds to keep asking before giving up.

    Raises:
        KafkaException: no broker answered within ``timeout`` (the last attempt's error).
    """

    def note(waited: float) -> None:
        _logger.warning(
            "Kafka has not answered a metadata request for %.0f s (is the broker down, hung "
            "or unreachable?); waiting up to %g s in all (Ctrl-C to stop)",
            waited,
            timeout,
        )

    return ask_in_slices(
        lambda wait: client.list_topics(topic, timeout=wait), timeout=timeout, note=note
    )


def ask_in_slices(
    ask: Callable[[float], _T],
    *,
    timeout: float,
    slice_s: float = _METADATA_SLICE_S,
    retry: Callable[[KafkaException], bool] = lambda _exc: True,
    note: Callable[[float], None] | None = None,
) -> _T:
    """``ask(wait)`` again until it answers, each call waiting at most ``slice_s`` seconds.

    librdkafka waits inside C code, where Python's signal handlers do not run: in slices, a
    stop signal is acted on between two calls. ``note(seconds waited)`` is called once, when
    the calls have failed for :data:`_METADATA_NOTE_S` seconds.

    Raises:
        KafkaException: the last call's, once ``timeout`` passed or ``retry`` refused it.
    """
    deadline = time.monotonic() + timeout
    noted = False
    while True:
        began = time.monotonic()
        wait = min(max(deadline - began, 0.001), slice_s)
        try:
            return ask(wait)
        except KafkaException as exc:
            now = time.monotonic()
            if now >= deadline or not retry(exc):
                raise
            waited = now - (deadline - timeout)
            if note is not None and not noted and waited >= _METADATA_NOTE_S:
                note(waited)
                noted = True
            # A refused connection fails at once: do not ask again faster than once a slice.
            time.sleep(max(min(began + wait, deadline) - now, 0.0))


def require_topic(
    client: Any, topic: str, *, what: str, setting: str, timeout: float = 15.0
) -> None:
    """Fail fast, with what to do, when ``topic`` does not exist.

    Args:
        client: any confluent-kafka client (it has ``list_topics``).
        topic: the topic's name.
        what: how the message names it, e.g. ``"events"``.
        setting: the setting that names it, e.g. ``"CLICKSTREAM_TOPIC"``.

    Raises:
        ConfigError: the topic is missing (or not visible to this client).
        TransientError: the brokers did not answer.
    """
    try:
        metadata = list_topics(client, topic, timeout=timeout).topics.get(topic)
    except KafkaException as exc:
        msg = f"Kafka did not answer a metadata request: {exc}"
        raise TransientError(msg) from exc
    if metadata is None or (
        metadata.error is not None and metadata.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    ):
        msg = (
            f"the {what} topic {topic} does not exist: create it (python -m clickstream.topics "
            f"locally; Pulumi creates it on Aiven) or set {setting}"
        )
        raise ConfigError(msg)

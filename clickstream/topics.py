"""Create the events topic and the dead-letter topic, idempotently (for a local Kafka).

On Aiven, Pulumi creates both topics; this command is for the local stack and for any cluster
where the operator may create topics. Running it again changes nothing: existing topics are
reported and left as they are (a partition count that differs from the request is reported,
never changed, because adding partitions moves keys to other partitions).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from clickstream.cli import (
    INTERRUPTED,
    Stopped,
    add_log_level,
    configure_logging,
    number,
    stop_on_signals,
    whole_number,
)
from clickstream.errors import ClickstreamError, ConfigError, TerminalError, TransientError
from clickstream.kafka import (
    DLQ_MAX_MESSAGE_BYTES,
    kafka_client_config,
    librdkafka_logger,
    list_topics,
)
from clickstream.settings import KAFKA_CONNECTION_FIELDS, SETTING_FLAGS, load_settings

__all__ = ["TopicOutcome", "TopicResult", "TopicSpec", "ensure_topics", "main"]

logger = logging.getLogger("clickstream.topics")  # also when run as __main__

_DAY_MS = 24 * 3600 * 1000
_MAX_RETENTION_DAYS: Final = 36_500


@dataclass(frozen=True)
class TopicSpec:
    """A topic as it should exist."""

    name: str
    partitions: int
    replication_factor: int = 1
    config: Mapping[str, str] = field(default_factory=dict)
    """Topic-level configuration, e.g. ``{"retention.ms": "604800000"}``."""


class TopicOutcome(StrEnum):
    """What :func:`ensure_topics` found or did."""

    CREATED = "created"
    EXISTS = "exists"


@dataclass(frozen=True)
class TopicResult:
    """The outcome for one topic, with its actual partition count."""

    name: str
    outcome: TopicOutcome
    partitions: int


def ensure_topics(
    *, admin_config: Mapping[str, Any], specs: Sequence[TopicSpec], timeout: float
) -> list[TopicResult]:
    """Create the topics that do not exist yet; leave existing ones unchanged (idempotent).

    Args:
        admin_config: librdkafka configuration of an admin client.
        specs: the topics wanted.
        timeout: seconds to wait for the cluster (each request).

    Raises:
        TransientError: no broker answered within ``timeout``.
        TerminalError: the cluster refused to create a topic (e.g. not allowed, bad config).
    """
    try:
        admin = AdminClient(dict(admin_config))
    except KafkaException as exc:  # e.g. TLS material librdkafka cannot read
        msg = (
            f"invalid Kafka client configuration: {exc.args[0]} (check the "
            "CLICKSTREAM_KAFKA_SSL_* settings)"
        )
        raise ConfigError(msg) from exc
    existing = _partition_counts(admin, timeout)
    missing = [spec for spec in specs if spec.name not in existing]
    created: set[str] = set()
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    spec.name,
                    num_partitions=spec.partitions,
                    replication_factor=spec.replication_factor,
                    config=dict(spec.config),
                )
                for spec in missing
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        refused: list[str] = []
        for name, future in futures.items():  # every answer, so that a refusal says it all
            try:
                future.result(timeout=timeout)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue  # created concurrently by someone else: that is fine
                refused.append(f"cannot create topic {name!r}: {error.str()}")
                continue
            created.add(name)
        if refused:
            done = f" (created: {', '.join(sorted(created))})" if created else ""
            raise TerminalError("; ".join(refused) + done)
        existing = _partition_counts(admin, timeout)
    results = []
    for spec in specs:
        partitions = existing.get(spec.name, spec.partitions)
        outcome = TopicOutcome.CREATED if spec.name in created else TopicOutcome.EXISTS
        if outcome is TopicOutcome.EXISTS and partitions != spec.partitions:
            logger.warning(
                "topic %s exists with %d partitions (asked for %d); left unchanged",
                spec.name,
                partitions,
                spec.partitions,
            )
        results.append(TopicResult(spec.name, outcome, partitions))
    return results


def _partition_counts(admin: AdminClient, timeout: float) -> dict[str, int]:
    try:
        metadata = list_topics(admin, timeout=timeout)
    except KafkaException as exc:
        msg = f"no Kafka broker answered within {timeout:g} s: {exc.args[0]}"
        raise TransientError(msg) from exc
    return {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if topic.error is None
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clickstream.topics",
        description=(
            "Create the click-events topic and its dead-letter topic if they do not exist "
            "(idempotent). On Aiven, Pulumi creates them instead."
        ),
        epilog=(
            "Examples:\n"
            "  python -m clickstream.topics\n"
            "  python -m clickstream.topics --partitions 12 --bootstrap-servers 127.0.0.1:19092\n"
            "\n"
            "Connection settings come from the CLICKSTREAM_* environment variables and,\n"
            "when CLICKSTREAM_STACK_OUTPUTS or CLICKSTREAM_PULUMI_STACK is set, the Pulumi\n"
            "stack outputs; the variables override the outputs, and flags override both.\n"
            "Exit status: 0 done, 2 bad configuration,\n"
            "3 Kafka unreachable or a topic could not be created,\n"
            "130 stopped by SIGINT/SIGTERM (run it again: it is idempotent)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers (default: $CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS or "
        "127.0.0.1:19092)",
    )
    parser.add_argument(
        "--topic", help="events topic (default: $CLICKSTREAM_TOPIC or clickstream.events)"
    )
    parser.add_argument(
        "--dlq-topic",
        help="dead-letter topic (default: $CLICKSTREAM_DLQ_TOPIC or clickstream.events.dlq)",
    )
    parser.add_argument(
        "--partitions",
        type=whole_number(1),
        default=6,
        help="partitions of the events topic: the most consumers that can share the work "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--dlq-partitions",
        type=whole_number(1),
        default=1,
        help="partitions of the dead-letter topic (default: %(default)s)",
    )
    parser.add_argument(
        "--replication-factor",
        type=whole_number(1),
        default=1,
        help="copies of each partition; 1 for a single local broker (default: %(default)s)",
    )
    parser.add_argument(
        "--retention-days",
        type=whole_number(1, _MAX_RETENTION_DAYS),
        default=7,
        help="how long the events topic keeps messages (default: %(default)s)",
    )
    parser.add_argument(
        "--dlq-retention-days",
        type=whole_number(1, _MAX_RETENTION_DAYS),
        default=30,
        help="how long the dead-letter topic keeps messages (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=number(0.1, 3600),
        default=15.0,
        help="seconds to wait for the cluster, 0.1 to 3600 (default: %(default)s)",
    )
    add_log_level(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m clickstream.topics``; returns the exit status."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = load_settings(
            role="admin",
            overrides={
                "kafka_bootstrap_servers": args.bootstrap_servers,
                "topic": args.topic,
                "dlq_topic": args.dlq_topic,
            },
            # kafka_client_config() reads the connection; both topics are created.
            uses=KAFKA_CONNECTION_FIELDS | {"topic", "dlq_topic"},
            command="clickstream.topics",
            flags=SETTING_FLAGS,
        )
        admin_config = {
            **kafka_client_config(settings),
            "client.id": "clickstream-topics",
            "logger": librdkafka_logger(),
        }
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    specs = [
        TopicSpec(
            settings.topic,
            args.partitions,
            args.replication_factor,
            {"cleanup.policy": "delete", "retention.ms": str(args.retention_days * _DAY_MS)},
        ),
        TopicSpec(
            settings.dlq_topic,
            args.dlq_partitions,
            args.replication_factor,
            {
                "cleanup.policy": "delete",
                "retention.ms": str(args.dlq_retention_days * _DAY_MS),
                # Room for any message the events topic took, plus the letter's headers.
                "max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES),
            },
        ),
    ]
    try:
        with stop_on_signals():
            results = ensure_topics(admin_config=admin_config, specs=specs, timeout=args.timeout)
    except Stopped as exc:
        logger.error(
            "%s while waiting for Kafka at %s: the topics may not all exist yet; run the "
            "command again (it is idempotent)",
            exc,
            settings.kafka_bootstrap_servers,
        )
        return INTERRUPTED
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    except ClickstreamError as exc:
        logger.error("%s (Kafka at %s)", exc, settings.kafka_bootstrap_servers)
        return 3
    for result in results:
        plural = "" if result.partitions == 1 else "s"
        sys.stdout.write(
            f"{result.name}: {result.outcome} ({result.partitions} partition{plural})\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

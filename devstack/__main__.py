"""Command line of the local stack: ``python -m devstack {up,down,status,env}``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

from devstack.config import StackConfig, config_from_env, env_command, env_exports
from devstack.process import exclusive_lock
from devstack.stack import SERVICE_NAMES, bring_down, bring_up, make_services, status

__all__ = ["build_parser", "main"]

logger = logging.getLogger("devstack")

_EPILOG = """\
examples:
  python -m devstack up                   # start Kafka, PostgreSQL, OpenSearch; wait until healthy
  python -m devstack up kafka postgres    # only these two
  python -m devstack status               # exit code 0 only if every service is up
  eval "$(python -m devstack env)"        # point the application at the stack
  python -m devstack up --kafka-port 29092
  eval "$(python -m devstack env --kafka-port 29092)"   # env needs the same ports as up
  python -m devstack down                 # stop everything the stack started

Everything (jars, data, logs, pid files) lives in .local/ at the repository root; Maven's
~/.m2 is the download cache. Ports and paths can be set with flags or with environment
variables: CLICKSTREAM_DEVSTACK_{HOME,KAFKA_PORT,KAFKA_CONTROLLER_PORT,POSTGRES_PORT,
OPENSEARCH_PORT,OPENSEARCH_TRANSPORT_PORT,HEAP,OPENSEARCH_HEAP,JAVA}: HEAP is Kafka's JVM heap
(default 512m), OPENSEARCH_HEAP OpenSearch's (default 2g).
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (pure; used by :func:`main` and by tests)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="folder for jars, data and logs (default: .local/)")
    for flag, default in (
        ("kafka-port", 19092),
        ("kafka-controller-port", 19093),
        ("postgres-port", 15432),
        ("opensearch-port", 19200),
        ("opensearch-transport-port", 19300),
    ):
        common.add_argument(
            f"--{flag}", type=int, metavar="PORT", help=f"TCP port on 127.0.0.1 (default {default})"
        )

    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description=(
            "Run the development stack on loopback: a Kafka 4 broker (KRaft), PostgreSQL and "
            "OpenSearch 2.19, started in the background and shared by every test run."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.add_argument(
            "services",
            nargs="*",
            metavar="SERVICE",
            help=f"any of {', '.join(SERVICE_NAMES)} (default: all)",
        )
        return sub

    up = add("up", "start the services (idempotent) and wait until each is healthy")
    up.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="readiness timeout per service (default: kafka 120, postgres 60, opensearch 240)",
    )
    down = add("down", "stop the services this stack started (graceful, then kill)")
    down.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="grace period (default 30)"
    )
    add("status", "show whether each service is up; exit code 1 if any is not")
    commands.add_parser(
        "env",
        parents=[common],
        help="print `export CLICKSTREAM_...=` lines for the application",
        description="print `export CLICKSTREAM_...=` lines for the application",
    )
    return parser


def config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> StackConfig:
    """Combine environment defaults with command-line flags (flags win)."""
    overrides = {
        "home": args.home,
        "kafka_port": args.kafka_port,
        "kafka_controller_port": args.kafka_controller_port,
        "postgres_port": args.postgres_port,
        "opensearch_port": args.opensearch_port,
        "opensearch_transport_port": args.opensearch_transport_port,
    }
    return config_from_env(environ, overrides=overrides)


def _environment_hint(config: StackConfig) -> str:
    command, ports = env_command(config)
    if not ports:
        return f'environment: eval "$({command})"'
    # Without the same ports, `devstack env` (and the application's defaults) would point at
    # 19092/15432/19200, where another stack may be listening.
    return (
        f"non-default ports ({', '.join(ports)}): point the application at them with "
        f'eval "$({command})"'
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one devstack command; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        config = config_from_args(args, dict(os.environ))
    except ValueError as exc:
        parser.error(str(exc))

    if args.command == "env":
        sys.stdout.write("\n".join(env_exports(config)) + "\n")
        return 0

    try:
        services = make_services(config, args.services or SERVICE_NAMES)
    except ValueError as exc:
        parser.error(str(exc))
    if args.command == "up":
        started = time.monotonic()
        with exclusive_lock(config.home / "devstack.lock"):
            outcomes = bring_up(services, timeout_s=args.timeout)
        for outcome in outcomes:
            if outcome.state == "failed":
                logger.error("%-10s FAILED: %s", outcome.name, outcome.detail)
            else:
                logger.info("%-10s %-16s %s", outcome.name, outcome.state, outcome.detail)
        elapsed = time.monotonic() - started
        if any(outcome.state == "failed" for outcome in outcomes):
            logger.error("elapsed %.1f s; some services failed (logs named above)", elapsed)
            return 1
        logger.info("elapsed %.1f s; %s", elapsed, _environment_hint(config))
        return 0
    if args.command == "down":
        with exclusive_lock(config.home / "devstack.lock"):
            outcomes = bring_down(services, timeout_s=args.timeout)
        for outcome in outcomes:
            logger.info("%-10s %-12s %s", outcome.name, outcome.state, outcome.detail)
        return 1 if any(outcome.state == "failed" for outcome in outcomes) else 0
    statuses = status(services)
    for item in statuses:
        pid = f"pid {item.pid}" if item.pid else "-"
        logger.info(
            "%-10s %-8s %-10s %s  (log: %s)",
            item.name,
            item.state,
            pid,
            item.endpoint,
            item.log_path,
        )
    return 0 if all(item.state == "up" for item in statuses) else 1


if __name__ == "__main__":
    raise SystemExit(main())

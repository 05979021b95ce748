"""``python -m clickstream.search``: set up OpenSearch, import dashboards, prune old sessions."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from clickstream.cli import (
    INTERRUPTED,
    Stopped,
    WaitWatch,
    add_log_level,
    configure_logging,
    stop_on_signals,
    whole_number,
)
from clickstream.errors import ClickstreamError, ConfigError
from clickstream.search.client import make_client, redact_url
from clickstream.search.dashboards import import_dashboards
from clickstream.search.indices import DEFAULT_RETENTION_DAYS
from clickstream.search.lifecycle import prune_sessions
from clickstream.search.setup import ensure_search_setup
from clickstream.settings import SETTING_FLAGS, Settings, load_settings

logger = logging.getLogger("clickstream.search")

_EPILOG = """\
examples:
  python -m clickstream.search setup
  python -m clickstream.search setup --opensearch-url http://127.0.0.1:19200 --prefix demo
  python -m clickstream.search setup --shards 2 --replicas 1 --retention-days 30
  python -m clickstream.search import-dashboards
  python -m clickstream.search import-dashboards --dashboards-url https://user:pw@host:443
  python -m clickstream.search prune-sessions --older-than-days 90

Connection settings come from CLICKSTREAM_OPENSEARCH_URL, CLICKSTREAM_OPENSEARCH_INDEX_PREFIX and
CLICKSTREAM_DASHBOARDS_URL (or the Pulumi stack outputs); flags override them.
exit status: 0 done, 1 OpenSearch/Dashboards refused or is unavailable, 2 bad settings,
130 stopped by SIGINT/SIGTERM (every command is idempotent: run it again).
A request OpenSearch does not answer fails after 30 s; a wait of more than 10 s is reported.
"""
_WAIT_HINT = (
    "Is the node hung, overloaded or cut off? A request it does not answer fails after 30 s; "
    "Ctrl-C or SIGTERM stops (run the command again: it is idempotent)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clickstream.search",
        description=(
            "Manage the OpenSearch side of clickstream: apply the index templates, the sessions "
            "index and alias, and the lifecycle policy (setup); import the 'Clickstream "
            "Analytics' dashboard into OpenSearch Dashboards (import-dashboards); delete "
            "sessions older than a retention (prune-sessions). Every command is idempotent."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_log_level(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    setup = commands.add_parser(
        "setup", help="apply index templates, the sessions alias and the ISM policy"
    )
    setup.add_argument("--opensearch-url", help="OpenSearch URL (https://user:pw@host:port)")
    setup.add_argument("--prefix", help="index prefix (default clickstream)")
    setup.add_argument(
        "--shards",
        type=whole_number(1),
        help="primary shards of new indices (CLICKSTREAM_OPENSEARCH_SHARDS, default 1)",
    )
    setup.add_argument(
        "--replicas",
        type=whole_number(0),
        help="replicas of new indices (CLICKSTREAM_OPENSEARCH_REPLICAS, default 0)",
    )
    setup.add_argument(
        "--retention-days",
        type=whole_number(1),
        help="delete event indices this many days after creation "
        f"(CLICKSTREAM_OPENSEARCH_RETENTION_DAYS, default {DEFAULT_RETENTION_DAYS})",
    )

    dashboards = commands.add_parser(
        "import-dashboards", help="import the saved objects, overwriting older versions"
    )
    dashboards.add_argument("--dashboards-url", help="OpenSearch Dashboards URL")
    dashboards.add_argument(
        "--prefix", help="index prefix the dashboards read (default clickstream)"
    )
    dashboards.add_argument("--tenant", help="security plugin tenant, e.g. global (optional)")

    prune = commands.add_parser("prune-sessions", help="delete sessions that ended long ago")
    prune.add_argument("--opensearch-url", help="OpenSearch URL (https://user:pw@host:port)")
    prune.add_argument("--prefix", help="index prefix (default clickstream)")
    prune.add_argument(
        "--older-than-days",
        type=whole_number(1),
        default=DEFAULT_RETENTION_DAYS,
        help="delete sessions that ended more than this many days ago (default %(default)s)",
    )
    for command in (setup, dashboards, prune):  # after the command, as before it
        add_log_level(command, subcommand=True)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        "opensearch_url": getattr(args, "opensearch_url", None),
        "opensearch_index_prefix": args.prefix,
        "dashboards_url": getattr(args, "dashboards_url", None),
        "opensearch_shards": getattr(args, "shards", None),
        "opensearch_replicas": getattr(args, "replicas", None),
        "opensearch_retention_days": getattr(args, "retention_days", None),
    }
    # What _run reads for each command (every one of them also names the index prefix).
    uses = {
        "setup": {
            "opensearch_url",
            "opensearch_shards",
            "opensearch_replicas",
            "opensearch_retention_days",
        },
        "import-dashboards": {"dashboards_url"},
        "prune-sessions": {"opensearch_url"},
    }[args.command]
    return load_settings(
        role="admin",
        overrides=overrides,
        uses=frozenset(uses | {"opensearch_index_prefix"}),
        command=f"clickstream.search {args.command}",
        flags=SETTING_FLAGS,
    )


def _opensearch_url(settings: Settings) -> str:
    url = settings.opensearch_url.get_secret_value()
    if not url:
        msg = "CLICKSTREAM_OPENSEARCH_URL is not set (or pass --opensearch-url)"
        raise ConfigError(msg)
    return url


def _run(args: argparse.Namespace, watch: WaitWatch) -> None:
    settings = _settings(args)
    prefix = settings.opensearch_index_prefix
    if args.command == "setup":
        url = _opensearch_url(settings)
        logger.info("setting up %s with prefix %s", redact_url(url), prefix)
        with watch.waiting(f"OpenSearch ({redact_url(url)}) to finish the setup", hint=_WAIT_HINT):
            ensure_search_setup(
                make_client(url),
                prefix=prefix,
                shards=settings.opensearch_shards,
                replicas=settings.opensearch_replicas,
                retention_days=settings.opensearch_retention_days,
            )
    elif args.command == "import-dashboards":
        url = settings.dashboards_url.get_secret_value()
        if not url:
            msg = "CLICKSTREAM_DASHBOARDS_URL is not set (or pass --dashboards-url)"
            raise ConfigError(msg)
        with watch.waiting(
            f"OpenSearch Dashboards ({redact_url(url)}) to import the saved objects",
            hint=_WAIT_HINT,
        ):
            result = import_dashboards(dashboards_url=url, prefix=prefix, tenant=args.tenant)
        logger.info("dashboards imported: %d saved objects", result.success_count)
    else:
        url = _opensearch_url(settings)
        cutoff = datetime.now(UTC) - timedelta(days=args.older_than_days)
        with watch.waiting(
            f"OpenSearch ({redact_url(url)}) to delete the old sessions", hint=_WAIT_HINT
        ):
            deleted = prune_sessions(make_client(url), prefix=prefix, older_than=cutoff)
        logger.info("deleted %d sessions that ended before %s", deleted, cutoff.isoformat())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 failed, 2 bad settings, 130 stopped)."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    watch = WaitWatch(logger)
    try:
        with stop_on_signals():
            _run(args, watch)
    except Stopped as exc:
        logger.error("%s %s: run it again to finish (it is idempotent)", args.command, exc)
        return INTERRUPTED
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    except ClickstreamError as exc:
        logger.error("%s", exc)
        return 1
    finally:
        watch.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

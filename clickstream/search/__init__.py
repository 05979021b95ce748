"""The OpenSearch side: index templates, lifecycle, the bulk sink and the Dashboards objects.

Entry points: ``python -m clickstream.search setup|import-dashboards|prune-sessions``; the
consumer uses :func:`make_client`, :func:`ensure_search_setup` and :class:`SearchSink`.
"""

from clickstream.search.client import make_client
from clickstream.search.dashboards import import_dashboards
from clickstream.search.lifecycle import prune_sessions
from clickstream.search.setup import ensure_search_setup
from clickstream.search.sink import Rejected, SearchSink

__all__ = [
    "Rejected",
    "SearchSink",
    "ensure_search_setup",
    "import_dashboards",
    "make_client",
    "prune_sessions",
]

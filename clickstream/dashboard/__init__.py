"""The built-in live analytics dashboard: ``python -m clickstream.dashboard``.

One page (KPIs, traffic over time, a map with top countries, devices, the purchase funnel,
top conversion paths, sources, top pages and current visitors) that refreshes itself from a
small JSON API over :mod:`clickstream.analytics`. Served by the standard library; the page's
HTML, CSS, JavaScript and world map ship in the package, so nothing is fetched from the
internet at run time.
"""

from __future__ import annotations

from clickstream.dashboard.server import DashboardApp, DashboardServer, Response, to_json

__all__ = ["DashboardApp", "DashboardServer", "Response", "to_json"]

"""The aggregations behind the dashboard's visualizations, run on the real local node.

Each visualization's ``visState`` is turned into the search request Dashboards would send (for
the aggregation and query types it uses), run against a small hand-written data set indexed
through the sink, and compared with counts worked out by hand below. No Dashboards server runs
here; this checks that the saved objects ask OpenSearch the right questions.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from clickstream.search import SearchSink, ensure_search_setup, make_client
from clickstream.search.dashboards import load_saved_objects

_KQL = re.compile(r"^([A-Za-z_][\w.]*)\s*(:|>=|<=|>|<)\s*(\S+)$")
_RANGE = {">=": "gte", "<=": "lte", ">": "gt", "<": "lt"}

BERLIN, PARIS, NEW_YORK = (52.52, 13.405), (48.8566, 2.3522), (40.7128, -74.006)


def _event(
    event_id: str,
    occurred_at: str,
    event_type: str,
    device_type: str,
    where: tuple[float, float] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at": datetime.fromisoformat(occurred_at),
        "user_id": "u",
        "page_url": "https://shop.example/",
        "page_type": "home",
        "device_type": device_type,
        "latitude": where[0] if where else None,
        "longitude": where[1] if where else None,
    }
    row.update(fields)
    return row


EVENTS = [
    _event("e1", "2024-05-01T09:00:00+00:00", "page_view", "desktop", BERLIN, country="DE"),
    _event("e2", "2024-05-01T09:05:00+00:00", "page_view", "desktop", BERLIN, country="DE"),
    _event("e3", "2024-05-01T11:08:00+02:00", "add_to_cart", "desktop", BERLIN, country="DE"),
    _event(
        "e4",
        "2024-05-01T09:10:00+00:00",
        "purchase",
        "desktop",
        BERLIN,
        country="DE",
        order_id="o1",
        revenue=Decimal("50.00"),
        currency="EUR",
    ),
    _event("e5", "2024-05-01T09:30:00+00:00", "page_view", "mobile", PARIS, country="FR"),
    # 01:30 at +02:00 is 23:30 UTC on May 1st.
    _event("e6", "2024-05-02T01:30:00+02:00", "page_view", "mobile", None, country="US"),
    _event("e7", "2024-05-02T11:00:00+00:00", "page_view", "tablet", NEW_YORK, country="US"),
    _event("e8", "2024-05-02T12:00:00+00:00", "search", "desktop", None),
]


def _session(
    session_id: str,
    started: str,
    seconds: int,
    *,
    events: int,
    device: tuple[str, str, str],
    country: str | None,
    source: str,
    funnel_step: int,
    revenue: str = "0.00",
    purchases: int = 0,
    path: str | None = None,
) -> dict[str, Any]:
    started_at = datetime.fromisoformat(started)
    return {
        "session_id": session_id,
        "user_id": f"user-{session_id}",
        "started_at": started_at,
        "ended_at": started_at.fromtimestamp(started_at.timestamp() + seconds, UTC),
        "duration_seconds": float(seconds),
        "event_count": events,
        "page_views": events,
        "purchases": purchases,
        "revenue": Decimal(revenue),
        "converted": purchases > 0,
        "bounced": events == 1,
        "entry_page": "https://shop.example/",
        "exit_page": "https://shop.example/",
        "conversion_path": path,
        "traffic_source": source,
        "device_type": device[0],
        "os": device[1],
        "browser": device[2],
        "country": country,
        "city": None,
        "funnel_step": funnel_step,
    }


PATH = "home > product > checkout > confirmation"
SESSIONS = [
    _session("s1", "2024-05-01T09:00:00+00:00", 600, events=4, country="DE", source="google",
             device=("desktop", "Windows", "Chrome"), funnel_step=5, purchases=1,
             revenue="50.00", path=PATH),
    _session("s2", "2024-05-01T09:30:00+00:00", 0, events=1, country="FR", source="direct",
             device=("mobile", "iOS", "Safari"), funnel_step=1),
    _session("s3", "2024-05-01T10:15:00+00:00", 300, events=3, country="DE", source="newsletter",
             device=("mobile", "Android", "Chrome"), funnel_step=3),
    _session("s4", "2024-05-02T11:00:00+00:00", 120, events=5, country="US", source="google",
             device=("tablet", "iOS", "Safari"), funnel_step=5, purchases=1, revenue="20.00",
             path=PATH),
    _session("s5", "2024-05-02T12:00:00+00:00", 0, events=1, country=None, source="direct",
             device=("desktop", "macOS", "Firefox"), funnel_step=0),
]  # fmt: skip


@pytest.fixture(scope="module")
def indexed(stack) -> Any:
    """The data set indexed once for this module, under its own prefix (deleted afterwards)."""
    client = make_client(stack.opensearch_url)
    prefix = f"test-dash-{datetime.now(UTC):%H%M%S%f}"
    ensure_search_setup(client, prefix=prefix)
    sink = SearchSink(client, prefix)
    assert sink.index_events(EVENTS) == []
    assert sink.upsert_sessions(SESSIONS, []) == []
    client.indices.refresh(index=f"{prefix}-*")
    yield client, prefix
    client.indices.delete(index=f"{prefix}-*")
    for kind in ("events", "sessions"):
        client.indices.delete_index_template(name=f"{prefix}-{kind}")


def _kql(query: str) -> dict[str, Any]:
    """The OpenSearch query of the one-term KQL queries the saved objects use."""
    if query.strip() in {"", "*"}:
        return {"match_all": {}}
    match = _KQL.match(query.strip())
    assert match, f"not a one-term KQL query: {query!r}"
    field, operator, value = match.groups()
    if operator != ":":
        return {"range": {field: {_RANGE[operator]: float(value)}}}
    if value == "*":
        return {"exists": {"field": field}}
    return {"term": {field: {"true": True, "false": False}.get(value, value)}}


def _bucket(agg: dict[str, Any]) -> dict[str, Any]:
    params = agg["params"]
    if agg["type"] == "terms":
        assert params["orderBy"] == "1"  # ordered by the count metric
        return {"terms": {"field": params["field"], "size": params["size"]}}
    if agg["type"] == "date_histogram":
        # Dashboards picks "auto" from the time range; hourly fits this data set.
        return {"date_histogram": {"field": params["field"], "fixed_interval": "1h",
                                   "time_zone": "UTC", "min_doc_count": 1}}  # fmt: skip
    if agg["type"] == "filters":
        filters = {item["label"]: _kql(item["input"]["query"]) for item in params["filters"]}
        return {"filters": {"filters": filters}}
    if agg["type"] == "geohash_grid":
        return {"geohash_grid": {"field": params["field"], "precision": 2}}
    raise AssertionError(agg["type"])


def _vis(vis_id: str) -> tuple[dict[str, Any], str]:
    objects = {obj["id"]: obj for obj in load_saved_objects()}
    vis = objects[vis_id]
    state = json.loads(vis["attributes"]["visState"])
    if state["type"] == "metrics":
        return state, state["params"]["index_pattern"]
    (reference,) = vis["references"]
    return state, objects[reference["id"]]["attributes"]["title"]


def _run(indexed: Any, vis_id: str) -> Any:
    """Run a standard visualization; return nested ``{key: ...}`` down to its metrics."""
    client, prefix = indexed
    state, title = _vis(vis_id)
    index = title.replace("clickstream-", f"{prefix}-", 1)
    buckets = [agg for agg in state["aggs"] if agg["schema"] != "metric"]
    metrics = [agg for agg in state["aggs"] if agg["schema"] == "metric"]
    aggs: dict[str, Any] = {
        m["id"]: {m["type"]: {"field": m["params"]["field"]}}
        for m in metrics
        if m["type"] != "count"
    }
    for agg in reversed(buckets):
        node = _bucket(agg)
        if aggs:
            node["aggs"] = aggs
        aggs = {agg["id"]: node}
    response = client.search(index=index, body={"size": 0, "aggs": aggs})

    def values(node: dict[str, Any]) -> Any:
        out = {"count": node["doc_count"]}
        out.update({m["params"]["customLabel"]: node[m["id"]]["value"]
                    for m in metrics if m["type"] != "count"})  # fmt: skip
        return out if len(out) > 1 else out["count"]

    def walk(node: dict[str, Any], level: int) -> Any:
        if level == len(buckets):
            return values(node)
        raw = node[buckets[level]["id"]]["buckets"]
        items = raw.items() if isinstance(raw, dict) else ((b["key"], b) for b in raw)
        return {
            (bucket.get("key_as_string", key) if isinstance(bucket, dict) else key): walk(
                bucket, level + 1
            )
            for key, bucket in items
            if bucket["doc_count"]
        }

    if not buckets:
        total = response["hits"]["total"]["value"]
        return values({"doc_count": total, **response.get("aggregations", {})})
    return walk(response["aggregations"], 0)


def test_device_usage(indexed: Any) -> None:
    assert _run(indexed, "clickstream-device-types") == {"desktop": 2, "mobile": 2, "tablet": 1}
    assert _run(indexed, "clickstream-operating-systems") == {
        "iOS": 2, "Windows": 1, "Android": 1, "macOS": 1,
    }  # fmt: skip
    assert _run(indexed, "clickstream-browsers") == {"Chrome": 2, "Safari": 2, "Firefox": 1}


def test_geography(indexed: Any) -> None:
    # s5 has no country and is not listed.
    assert _run(indexed, "clickstream-top-countries") == {"DE": 2, "FR": 1, "US": 1}
    # Geohash cells of precision 2: Berlin u3, Paris u0, New York dr; e6 and e8 have no location.
    assert _run(indexed, "clickstream-event-map") == {"u3": 4, "u0": 1, "dr": 1}


def test_traffic_over_time(indexed: Any) -> None:
    assert _run(indexed, "clickstream-traffic-over-time") == {
        "2024-05-01T09:00:00.000Z": {"Events": 5, "Page views": 3},
        "2024-05-01T23:00:00.000Z": {"Events": 1, "Page views": 1},
        "2024-05-02T11:00:00.000Z": {"Events": 1, "Page views": 1},
        "2024-05-02T12:00:00.000Z": {"Events": 1},
    }
    assert _run(indexed, "clickstream-sessions-over-time") == {
        "2024-05-01T09:00:00.000Z": 2,
        "2024-05-01T10:00:00.000Z": 1,
        "2024-05-02T11:00:00.000Z": 1,
        "2024-05-02T12:00:00.000Z": 1,
    }


def test_funnel_paths_and_sources(indexed: Any) -> None:
    assert _run(indexed, "clickstream-conversion-funnel") == {
        "1. Page view": 4,
        "2. Product page view": 3,
        "3. Add to cart": 3,
        "4. Begin checkout": 2,
        "5. Purchase": 2,
    }
    assert _run(indexed, "clickstream-conversion-paths") == {PATH: 2}
    assert _run(indexed, "clickstream-traffic-sources") == {
        "google": {"count": 2, "Revenue": 70.0},
        "direct": {"count": 2, "Revenue": 0.0},
        "newsletter": {"count": 1, "Revenue": 0.0},
    }


def test_kpis(indexed: Any) -> None:
    assert _run(indexed, "clickstream-kpi-sessions") == 5
    # (600 + 0 + 300 + 120 + 0) / 5
    assert _run(indexed, "clickstream-kpi-avg-duration") == {
        "count": 5, "Average visit duration (s)": 204.0,
    }  # fmt: skip
    client, prefix = indexed
    ratios = {}
    for vis_id in ("clickstream-kpi-bounce-rate", "clickstream-kpi-conversion-rate"):
        state, title = _vis(vis_id)
        metric = state["params"]["series"][0]["metrics"][0]
        body = {
            "size": 0,
            "aggs": {side: {"filter": _kql(metric[side]["query"])}
                     for side in ("numerator", "denominator")},
        }  # fmt: skip
        found = client.search(index=title.replace("clickstream-", f"{prefix}-", 1), body=body)
        counts = found["aggregations"]
        ratios[vis_id] = counts["numerator"]["doc_count"] / counts["denominator"]["doc_count"]
    assert ratios == {
        "clickstream-kpi-bounce-rate": 2 / 5,  # s2 and s5 have one event
        "clickstream-kpi-conversion-rate": 2 / 5,  # s1 and s4 purchased
    }

"""The Dashboards saved objects: well-formed, consistent with the templates, and their import.

The import is tested against a tiny in-process HTTP server that records what it receives; no
OpenSearch Dashboards runs here.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from clickstream.errors import ConfigError, TerminalError, TransientError
from clickstream.search import dashboards
from clickstream.search.__main__ import main
from clickstream.search.indices import mapping_properties

NUMERIC = {"double", "float", "integer", "long", "short", "byte"}
# Which mapping types each aggregation accepts (as Dashboards' field filters do).
AGG_FIELD_TYPES = {
    "terms": {"keyword", "boolean"} | NUMERIC,
    "date_histogram": {"date"},
    "geohash_grid": {"geo_point"},
    "geotile_grid": {"geo_point"},
    "avg": NUMERIC,
    "sum": NUMERIC,
    "min": NUMERIC | {"date"},
    "max": NUMERIC | {"date"},
    "cardinality": {"keyword", "boolean", "date"} | NUMERIC,
}
KQL_TERM = re.compile(r"([A-Za-z_][\w.]*)\s*(:|>=|<=|>|<)\s*([^\s()]+)")


def _objects() -> list[dict[str, Any]]:
    return dashboards.load_saved_objects()


def _types_by_index_pattern_title() -> dict[str, dict[str, str]]:
    result = {}
    for kind in ("events", "sessions"):
        properties = mapping_properties(kind)
        result[f"clickstream-{kind}"] = {name: spec["type"] for name, spec in properties.items()}
    return result


def _kql_fields(query: str) -> list[tuple[str, str, str]]:
    """``(field, operator, value)`` of each term of the simple KQL queries used here."""
    if query.strip() in {"", "*"}:
        return []
    terms = KQL_TERM.findall(query)
    assert terms, f"cannot read KQL query {query!r}"
    return terms


def _check_kql(query: str, types: dict[str, str], where: str) -> list[str]:
    checked = []
    for field, operator, value in _kql_fields(query):
        assert field in types, f"{where}: KQL field {field!r} is not mapped"
        kind = types[field]
        if operator != ":":
            assert kind in NUMERIC | {"date"}, f"{where}: range on {field} ({kind})"
        elif value in {"true", "false"}:
            assert kind == "boolean", f"{where}: {field} compared with {value} is {kind}"
        elif value != "*":
            assert kind in {"keyword"} | NUMERIC, f"{where}: {field}:{value} on {kind}"
        checked.append(field)
    return checked


def _vis_fields(obj: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> list[str]:
    """Every field a visualization names, after checking it against the template's mapping."""
    title_types = _types_by_index_pattern_title()
    state = json.loads(obj["attributes"]["visState"])
    where = obj["id"]
    fields: list[str] = []
    if state["type"] == "metrics":  # TSVB: names its index pattern by title
        params = state["params"]
        types = title_types[params["index_pattern"]]
        assert types[params["time_field"]] == "date", where
        fields.append(params["time_field"])
        for series in params["series"]:
            series_types = types
            if series.get("override_index_pattern"):
                series_types = title_types[series["series_index_pattern"]]
                assert series_types[series["series_time_field"]] == "date", where
            for metric in series["metrics"]:
                if "field" in metric:
                    assert metric["field"] in series_types, where
                    fields.append(metric["field"])
                for side in ("numerator", "denominator"):
                    if side in metric:
                        fields += _check_kql(metric[side]["query"], series_types, where)
            if series.get("terms_field"):
                assert series_types[series["terms_field"]] == "keyword", where
                fields.append(series["terms_field"])
        return fields
    search_source = json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
    if not state["aggs"]:
        return fields
    ref_name = search_source["indexRefName"]
    (reference,) = [ref for ref in obj["references"] if ref["name"] == ref_name]
    pattern = by_id[reference["id"]]
    assert pattern["type"] == "index-pattern", where
    types = title_types[pattern["attributes"]["title"]]
    fields += _check_kql(search_source["query"]["query"], types, where)
    for agg in state["aggs"]:
        params = agg["params"]
        if "field" in params:
            kind = types.get(params["field"])
            assert kind is not None, f"{where}: field {params['field']!r} is not mapped"
            assert kind in AGG_FIELD_TYPES[agg["type"]], f"{where}: {agg['type']} on {kind}"
            fields.append(params["field"])
        if agg["type"] == "filters":
            for item in params["filters"]:
                assert item["input"]["language"] == "kuery", where
                fields += _check_kql(item["input"]["query"], types, where)
    return fields


def test_ndjson_lines_are_saved_objects_with_unique_ids() -> None:
    text = resources.files("clickstream.search").joinpath("dashboards.ndjson").read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    objects = [json.loads(line) for line in lines]
    assert len({(obj["type"], obj["id"]) for obj in objects}) == len(objects)
    for obj in objects:
        assert obj["type"] in {"index-pattern", "visualization", "dashboard"}
        assert obj["id"].startswith("clickstream-"), obj["id"]
        assert obj["attributes"]["title"]
        assert isinstance(obj["references"], list)


def test_index_patterns_point_at_the_aliases_with_their_time_fields() -> None:
    patterns = {
        obj["attributes"]["title"]: obj["attributes"]["timeFieldName"]
        for obj in _objects()
        if obj["type"] == "index-pattern"
    }
    assert patterns == {"clickstream-events": "occurred_at", "clickstream-sessions": "started_at"}


def test_every_visualization_names_mapped_fields_of_a_fitting_type() -> None:
    objects = _objects()
    by_id = {obj["id"]: obj for obj in objects}
    used: set[str] = set()
    for obj in objects:
        if obj["type"] == "visualization":
            used.update(_vis_fields(obj, by_id))
    # The hand-picked fields the dashboard is about must all be used somewhere.
    assert used >= {
        "occurred_at",
        "started_at",
        "event_type",
        "event_id",
        "location",
        "country",
        "device_type",
        "os",
        "browser",
        "funnel_step",
        "conversion_path",
        "traffic_source",
        "bounced",
        "converted",
        "duration_seconds",
        "revenue",
    }


def test_a_wrong_field_would_be_caught() -> None:
    """The check above can fail: rename one field and it does."""
    objects = _objects()
    by_id = {obj["id"]: obj for obj in objects}
    vis = json.loads(json.dumps(by_id["clickstream-device-types"]))
    vis["attributes"]["visState"] = vis["attributes"]["visState"].replace(
        '"device_type"', '"device"'
    )
    with pytest.raises(AssertionError, match="device"):
        _vis_fields(vis, by_id)
    vis = json.loads(json.dumps(by_id["clickstream-kpi-avg-duration"]))
    vis["attributes"]["visState"] = vis["attributes"]["visState"].replace(
        '"duration_seconds"', '"country"'
    )
    with pytest.raises(AssertionError, match="avg on keyword"):
        _vis_fields(vis, by_id)


def test_visualization_types_exist_in_dashboards_2() -> None:
    supported = {
        "line",
        "histogram",
        "area",
        "pie",
        "table",
        "metric",
        "tile_map",
        "region_map",
        "metrics",
        "vega",
        "markdown",
        "horizontal_bar",
        "gauge",
        "tagcloud",
    }
    for obj in _objects():
        if obj["type"] == "visualization":
            state = json.loads(obj["attributes"]["visState"])
            assert state["type"] in supported, obj["id"]
            assert state["title"] == obj["attributes"]["title"]


def test_dashboard_shows_every_visualization_once() -> None:
    objects = _objects()
    (dashboard,) = [obj for obj in objects if obj["type"] == "dashboard"]
    assert dashboard["attributes"]["title"] == "Clickstream Analytics"
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    references = {ref["name"]: ref for ref in dashboard["references"]}
    shown = [references[panel["panelRefName"]]["id"] for panel in panels]
    visualizations = [obj["id"] for obj in objects if obj["type"] == "visualization"]
    assert sorted(shown) == sorted(visualizations)
    for panel in panels:
        grid = panel["gridData"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 48, panel
    # No two panels overlap on the 48-column grid.
    cells = [
        (x, y)
        for panel in panels
        for x in range(panel["gridData"]["x"], panel["gridData"]["x"] + panel["gridData"]["w"])
        for y in range(panel["gridData"]["y"], panel["gridData"]["y"] + panel["gridData"]["h"])
    ]
    assert len(cells) == len(set(cells))


def _states(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        obj["id"]: json.loads(obj["attributes"]["visState"])
        for obj in objects
        if obj["type"] == "visualization"
    }


def test_required_panels_are_there() -> None:
    states = _states(_objects())
    agg_fields = {
        (agg["type"], agg["params"].get("field"))
        for state in states.values()
        for agg in state["aggs"]
    }
    assert ("geohash_grid", "location") in agg_fields  # map of locations
    assert ("terms", "country") in agg_fields  # top countries
    assert {("terms", "device_type"), ("terms", "os"), ("terms", "browser")} <= agg_fields
    assert ("terms", "conversion_path") in agg_fields
    # An "Other" row beside the top paths: the percentage column is then each path's share of
    # all converted sessions, as analytics.conversion_paths reports it, not of the listed ones.
    paths = states["clickstream-conversion-paths"]
    assert paths["params"]["percentageCol"] == "Sessions"
    assert [agg["params"].get("otherBucket") for agg in paths["aggs"]] == [None, True]
    assert paths["params"]["perPage"] > paths["aggs"][1]["params"]["size"]  # Other on page 1
    assert ("terms", "traffic_source") in agg_fields
    assert ("avg", "duration_seconds") in agg_fields
    assert ("date_histogram", "occurred_at") in agg_fields
    assert ("date_histogram", "started_at") in agg_fields
    funnel = states["clickstream-conversion-funnel"]["aggs"][1]["params"]["filters"]
    assert [item["input"]["query"] for item in funnel] == [
        f"funnel_step >= {step}" for step in range(1, 6)
    ]
    ratios = {
        vis_id: state["params"]["series"][0]["metrics"][0]
        for vis_id, state in states.items()
        if state["type"] == "metrics"
    }
    assert ratios["clickstream-kpi-bounce-rate"]["numerator"]["query"] == "bounced:true"
    assert ratios["clickstream-kpi-conversion-rate"]["numerator"]["query"] == "converted:true"
    for ratio in ratios.values():
        assert ratio["type"] == "filter_ratio"
        assert ratio["denominator"]["query"] == "*"
    for vis_id in ratios:
        # A KPI covers the whole time range, not only the last bucket.
        assert states[vis_id]["params"]["time_range_mode"] == "entire_time_range"


def test_saved_objects_for_another_prefix() -> None:
    original = _objects()
    objects = dashboards.saved_objects_for_prefix(original, "shop")
    assert original == _objects()  # input untouched
    ids = [obj["id"] for obj in objects]
    assert all(not obj_id.startswith("clickstream-") for obj_id in ids)
    titles = {obj["attributes"]["title"] for obj in objects if obj["type"] == "index-pattern"}
    assert titles == {"shop-events", "shop-sessions"}
    for obj in objects:
        for reference in obj["references"]:
            assert reference["id"] in ids
    states = _states(objects)
    assert states["shop-kpi-bounce-rate"]["params"]["index_pattern"] == "shop-sessions"
    (dashboard,) = [obj for obj in objects if obj["type"] == "dashboard"]
    assert dashboard["attributes"]["title"] == "Clickstream Analytics (shop)"
    assert dashboards.saved_objects_for_prefix(original, "clickstream") == original


class _Recorder(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]]
    reply: tuple[int, bytes]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.requests.append(
            {
                "method": self.command,
                "path": self.path,
                "headers": dict(self.headers.items()),
                "body": self.rfile.read(length),
            }
        )
        status, body = self.reply
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def dashboards_server() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Handler", (_Recorder,), {"requests": [], "reply": (200, b"")})
    handler.reply = (200, json.dumps({"success": True, "successCount": 18}).encode())
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _file_part(request: dict[str, Any]) -> tuple[str, bytes]:
    content_type = request["headers"]["Content-Type"]
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + request["body"]
    )
    (part,) = list(message.iter_parts())
    return part.get_param("name", header="content-disposition"), part.get_payload(decode=True)


def test_import_posts_the_ndjson_as_multipart_with_xsrf(dashboards_server) -> None:
    base, handler = dashboards_server
    url = base.replace("http://", "http://admin:p%40ss@")
    result = dashboards.import_dashboards(dashboards_url=url, tenant="global")
    assert result.success_count == 18
    (request,) = handler.requests
    assert request["method"] == "POST"
    split = urlsplit(request["path"])
    assert split.path == "/api/saved_objects/_import"
    assert parse_qs(split.query) == {"overwrite": ["true"]}
    headers = {key.lower(): value for key, value in request["headers"].items()}
    assert headers["osd-xsrf"] == "true"
    assert headers["securitytenant"] == "global"
    assert headers["authorization"] == "Basic " + base64.b64encode(b"admin:p@ss").decode()
    assert headers["content-type"].startswith("multipart/form-data; boundary=")
    name, payload = _file_part(request)
    assert name == "file"
    sent = [json.loads(line) for line in payload.decode().splitlines()]
    assert sent == _objects()


def test_import_for_another_prefix_sends_renamed_objects(dashboards_server) -> None:
    base, handler = dashboards_server
    dashboards.import_dashboards(dashboards_url=base + "/", prefix="shop")
    (request,) = handler.requests
    assert urlsplit(request["path"]).path == "/api/saved_objects/_import"
    assert "authorization" not in {key.lower() for key in request["headers"]}
    _, payload = _file_part(request)
    titles = {json.loads(line)["attributes"]["title"] for line in payload.decode().splitlines()}
    assert {"shop-events", "shop-sessions", "Clickstream Analytics (shop)"} <= titles


def test_import_reports_refused_objects(dashboards_server) -> None:
    base, handler = dashboards_server
    handler.reply = (
        200,
        json.dumps(
            {
                "success": False,
                "successCount": 17,
                "errors": [
                    {
                        "id": "clickstream-event-map",
                        "type": "visualization",
                        "error": {"type": "unknown"},
                    },
                ],
            }
        ).encode(),
    )
    with pytest.raises(TerminalError, match="visualization/clickstream-event-map"):
        dashboards.import_dashboards(dashboards_url=base)


@pytest.mark.parametrize(
    ("status", "error"), [(401, ConfigError), (503, TransientError), (400, TerminalError)]
)
def test_import_http_errors(dashboards_server, status: int, error: type[Exception]) -> None:
    base, handler = dashboards_server
    handler.reply = (status, b'{"message":"no"}')
    with pytest.raises(error):
        dashboards.import_dashboards(dashboards_url=base)


def test_import_command(dashboards_server, monkeypatch: pytest.MonkeyPatch) -> None:
    base, handler = dashboards_server
    monkeypatch.delenv("CLICKSTREAM_STACK_OUTPUTS", raising=False)
    monkeypatch.delenv("CLICKSTREAM_PULUMI_STACK", raising=False)
    monkeypatch.setenv("CLICKSTREAM_DASHBOARDS_URL", base)
    assert main(["import-dashboards"]) == 0
    assert len(handler.requests) == 1
    monkeypatch.setenv("CLICKSTREAM_DASHBOARDS_URL", "")
    assert main(["import-dashboards"]) == 2  # not configured
    assert len(handler.requests) == 1

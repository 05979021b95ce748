"""The checked-in index templates, the ISM policy and the index naming (no network)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources

import pytest

from clickstream.errors import ConfigError
from clickstream.search import indices
from clickstream.search.lifecycle import policy_with_fingerprint

# The columns of the tables (domain.md section 2 and 3), written out by hand.
EVENT_COLUMNS = {
    "event_id",
    "event_type",
    "occurred_at",
    "user_id",
    "session_id",
    "page_url",
    "page_type",
    "referrer_url",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "device_type",
    "os",
    "browser",
    "country",
    "city",
    "latitude",
    "longitude",
    "product_id",
    "search_query",
    "order_id",
    "revenue",
    "currency",
}
"""The event's contract fields: what an event document holds (``ingested_at`` stays in SQL, so
that the document of a stored copy equals the first one's)."""
SESSION_COLUMNS = {
    "session_id",
    "user_id",
    "started_at",
    "ended_at",
    "duration_seconds",
    "event_count",
    "page_views",
    "purchases",
    "revenue",
    "converted",
    "bounced",
    "entry_page",
    "exit_page",
    "conversion_path",
    "traffic_source",
    "device_type",
    "os",
    "browser",
    "country",
    "city",
}


def _raw(name: str) -> dict:
    return json.loads(resources.files("clickstream.search").joinpath(name).read_text())


@pytest.mark.parametrize("name", ["templates/events.json", "templates/sessions.json"])
def test_template_files_are_strict_composable_templates(name: str) -> None:
    body = _raw(name)
    assert set(body) >= {"index_patterns", "template", "priority"}
    assert body["template"]["mappings"]["dynamic"] == "strict"
    for field, spec in body["template"]["mappings"]["properties"].items():
        assert "type" in spec, field
        # scaled_float and friends need the mapper-extras module; stay on core types.
        assert spec["type"] in {
            "keyword",
            "date",
            "double",
            "integer",
            "byte",
            "boolean",
            "geo_point",
        }, field


def test_events_mapping_covers_every_column_with_fitting_types() -> None:
    properties = indices.mapping_properties("events")
    assert set(properties) == EVENT_COLUMNS | {"location"}
    types = {name: spec["type"] for name, spec in properties.items()}
    assert types["occurred_at"] == "date"
    assert "ingested_at" not in types  # mapped, it was never filled
    assert types["location"] == "geo_point"
    assert types["revenue"] == types["latitude"] == types["longitude"] == "double"
    keywords = EVENT_COLUMNS - {"occurred_at", "revenue", "latitude", "longitude"}
    assert {name for name, kind in types.items() if kind == "keyword"} == keywords


# Keyword values the contract or the consumer already bounds well below Lucene's 32,766-byte
# term limit: UUIDs, enums, ISO codes, user_id (at most 128 characters), the session
# builder's own values. Any other keyword must ignore long values instead of refusing the
# whole document (which would dead-letter an event already stored in PostgreSQL).
_BOUNDED_KEYWORDS = {
    "events": {"event_id", "event_type", "user_id", "page_type", "device_type", "country"}
    | {"currency"},
    "sessions": {"session_id", "user_id", "device_type", "country"},
}
# Keywords of ASCII text only (page types joined by " > "): one byte a character.
_ASCII_KEYWORDS = {"events": set(), "sessions": {"conversion_path"}}


@pytest.mark.parametrize("kind", ["events", "sessions"])
def test_free_text_keywords_ignore_values_too_long_to_index(kind: indices.DocumentKind) -> None:
    for name, spec in indices.mapping_properties(kind).items():
        if spec["type"] != "keyword" or name in _BOUNDED_KEYWORDS[kind]:
            continue
        # ignore_above counts characters; a character is at most 4 bytes of UTF-8.
        width = 1 if name in _ASCII_KEYWORDS[kind] else 4
        assert 0 < spec.get("ignore_above", 10**9) * width <= 32766, (kind, name)


def test_a_conversion_path_of_3000_steps_is_indexed() -> None:
    # 2,048 characters (the limit before) held only about 240 steps; 3,000 steps of
    # "product > cart > ..." are 17,999 characters.
    limit = indices.mapping_properties("sessions")["conversion_path"]["ignore_above"]
    assert len(" > ".join(["product", "cart"] * 1500)) < limit


def test_sessions_mapping_covers_every_column_with_fitting_types() -> None:
    properties = indices.mapping_properties("sessions")
    assert set(properties) == SESSION_COLUMNS | {"location", "funnel_step", "updated_at"}
    types = {name: spec["type"] for name, spec in properties.items()}
    assert types["started_at"] == types["ended_at"] == types["updated_at"] == "date"
    assert types["converted"] == types["bounced"] == "boolean"
    assert types["event_count"] == types["page_views"] == types["purchases"] == "integer"
    assert types["duration_seconds"] == types["revenue"] == "double"
    assert types["location"] == "geo_point"


def test_index_template_renders_prefix_shards_and_replicas() -> None:
    events = indices.index_template("events", prefix="shop", shards=3, replicas=2)
    assert events["index_patterns"] == ["shop-events-*"]
    assert events["template"]["aliases"] == {"shop-events": {}}
    assert events["template"]["settings"]["index"] == {
        "number_of_shards": 3,
        "number_of_replicas": 2,
        "refresh_interval": "5s",  # write-heavy: fewer refreshes (docs/opensearch.md)
    }
    sessions = indices.index_template("sessions", prefix="shop")
    assert sessions["template"]["settings"]["index"]["refresh_interval"] == "5s"
    assert sessions["index_patterns"] == ["shop-sessions-*"]
    # The sessions alias is created with is_write_index by setup, not by the template.
    assert "aliases" not in sessions["template"]
    assert "{prefix}" not in json.dumps(events) + json.dumps(sessions)


@pytest.mark.parametrize(("shards", "replicas"), [(0, 0), (1, -1)])
def test_index_template_refuses_bad_sizes(shards: int, replicas: int) -> None:
    with pytest.raises(ConfigError):
        indices.index_template("events", prefix="shop", shards=shards, replicas=replicas)


@pytest.mark.parametrize("prefix", ["", "Shop", "-shop", "_x", "a b", "a*", "a/b", "x" * 101])
def test_invalid_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ConfigError):
        indices.validate_prefix(prefix)


def test_names() -> None:
    assert indices.events_alias("p") == "p-events"
    assert indices.events_index_pattern("p") == "p-events-*"
    assert indices.sessions_alias("p") == "p-sessions"
    assert indices.sessions_index("p") == "p-sessions-v1"
    assert indices.template_name("p", "sessions") == "p-sessions"
    assert indices.ism_policy_id("p") == "p-events"


def test_event_index_is_the_utc_day_of_occurred_at() -> None:
    plus_two = timezone(timedelta(hours=2))
    # 01:30 at +02:00 is still the previous day in UTC.
    assert indices.events_index("p", datetime(2024, 3, 1, 1, 30, tzinfo=plus_two)) == (
        "p-events-2024.02.29"
    )
    assert indices.events_index("p", datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC)) == (
        "p-events-2024.12.31"
    )
    with pytest.raises(ValueError, match="naive"):
        indices.events_index("p", datetime(2024, 1, 1))


def test_ism_policy_file_is_well_formed() -> None:
    policy = _raw("ism_policy.json")["policy"]
    names = [state["name"] for state in policy["states"]]
    assert len(names) == len(set(names))
    assert policy["default_state"] in names
    for state in policy["states"]:
        for transition in state["transitions"]:
            assert transition["state_name"] in names
            assert set(transition["conditions"]) <= {
                "min_index_age",
                "min_doc_count",
                "min_size",
                "min_rollover_age",
                "cron",
            }
    assert {"delete": {}} in policy["states"][names.index("delete")]["actions"]
    assert policy["ism_template"][0]["index_patterns"] == ["{prefix}-events-*"]


def test_ism_policy_renders_retention_and_prefix() -> None:
    policy = indices.ism_policy(prefix="shop", retention_days=30)["policy"]
    hot = next(state for state in policy["states"] if state["name"] == "hot")
    assert hot["transitions"] == [{"state_name": "delete", "conditions": {"min_index_age": "30d"}}]
    assert policy["ism_template"] == [{"index_patterns": ["shop-events-*"], "priority": 100}]
    assert "{prefix}" not in json.dumps(policy)
    assert "{retention_days}" not in json.dumps(policy)
    with pytest.raises(ConfigError):
        indices.ism_policy(prefix="shop", retention_days=0)


def test_policy_fingerprint_changes_with_content_only() -> None:
    thirty = policy_with_fingerprint(indices.ism_policy(prefix="shop", retention_days=30))
    again = policy_with_fingerprint(indices.ism_policy(prefix="shop", retention_days=30))
    sixty = policy_with_fingerprint(indices.ism_policy(prefix="shop", retention_days=60))
    assert thirty == again
    assert thirty["policy"]["description"] != sixty["policy"]["description"]
    assert (
        thirty["policy"]["states"]
        == indices.ism_policy(prefix="shop", retention_days=30)["policy"]["states"]
    )

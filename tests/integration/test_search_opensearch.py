"""Setup, sink and retention against the real local OpenSearch node (no ISM plugin there)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from opensearchpy import OpenSearch

from clickstream.errors import SinkError
from clickstream.events import decode_event
from clickstream.search import SearchSink, ensure_search_setup, make_client, prune_sessions
from clickstream.search.__main__ import main
from clickstream.search.documents import dumps, session_document
from clickstream.search.indices import mapping_properties
from clickstream.search.lifecycle import apply_ism_policy
from tests.support import sample_session_row


@pytest.fixture
def client(stack) -> OpenSearch:
    return make_client(stack.opensearch_url)


@pytest.fixture
def prefix(client: OpenSearch, opensearch_index_prefix: str) -> str:
    ensure_search_setup(client, prefix=opensearch_index_prefix)
    return opensearch_index_prefix


def _event(event_id: str, occurred_at: str, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "event_id": event_id,
        "event_type": "page_view",
        "occurred_at": datetime.fromisoformat(occurred_at),
        "user_id": "u-1",
        "page_url": "https://shop.example/",
        "page_type": "home",
        "device_type": "desktop",
        "ingested_at": datetime(2024, 5, 3, tzinfo=UTC),
    }
    row.update(fields)
    return row


def _counts(client: OpenSearch, pattern: str) -> dict[str, int]:
    client.indices.refresh(index=pattern)
    rows = client.cat.indices(index=pattern, format="json", h="index,docs.count")
    return {row["index"]: int(row["docs.count"]) for row in rows}


def _ids(client: OpenSearch, index: str) -> set[str]:
    client.indices.refresh(index=index)
    found = client.search(index=index, body={"size": 100, "_source": False})
    return {hit["_id"] for hit in found["hits"]["hits"]}


def test_setup_is_idempotent_and_skips_ism_without_the_plugin(
    client: OpenSearch, opensearch_index_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = opensearch_index_prefix
    with caplog.at_level(logging.INFO, logger="clickstream.search"):
        ensure_search_setup(client, prefix=prefix, shards=2, replicas=0)
    assert "no Index State Management plugin" in caplog.text
    assert caplog.text.count("put index template") == 2
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clickstream.search"):
        ensure_search_setup(client, prefix=prefix, shards=2, replicas=0)
    assert "put index template" not in caplog.text  # unchanged templates are left alone

    templates = client.indices.get_index_template(name=f"{prefix}-*")["index_templates"]
    patterns = {t["name"]: t["index_template"]["index_patterns"] for t in templates}
    assert patterns == {
        f"{prefix}-events": [f"{prefix}-events-*"],
        f"{prefix}-sessions": [f"{prefix}-sessions-*"],
    }

    aliases = client.indices.get_alias(name=f"{prefix}-sessions")
    assert aliases == {
        f"{prefix}-sessions-v1": {"aliases": {f"{prefix}-sessions": {"is_write_index": True}}}
    }
    index = f"{prefix}-sessions-v1"
    settings = client.indices.get_settings(index=index)[index]["settings"]["index"]
    assert settings["number_of_shards"] == "2"
    mapping = client.indices.get_mapping(index=index)[index]["mappings"]
    assert mapping["dynamic"] == "strict"
    expected = {name: spec["type"] for name, spec in mapping_properties("sessions").items()}
    assert {name: spec["type"] for name, spec in mapping["properties"].items()} == expected
    assert apply_ism_policy(client, prefix=prefix) == "unavailable"

    # Other sizes change the templates (for indices created from now on).
    ensure_search_setup(client, prefix=prefix, shards=1, replicas=0)
    stored = client.indices.get_index_template(name=f"{prefix}-events")["index_templates"][0]
    assert stored["index_template"]["template"]["settings"]["index"]["number_of_shards"] == "1"


def test_setup_command(stack, opensearch_index_prefix: str, client: OpenSearch) -> None:
    args = ["setup", "--opensearch-url", stack.opensearch_url, "--prefix", opensearch_index_prefix]
    assert main([*args, "--retention-days", "7"]) == 0
    assert main(args) == 0
    assert client.indices.exists_alias(name=f"{opensearch_index_prefix}-sessions")


def test_events_go_to_their_utc_day_and_reindexing_does_not_double(
    client: OpenSearch, prefix: str
) -> None:
    sink = SearchSink(client, prefix)
    batch = [
        _event("e-1", "2024-05-01T09:00:00+00:00", latitude=52.52, longitude=13.405),
        _event("e-2", "2024-05-01T23:59:59+00:00", revenue=Decimal("12.30")),
        # 01:30 at +02:00 is 23:30 UTC of the previous day.
        _event("e-3", "2024-05-02T01:30:00+02:00"),
        _event("e-4", "2024-05-02T00:00:00+00:00"),
    ]
    assert sink.index_events(batch) == []
    expected = {f"{prefix}-events-2024.05.01": 3, f"{prefix}-events-2024.05.02": 1}
    assert _counts(client, f"{prefix}-events-*") == expected

    # Redelivery: the whole batch and a part of it, then another copy of an indexed event.
    assert sink.index_events(batch) == []
    assert sink.index_events(batch[1:3]) == []
    assert _counts(client, f"{prefix}-events-*") == expected
    assert (
        sink.index_events([_event("e-1", "2024-05-01T09:00:00+00:00", page_url="https://x/")]) == []
    )
    assert _counts(client, f"{prefix}-events-*") == expected
    # The document is replaced by what the sink was given last: the consumer gives it only
    # stored copies, so the document is the stored row (the first copy stored wins in SQL).
    replaced = client.get(index=f"{prefix}-events-2024.05.01", id="e-1")["_source"]
    assert replaced["page_url"] == "https://x/"
    assert sink.index_events(batch[:1]) == []

    doc = client.get(index=f"{prefix}-events-2024.05.01", id="e-1")["_source"]
    assert doc["page_url"] == "https://shop.example/"
    assert doc["location"] == {"lat": 52.52, "lon": 13.405}
    assert doc["occurred_at"] == "2024-05-01T09:00:00Z"
    found = client.search(index=f"{prefix}-events", body={"query": {"ids": {"values": ["e-2"]}}})[
        "hits"
    ]["hits"]
    assert [hit["_source"]["revenue"] for hit in found] == [12.3]


def test_mapping_rejections_are_returned_and_the_rest_is_indexed(
    client: OpenSearch, prefix: str
) -> None:
    sink = SearchSink(client, prefix)
    rejected = sink.index_events(
        [
            _event("good", "2024-05-01T09:00:00+00:00"),
            _event("bad-lat", "2024-05-01T09:00:00+00:00", latitude=123.0, longitude=1.0),
            _event("bad-rev", "2024-05-01T09:00:00+00:00", revenue="lots"),
        ]
    )
    by_id = {r.doc_id: r for r in rejected}
    assert set(by_id) == {"bad-lat", "bad-rev"}
    assert {r.reason for r in rejected} == {"search_rejected"}
    assert "location" in by_id["bad-lat"].detail
    assert "revenue" in by_id["bad-rev"].detail
    assert _ids(client, f"{prefix}-events") == {"good"}

    rejected = sink.upsert_sessions(
        [sample_session_row("s-ok"), sample_session_row("s-bad", event_count="many")], []
    )
    assert [r.doc_id for r in rejected] == ["s-bad"]
    assert "event_count" in rejected[0].detail


def test_valid_events_with_huge_free_text_values_are_indexed(
    client: OpenSearch, prefix: str
) -> None:
    # Each value passes the contract (the message stays under 64 KiB) but is longer than one
    # Lucene term: without ignore_above OpenSearch refuses the document, and an event already
    # stored in PostgreSQL would be dead-lettered as rejected_by_sink.
    huge = "x" * 40_000
    events = [
        _event(f"e-{name}", "2024-05-01T09:00:00+00:00", **{name: huge})
        for name in ("session_id", "referrer_url", "utm_campaign", "city", "search_query")
    ]
    assert SearchSink(client, prefix).index_events(events) == []
    assert _ids(client, f"{prefix}-events") == {event["event_id"] for event in events}
    stored = client.get(index=f"{prefix}-events-2024.05.01", id="e-session_id")["_source"]
    assert stored["session_id"] == huge  # kept in the document, only not a search term


def test_session_upsert_replace_and_delete(client: OpenSearch, prefix: str) -> None:
    sink = SearchSink(client, prefix)
    alias = f"{prefix}-sessions"
    assert (
        sink.upsert_sessions(
            [sample_session_row("s-1"), sample_session_row("s-2"), sample_session_row("s-3")], []
        )
        == []
    )
    assert _ids(client, alias) == {"s-1", "s-2", "s-3"}

    # A late event extends s-1 and merges s-2 into it; s-3 is both superseded and re-written
    # in this batch (the row wins); s-404 never existed.
    extended = sample_session_row(
        "s-1",
        ended_at=datetime(2024, 5, 1, 9, 20, tzinfo=UTC),
        duration_seconds=1200.0,
        event_count=3,
        bounced=False,
        latitude=48.85,
        longitude=2.35,
        funnel_step=2,
    )
    assert (
        sink.upsert_sessions([extended, sample_session_row("s-3")], ["s-2", "s-3", "s-404"]) == []
    )
    assert _ids(client, alias) == {"s-1", "s-3"}
    doc = client.get(index=alias, id="s-1")["_source"]
    assert (doc["event_count"], doc["bounced"], doc["duration_seconds"]) == (3, False, 1200.0)
    assert doc["location"] == {"lat": 48.85, "lon": 2.35}
    assert doc["ended_at"] == "2024-05-01T09:20:00Z"

    # Repeating the same call changes nothing.
    assert (
        sink.upsert_sessions([extended, sample_session_row("s-3")], ["s-2", "s-3", "s-404"]) == []
    )
    assert _counts(client, f"{prefix}-sessions-*") == {f"{prefix}-sessions-v1": 2}


def test_setup_gives_an_older_sessions_index_the_template_s_gc_deletes(
    client: OpenSearch, prefix: str
) -> None:
    # An index made before the template set gc_deletes keeps OpenSearch's 60 s default, too
    # short to refuse a late write of a deleted session: setup sets it, then leaves it be.
    index = f"{prefix}-sessions-v1"
    client.indices.put_settings(index=index, body={"index": {"gc_deletes": "60s"}})
    ensure_search_setup(client, prefix=prefix)
    found = client.indices.get_settings(index=index, name="index.gc_deletes")
    assert found[index]["settings"]["index"]["gc_deletes"] == "10m"


def test_a_late_session_write_never_overwrites_a_newer_one(client: OpenSearch, prefix: str) -> None:
    # A bulk request the client gave up on can still be executed by OpenSearch later, after a
    # newer drain's. Versioned writes (each drain's version is higher) make such a late, older
    # write a no-op: it neither reverts a session nor brings back a deleted one.
    sink = SearchSink(client, prefix)
    alias = f"{prefix}-sessions"
    newer = sample_session_row("s-1", event_count=3, bounced=False)
    older = sample_session_row("s-1", event_count=2, bounced=False)
    assert sink.upsert_sessions([newer], [], version=2_000) == []
    assert sink.upsert_sessions([older], [], version=1_000) == []  # lands late: ignored
    client.indices.refresh(index=alias)
    assert client.get(index=alias, id="s-1")["_source"]["event_count"] == 3
    assert sink.upsert_sessions([newer], [], version=2_000) == []  # a retry of the same drain

    assert sink.upsert_sessions([sample_session_row("s-2")], [], version=2_000) == []
    assert sink.upsert_sessions([], ["s-2"], version=3_000) == []  # superseded: deleted
    assert sink.upsert_sessions([sample_session_row("s-2")], [], version=2_500) == []  # late
    assert sink.upsert_sessions([], ["s-1"], version=500) == []  # a late, older delete
    assert _ids(client, alias) == {"s-1"}


def test_sessions_without_setup_fail_instead_of_creating_an_unmapped_index(
    client: OpenSearch, opensearch_index_prefix: str
) -> None:
    sink = SearchSink(client, opensearch_index_prefix, max_attempts=1)
    with pytest.raises(SinkError, match="index_not_found"):
        sink.upsert_sessions([sample_session_row("s-1")], [])
    with pytest.raises(SinkError, match="index_not_found"):
        sink.upsert_sessions([], ["s-1"])
    assert not client.indices.exists(index=f"{opensearch_index_prefix}-sessions")


def test_prune_sessions(client: OpenSearch, prefix: str) -> None:
    sink = SearchSink(client, prefix)
    old = sample_session_row("old", ended_at=datetime(2024, 1, 31, 23, 59, tzinfo=UTC))
    edge = sample_session_row("edge", ended_at=datetime(2024, 2, 1, 0, 0, tzinfo=UTC))
    new = sample_session_row("new", ended_at=datetime(2024, 3, 1, tzinfo=UTC))
    assert sink.upsert_sessions([old, edge, new], []) == []
    client.indices.refresh(index=f"{prefix}-sessions")
    cutoff = datetime(2024, 2, 1, tzinfo=UTC)
    assert prune_sessions(client, prefix=prefix, older_than=cutoff) == 1
    assert _ids(client, f"{prefix}-sessions") == {"edge", "new"}
    assert prune_sessions(client, prefix=prefix, older_than=cutoff) == 0


def test_prune_sessions_pages_through_more_than_one_search(client: OpenSearch, prefix: str) -> None:
    # 2,500 old sessions: three pages of search_after (1,000 each), every one deleted once.
    sink = SearchSink(client, prefix)
    old = [
        sample_session_row(
            f"old-{n:04d}", ended_at=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=n % 7)
        )
        for n in range(2500)
    ]
    keep = [
        sample_session_row(f"new-{n}", ended_at=datetime(2024, 3, 1, tzinfo=UTC)) for n in range(3)
    ]
    assert sink.upsert_sessions([*old, *keep], []) == []
    client.indices.refresh(index=f"{prefix}-sessions")
    assert (
        prune_sessions(client, prefix=prefix, older_than=datetime(2024, 2, 1, tzinfo=UTC)) == 2500
    )
    assert _ids(client, f"{prefix}-sessions") == {"new-0", "new-1", "new-2"}


def test_fast_paths_store_the_same_documents(client: OpenSearch, prefix: str) -> None:
    # The consumer's paths (validated events; session rows rendered as JSON text) store the
    # same _source as the generic row paths.
    now = datetime(2024, 5, 3, tzinfo=UTC)
    raw = {
        "event_id": "7d9f1c2e-3b4a-4c5d-8e6f-0a1b2c3d4e5f",
        "event_type": "purchase",
        "occurred_at": "2024-05-01T23:30:00-02:00",  # 2024-05-02 in UTC
        "user_id": "u-1",
        "page_url": "https://shop.example/",
        "page_type": "confirmation",
        "device_type": "mobile",
        "latitude": 47.37,
        "longitude": 8.54,
        "city": "Zürich",
        "order_id": "o-1",
        "revenue": 12.3,
        "currency": "CHF",
    }
    fast = decode_event(json.dumps(raw).encode(), now=now, future_tolerance=timedelta(0))
    slow = decode_event(
        json.dumps(raw | {"event_id": "8d9f1c2e-3b4a-4c5d-8e6f-0a1b2c3d4e5f"}).encode(),
        now=now,
        future_tolerance=timedelta(0),
    )
    sink = SearchSink(client, prefix)
    assert sink.index_click_events([fast]) == []
    assert sink.index_events([slow.model_dump(mode="json")]) == []
    day = f"{prefix}-events-2024.05.02"
    fast_doc = client.get(index=day, id=fast.event_id)["_source"]
    slow_doc = client.get(index=day, id=slow.event_id)["_source"]
    assert fast_doc == slow_doc | {"event_id": fast.event_id}
    assert fast_doc["location"] == {"lat": 47.37, "lon": 8.54}
    assert sink.index_click_events([fast]) == []  # a redelivery replaces it with itself
    assert _counts(client, f"{prefix}-events-*") == {day: 2}

    row = sample_session_row("s-1", city="Zürich", revenue=Decimal("12.30"))
    text = dumps(session_document(row)[1])
    assert (
        sink.upsert_session_documents({"s-1": text, "s-2": sample_session_row("s-2")}, ["s-3"])
        == []
    )
    alias = f"{prefix}-sessions"
    assert client.get(index=alias, id="s-1")["_source"] == session_document(row)[1]
    assert (
        client.get(index=alias, id="s-2")["_source"]
        == session_document(sample_session_row("s-2"))[1]
    )
    rejected = sink.upsert_session_documents(
        {"s-bad": text.replace('"event_count":1', '"event_count":"many"')}, ["s-1"]
    )
    assert [r.doc_id for r in rejected] == ["s-bad"]
    assert _ids(client, alias) == {"s-2"}

"""Dashboard aggregations on OpenSearch agree with the same figures from PostgreSQL.

Data goes through the real pipeline (Kafka -> consumer -> PostgreSQL + OpenSearch); then the
aggregation behind each dashboard panel runs on the local OpenSearch node and is compared with
the same figure computed in SQL from the stored tables.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import OpenSearch
from sqlalchemy import create_engine, text

from tests.support import consumer_env, produce_events, random_events, run_consumer

pytestmark = pytest.mark.integration


def _sql(url: str, query: str) -> dict[Any, Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {row[0]: row[1] for row in conn.execute(text(query))}
    finally:
        engine.dispose()


def _terms(client: OpenSearch, index: str, field: str, query: dict | None = None) -> dict:
    body: dict[str, Any] = {
        "size": 0,
        "aggs": {"t": {"terms": {"field": field, "size": 1000}}},
    }
    if query:
        body["query"] = query
    result = client.search(index=index, body=body)
    return {bucket["key"]: bucket["doc_count"] for bucket in result["aggregations"]["t"]["buckets"]}


@pytest.fixture
def pipeline_data(stack, topics, migrated_database_url, opensearch_index_prefix, tmp_path: Path):
    events = random_events(61, users=300, per_user=30)
    rng = random.Random(6)
    sent = events + rng.sample(events, len(events) // 8)
    rng.shuffle(sent)
    t = topics(3)
    produce_events(stack.kafka_bootstrap, t.events, sent)
    env = consumer_env(
        bootstrap=stack.kafka_bootstrap,
        topic=t.events,
        group=f"test-{uuid.uuid4()}",
        database_url=migrated_database_url,
        opensearch_url=stack.opensearch_url,
        index_prefix=opensearch_index_prefix,
    )
    run_consumer(env, "--batch-size", "500", log=tmp_path / "consumer.log")
    client = OpenSearch(stack.opensearch_url)
    client.indices.refresh(index=f"{opensearch_index_prefix}-*")
    return client, migrated_database_url, opensearch_index_prefix


def test_page_views_per_device_type(pipeline_data) -> None:
    client, url, prefix = pipeline_data
    from_search = _terms(
        client, f"{prefix}-events", "device_type", {"term": {"event_type": "page_view"}}
    )
    from_sql = _sql(
        url,
        "SELECT device_type, count(*) FROM events WHERE event_type = 'page_view' GROUP BY 1",
    )
    assert from_search == from_sql
    assert sum(from_sql.values()) > 0


def test_converted_sessions_per_country(pipeline_data) -> None:
    client, url, prefix = pipeline_data
    from_search = _terms(client, f"{prefix}-sessions", "country", {"term": {"converted": True}})
    from_sql = _sql(
        url,
        "SELECT country, count(*) FROM sessions WHERE converted AND country IS NOT NULL GROUP BY 1",
    )
    assert from_search == from_sql
    assert sum(from_sql.values()) > 0


def test_top_conversion_paths(pipeline_data) -> None:
    client, url, prefix = pipeline_data
    from_search = _terms(client, f"{prefix}-sessions", "conversion_path")
    from_sql = _sql(
        url,
        "SELECT conversion_path, count(*) FROM sessions WHERE conversion_path IS NOT NULL"
        " GROUP BY 1",
    )
    assert from_search == from_sql
    assert len(from_sql) > 1


def test_sessions_and_bounces_per_traffic_source(pipeline_data) -> None:
    client, url, prefix = pipeline_data
    assert _terms(client, f"{prefix}-sessions", "traffic_source") == _sql(
        url, "SELECT traffic_source, count(*) FROM sessions GROUP BY 1"
    )
    assert _terms(
        client, f"{prefix}-sessions", "traffic_source", {"term": {"bounced": True}}
    ) == _sql(url, "SELECT traffic_source, count(*) FROM sessions WHERE bounced GROUP BY 1")


def test_events_per_day_and_revenue(pipeline_data) -> None:
    client, url, prefix = pipeline_data
    result = client.search(
        index=f"{prefix}-events",
        body={
            "size": 0,
            "aggs": {
                "days": {
                    "date_histogram": {
                        "field": "occurred_at",
                        "calendar_interval": "day",
                        "time_zone": "UTC",
                    },
                    "aggs": {"revenue": {"sum": {"field": "revenue"}}},
                }
            },
        },
    )
    from_search = {
        bucket["key_as_string"][:10]: (bucket["doc_count"], round(bucket["revenue"]["value"], 2))
        for bucket in result["aggregations"]["days"]["buckets"]
        if bucket["doc_count"]
    }
    rows = _sql(
        url,
        "SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'),"
        " concat(count(*), '|', coalesce(sum(revenue), 0)) FROM events GROUP BY 1",
    )
    from_sql = {
        day: (int(value.split("|")[0]), round(float(value.split("|")[1]), 2))
        for day, value in rows.items()
    }
    assert from_search == from_sql


def test_funnel_steps(pipeline_data) -> None:
    client, url, prefix = pipeline_data
    reached_search = {
        step: client.count(
            index=f"{prefix}-sessions", body={"query": {"range": {"funnel_step": {"gte": step}}}}
        )["count"]
        for step in range(1, 6)
    }
    reached_sql = _sql(
        url,
        "SELECT s.step, count(*) FROM sessions, generate_series(1, 5) AS s(step)"
        " WHERE funnel_step >= s.step GROUP BY 1",
    )
    assert reached_search == {step: reached_sql.get(step, 0) for step in range(1, 6)}
    assert reached_search[1] >= reached_search[2] >= reached_search[5]

"""The local stack is real: data makes a full round trip through each server.

Every expectation is computed by hand from how the data is generated, not by the code under
test (there is none here: these tests use the drivers directly).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from opensearchpy import OpenSearch, helpers

N = 10_000
USERS = 97  # prime, so keys spread over partitions without a pattern
PARTITIONS = 3
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def _message(i: int) -> tuple[bytes, bytes]:
    key = f"user-{i % USERS}".encode()
    value = json.dumps({"seq": i, "user": f"user-{i % USERS}", "text": f"payload {i} \u00e9"})
    return key, value.encode()


def test_kafka_round_trip_with_committed_offsets(stack, kafka_topic_factory):
    topic = kafka_topic_factory(PARTITIONS)
    failures: list[str] = []

    def on_delivery(err, _msg):
        if err is not None:
            failures.append(str(err))

    producer = Producer(
        {"bootstrap.servers": stack.kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    for i in range(N):
        key, value = _message(i)
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert failures == []

    group = f"{topic}-group"
    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    received: list[tuple[int, bytes, bytes]] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 120  # a bound against hanging, not an assertion
        while len(received) < N and time.monotonic() < deadline:
            batch = consumer.consume(num_messages=1000, timeout=1.0)
            for msg in batch:
                error = msg.error()
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error
                    continue
                partition, msg_key, msg_value = msg.partition(), msg.key(), msg.value()
                assert partition is not None and msg_key is not None and msg_value is not None
                received.append((partition, msg_key, msg_value))
            if batch:
                consumer.commit(asynchronous=False)
    finally:
        consumer.close()

    assert len(received) == N
    assert sorted(value for _, _, value in received) == sorted(_message(i)[1] for i in range(N))
    assert all(_message(json.loads(v)["seq"])[0] == k for _, k, v in received)
    # One key lives on one partition, in produce order.
    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    seqs_of_key: dict[bytes, list[int]] = defaultdict(list)
    for partition, key, value in received:
        partitions_of_key[key].add(partition)
        seqs_of_key[key].append(json.loads(value)["seq"])
    assert all(len(parts) == 1 for parts in partitions_of_key.values())
    assert all(seqs == sorted(seqs) for seqs in seqs_of_key.values())
    assert len(seqs_of_key) == USERS
    assert {partition for partition, _, _ in received} == set(range(PARTITIONS))

    # A fresh member of the group sees the committed offsets: one past the last message read.
    checker = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": group})
    try:
        committed = checker.committed(
            [TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30
        )
        per_partition = Counter(partition for partition, _, _ in received)
        assert {tp.partition: tp.offset for tp in committed} == dict(per_partition)
        assert sum(tp.offset for tp in committed) == N
        for p in range(PARTITIONS):
            low, high = checker.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            assert (low, high) == (0, per_partition[p])
    finally:
        checker.close()


def _row(i: int) -> tuple[int, str, Decimal, datetime]:
    return i, f"user-{i % USERS}", Decimal(i) / 100, EPOCH + timedelta(seconds=i)


def test_postgres_copy_round_trip(database_url):
    conninfo = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            "CREATE TABLE smoke (id integer PRIMARY KEY, user_id text NOT NULL,"
            " amount numeric(12, 2) NOT NULL, occurred_at timestamptz NOT NULL)"
        )
        with (
            conn.cursor() as cur,
            cur.copy("COPY smoke (id, user_id, amount, occurred_at) FROM STDIN") as copy,
        ):
            for i in range(N):
                copy.write_row(_row(i))
        conn.commit()

        summary = conn.execute(
            "SELECT count(*), sum(id), sum(amount), count(DISTINCT user_id),"
            " min(occurred_at), max(occurred_at) FROM smoke"
        ).fetchone()
        assert summary is not None
        count, id_sum, amount_sum, users, first, last = summary
        assert count == N
        assert id_sum == N * (N - 1) // 2  # 0 + 1 + ... + 9999 = 49,995,000
        assert amount_sum == Decimal("499950.00")
        assert users == USERS
        assert first == EPOCH
        assert last == EPOCH + timedelta(seconds=N - 1)
        rows = conn.execute(
            "SELECT id, user_id, amount, occurred_at FROM smoke ORDER BY id"
        ).fetchall()
        assert rows == [_row(i) for i in range(N)]


# Well-known city coordinates; their geohash cells (precision 1) are u, u, d and 6.
CITIES = {
    "DE": (52.5200, 13.4050),  # Berlin, geohash u33...
    "FR": (48.8566, 2.3522),  # Paris, geohash u09...
    "US": (40.7128, -74.0060),  # New York, geohash dr5...
    "BR": (-23.5505, -46.6333),  # Sao Paulo, geohash 6gy...
}
COUNTRIES = list(CITIES)


def _doc(i: int) -> dict[str, object]:
    country = COUNTRIES[i % len(COUNTRIES)]
    lat, lon = CITIES[country]
    return {
        "seq": i,
        "country": country,
        "occurred_at": (EPOCH + timedelta(minutes=i)).isoformat(),
        "location": {"lat": lat, "lon": lon},
    }


def _has_geo_module(client: OpenSearch) -> bool:
    info = client.nodes.info(metric="plugins")
    for node in info["nodes"].values():
        names = {p.get("classname", "") for p in node.get("plugins", [])}
        names |= {m.get("name", "") for m in node.get("modules", [])}
        if "geo" in names or "org.opensearch.geo.GeoModulePlugin" in names:
            return True
    return False


def test_opensearch_bulk_and_aggregations(stack, opensearch_index_prefix):
    client = OpenSearch(hosts=[stack.opensearch_url], timeout=60)
    index = f"{opensearch_index_prefix}-smoke"
    client.indices.create(
        index=index,
        body={
            "settings": {"number_of_shards": 2, "number_of_replicas": 0},
            "mappings": {
                "properties": {
                    "seq": {"type": "integer"},
                    "country": {"type": "keyword"},
                    "occurred_at": {"type": "date"},
                    "location": {"type": "geo_point"},
                }
            },
        },
    )
    actions = ({"_index": index, "_id": str(i), "_source": _doc(i)} for i in range(N))
    ok, errors = helpers.bulk(client, actions, chunk_size=2000, raise_on_error=False)
    assert (ok, errors) == (N, [])
    client.indices.refresh(index=index)
    assert client.count(index=index)["count"] == N

    aggs: dict[str, object] = {
        "countries": {"terms": {"field": "country", "size": 10}},
        "per_day": {"date_histogram": {"field": "occurred_at", "calendar_interval": "day"}},
        "seq_sum": {"sum": {"field": "seq"}},
        "centroid": {"geo_centroid": {"field": "location"}},
    }
    geo = _has_geo_module(client)
    if geo:
        aggs["cells"] = {"geohash_grid": {"field": "location", "precision": 1}}
        aggs["tiles"] = {"geotile_grid": {"field": "location", "precision": 1}}
    result = client.search(index=index, body={"size": 0, "aggs": aggs})["aggregations"]

    # i % 4 picks the country: 2,500 documents each.
    countries = {b["key"]: b["doc_count"] for b in result["countries"]["buckets"]}
    assert countries == dict.fromkeys(COUNTRIES, N // 4)
    # One document per minute from midnight: 1,440 per day for 6 days, then 10,000 - 8,640.
    per_day = [(b["key_as_string"][:10], b["doc_count"]) for b in result["per_day"]["buckets"]]
    assert per_day == [(f"2025-01-0{d + 1}", 1440) for d in range(6)] + [("2025-01-07", 1360)]
    assert result["seq_sum"]["value"] == N * (N - 1) / 2
    # Equal weights per city, so the centroid is the mean of the four coordinates.
    centroid = result["centroid"]["location"]
    assert math.isclose(centroid["lat"], sum(c[0] for c in CITIES.values()) / 4, abs_tol=1e-4)
    assert math.isclose(centroid["lon"], sum(c[1] for c in CITIES.values()) / 4, abs_tol=1e-4)
    if not geo:
        # The local stack's launcher loads the geo module (maps need geotile_grid); a node
        # without it is a broken stack when the services are required.
        if os.environ.get("CLICKSTREAM_REQUIRE_SERVICES") == "1":
            pytest.fail("the OpenSearch node has no geo module (geohash_grid/geotile_grid)")
        pytest.skip("the node has no geo module: geohash_grid/geotile_grid not checked")
    # Precision-1 geohash cells are 45 x 45 degrees: Berlin and Paris share "u".
    assert {b["key"]: b["doc_count"] for b in result["cells"]["buckets"]} == {
        "u": 5000,
        "d": 2500,
        "6": 2500,
    }
    # Zoom 1 splits the world at lon 0 (x) and lat 0 (y, north first).
    assert {b["key"]: b["doc_count"] for b in result["tiles"]["buckets"]} == {
        "1/1/0": 5000,
        "1/0/0": 2500,
        "1/0/1": 2500,
    }

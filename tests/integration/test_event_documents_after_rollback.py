"""OpenSearch holds the stored copy of an event, whatever attempt failed before it was stored.

Two copies of one ``event_id`` with different content, sent by two visitors (so on two
partitions): the contract stores one of them ("the first one stored wins"), and OpenSearch must
hold that same copy, one document per ``events`` row. Found by a chaos run: a batch indexed its
new events *before* its transaction committed, with ``op_type=create``; when the transaction
rolled back (a crash, a lost connection, a deadlock: here a transient error raised by a trigger)
and the other partition's copy was stored instead, its ``create`` was answered ``409`` (same UTC
day: OpenSearch kept the copy that was never stored) or landed in another daily index (another
day: two documents for one id). Events are now indexed only once committed.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from opensearchpy import OpenSearch

from clickstream.events import ClickEvent, decode_event
from clickstream.search.documents import click_event_json
from tests.support import consumer_env, start_consumer, wait_until

pytestmark = pytest.mark.integration

_FLAGGED = "visitor-rolled-back"
_OTHER = "visitor-stored"


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _send(bootstrap: str, topic: str, partition: int, event: dict[str, Any]) -> None:
    """Produce one event, keyed by its user_id, to a chosen partition; wait for the ack."""
    errors: list[str] = []
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.produce(
        topic,
        key=str(event["user_id"]).encode(),
        value=json.dumps(event).encode(),
        partition=partition,
        on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
    )
    assert producer.flush(30) == 0
    assert not errors, errors


def _fail_sessions_of(database_url: str, user_id: str) -> None:
    """While ``fail_switch.on_`` is true, writing a session of ``user_id`` aborts the
    transaction with SQLSTATE 40001 (serialization failure): a transient error, raised after
    the events insert (so after the batch's new events went to OpenSearch)."""
    with psycopg.connect(_libpq(database_url), autocommit=True) as conn:
        conn.execute("CREATE TABLE fail_switch (on_ boolean NOT NULL)")
        conn.execute("INSERT INTO fail_switch VALUES (true)")
        conn.execute(
            "CREATE FUNCTION fail_sessions() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN IF NEW.user_id = '" + user_id + "' AND (SELECT on_ FROM fail_switch) THEN"
            " RAISE EXCEPTION 'injected transient failure' USING ERRCODE = '40001';"
            " END IF; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER fail_sessions BEFORE INSERT OR UPDATE ON sessions"
            " FOR EACH ROW EXECUTE FUNCTION fail_sessions()"
        )


def _stop_failing(database_url: str) -> None:
    with psycopg.connect(_libpq(database_url), autocommit=True) as conn:
        conn.execute("UPDATE fail_switch SET on_ = false")


def _stored(database_url: str, event_id: str) -> dict[str, Any] | None:
    with psycopg.connect(_libpq(database_url)) as conn:
        cur = conn.execute(
            "SELECT user_id, occurred_at, page_url FROM events WHERE event_id = %s", [event_id]
        )
        row = cur.fetchone()
    if row is None:
        return None
    return {"user_id": row[0], "occurred_at": row[1], "page_url": row[2]}


def _documents(client: OpenSearch, prefix: str, event_id: str) -> list[dict[str, Any]]:
    client.indices.refresh(index=f"{prefix}-events-*")
    found = client.search(
        index=f"{prefix}-events", body={"query": {"ids": {"values": [event_id]}}, "size": 10}
    )
    return [hit["_source"] | {"_index": hit["_index"]} for hit in found["hits"]["hits"]]


@pytest.mark.parametrize(
    "second_copy_at",
    ["2024-06-01T10:05:00Z", "2024-06-02T10:05:00Z"],
    ids=["same_utc_day", "next_utc_day"],
)
def test_the_event_document_is_the_stored_copy_after_a_rolled_back_batch_indexed_another(
    stack,
    topics,
    *,
    migrated_database_url: str,
    opensearch_index_prefix: str,
    tmp_path: Path,
    second_copy_at: str,
) -> None:
    t = topics(2)
    event_id = str(uuid.uuid4())
    first_copy = {
        "event_id": event_id,
        "event_type": "page_view",
        "occurred_at": "2024-06-01T10:00:00Z",
        "user_id": _FLAGGED,
        "page_url": "https://shop.example/first-copy",
        "page_type": "home",
        "device_type": "desktop",
    }
    second_copy = first_copy | {
        "occurred_at": second_copy_at,
        "user_id": _OTHER,
        "page_url": "https://shop.example/second-copy",
    }
    _fail_sessions_of(migrated_database_url, _FLAGGED)
    client = OpenSearch(hosts=[stack.opensearch_url], timeout=30)
    env = consumer_env(
        bootstrap=stack.kafka_bootstrap,
        topic=t.events,
        group=f"test-{uuid.uuid4()}",
        database_url=migrated_database_url,
        opensearch_url=stack.opensearch_url,
        index_prefix=opensearch_index_prefix,
    )
    log = tmp_path / "consumer.log"
    _send(stack.kafka_bootstrap, t.events, 0, first_copy)
    process = start_consumer(env, "--batch-size", "1", "--exit-when-idle", "4", log=log)
    try:
        # 1. The batch with the first copy inserts it (and sends it to OpenSearch), then rolls
        #    back; it keeps rolling back while the trigger is on.
        wait_until(
            lambda: "batch not stored" in log.read_text(errors="replace"),
            timeout=120,
            what="the first copy's batch to roll back",
        )
        assert _stored(migrated_database_url, event_id) is None
        # 2. Meanwhile the other visitor's copy, on the other partition, is stored first.
        _send(stack.kafka_bootstrap, t.events, 1, second_copy)
        wait_until(
            lambda: _stored(migrated_database_url, event_id) is not None,
            timeout=120,
            what="the second copy to be stored",
        )
        _stop_failing(migrated_database_url)
        assert process.wait(240) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    stored = _stored(migrated_database_url, event_id)
    assert stored is not None
    assert stored["user_id"] == _OTHER  # the first stored copy wins in PostgreSQL
    try:
        documents = _documents(client, opensearch_index_prefix, event_id)
    finally:
        client.close()
    # One document per events row, equal to the row (before the fix, OpenSearch kept the copy
    # of the rolled-back attempt, or held both copies in two daily indices).
    assert [(d["user_id"], d["page_url"], d["occurred_at"]) for d in documents] == [
        (_OTHER, "https://shop.example/second-copy", second_copy_at)
    ], documents
    # The retry of the first copy's batch found it a duplicate and indexed the stored copy again,
    # from its PostgreSQL row: the document is the one made from the validated event.
    expected = json.loads(click_event_json(_validated(second_copy))[2])
    (document,) = documents
    assert {k: v for k, v in document.items() if k != "_index"} == expected


def _validated(raw: dict[str, Any]) -> ClickEvent:
    return decode_event(
        json.dumps(raw).encode(), now=datetime.now(UTC), future_tolerance=timedelta(0)
    )

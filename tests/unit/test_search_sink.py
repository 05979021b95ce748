"""The sink's decisions without a server: item outcomes, retries, conversion rejects."""

from __future__ import annotations

import json
import socket

import pytest

from clickstream.errors import TransientError
from clickstream.search.client import make_client
from clickstream.search.sink import (
    REJECTED_REASON,
    SearchSink,
    _action,
    classify_item,
    describe_error,
)

MAPPING_ERROR = {
    "type": "mapper_parsing_exception",
    "reason": "failed to parse field [location] of type [geo_point]",
    "caused_by": {"type": "illegal_argument_exception", "reason": "illegal latitude value [123.0]"},
}


@pytest.mark.parametrize(
    ("op", "status", "error", "expected"),
    [
        ("create", 201, None, "done"),
        ("index", 200, None, "done"),
        ("delete", 200, None, "done"),
        # A redelivered event: the first stored copy wins.
        ("create", 409, {"type": "version_conflict_engine_exception"}, "done"),
        # Deleting a superseded session that is already gone.
        ("delete", 404, None, "done"),
        # ... but a missing index or alias is a setup problem, not a missing document.
        ("delete", 404, {"type": "index_not_found_exception"}, "fatal"),
        ("index", 404, {"type": "index_not_found_exception"}, "fatal"),
        # A versioned session write or delete older than the index's: superseded, done.
        ("index", 409, {"type": "version_conflict_engine_exception"}, "done"),
        ("delete", 409, {"type": "version_conflict_engine_exception"}, "done"),
        ("index", 409, {"type": "some_other_conflict"}, "fatal"),
        ("create", 429, {"type": "es_rejected_execution_exception"}, "retry"),
        ("index", 500, {"type": "exception"}, "retry"),
        ("index", 503, {"type": "unavailable_shards_exception"}, "retry"),
        ("create", 403, {"type": "cluster_block_exception"}, "retry"),
        ("create", 403, {"type": "security_exception"}, "fatal"),
        ("create", 401, {"type": "security_exception"}, "fatal"),
        ("create", 400, MAPPING_ERROR, "reject"),
        ("index", 400, {"type": "strict_dynamic_mapping_exception"}, "reject"),
    ],
)
def test_classify_item(op, status, error, expected) -> None:
    assert classify_item(op, status, error) == expected


def test_describe_error_follows_the_causes() -> None:
    assert describe_error(MAPPING_ERROR) == (
        "mapper_parsing_exception: failed to parse field [location] of type [geo_point]"
        " <- illegal_argument_exception: illegal latitude value [123.0]"
    )
    assert describe_error("boom") == "boom"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_opensearch_is_retried_with_backoff_then_transient() -> None:
    waits: list[float] = []
    client = make_client(f"http://127.0.0.1:{_closed_port()}", timeout=5)
    sink = SearchSink(
        client, "test", max_attempts=4, initial_backoff=0.5, max_backoff=1.5, sleep=waits.append
    )
    row = {"event_id": "e-1", "occurred_at": "2024-05-01T00:00:00Z", "event_type": "page_view"}
    with pytest.raises(TransientError, match="1 actions after 4 attempts"):
        sink.index_events([row])
    assert waits == [0.5, 1.0, 1.5]
    with pytest.raises(TransientError):
        sink.upsert_sessions([], ["s-1"])


def test_rows_that_cannot_be_converted_are_rejected_without_a_request() -> None:
    # Any request to this client would fail: a result proves none was sent.
    client = make_client(f"http://127.0.0.1:{_closed_port()}", timeout=5)
    sink = SearchSink(client, "test", max_attempts=1)
    rejected = sink.index_events([{"event_id": "e-1", "occurred_at": "2024-05-01T00:00:00"}])
    assert [(r.doc_id, r.reason) for r in rejected] == [("e-1", REJECTED_REASON)]
    assert "naive" in rejected[0].detail
    rejected = sink.upsert_sessions([{"user_id": "u-1"}], [])
    assert [(r.doc_id, r.reason) for r in rejected] == [("", REJECTED_REASON)]
    assert sink.index_events([]) == []
    assert sink.upsert_sessions([], []) == []


def test_sink_arguments_are_checked() -> None:
    client = make_client("http://127.0.0.1:9200")
    with pytest.raises(ValueError, match="positive"):
        SearchSink(client, "test", max_attempts=0)


def test_actions_are_ndjson_lines_that_escape_ids() -> None:
    head, source = _action("create", "p-events-2024.05.01", 'e"1\\ü', '{"a":1}').lines.split(b"\n")[
        :2
    ]
    assert json.loads(head) == {"create": {"_index": "p-events-2024.05.01", "_id": 'e"1\\ü'}}
    assert source == b'{"a":1}'
    delete = _action("delete", "p-sessions", "s-1", None, require_alias=True)
    assert delete.lines == b'{"delete":{"_index":"p-sessions","_id":"s-1","require_alias":true}}\n'


def test_requests_are_cut_by_count_and_by_bytes() -> None:
    client = make_client("http://127.0.0.1:9200")
    actions = [_action("delete", "i", f"{n:03d}", None) for n in range(7)]
    size = len(actions[0].lines)  # every line has the same length here

    def cut(**limits: int) -> list[int]:
        sink = SearchSink(client, "test", **limits)
        return [len(chunk) for chunk in sink._chunks(actions)]

    assert cut(chunk_size=3) == [3, 3, 1]
    assert cut(chunk_size=100, max_chunk_bytes=2 * size) == [2, 2, 2, 1]
    assert cut(chunk_size=100, max_chunk_bytes=2 * size + 1) == [2, 2, 2, 1]
    # One action larger than the byte limit still goes, alone.
    assert cut(chunk_size=100, max_chunk_bytes=1) == [1] * 7
    assert cut(chunk_size=2000) == [7]

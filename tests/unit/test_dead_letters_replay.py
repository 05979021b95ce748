"""Which dead letters ``--replay`` sends back, and what it says: the pure decisions, no Kafka."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from clickstream.dead_letters import (
    LetterFilter,
    ReplayPolicy,
    ReplaySummary,
    StoredLetter,
    _offset_range,
    _span,
    main,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
EVENTS = "clickstream.events"


def _event(occurred_at: str = "2026-11-30T11:00:00Z") -> bytes:
    return json.dumps(
        {
            "event_id": "6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
            "event_type": "page_view",
            "occurred_at": occurred_at,
            "user_id": "visitor-1",
            "page_url": "https://shop.example/",
            "page_type": "home",
            "device_type": "mobile",
        }
    ).encode()


def _letter(
    reason: str,
    value: bytes | None = None,
    *,
    source: str = EVENTS,
    source_offset: int = 7,
    offset: int = 0,
    timestamp_ms: int | None = None,
    extra: tuple[tuple[str, bytes], ...] = (),
) -> StoredLetter:
    return StoredLetter(
        partition=0,
        offset=offset,
        timestamp_ms=timestamp_ms,
        key=b"visitor-1",
        value=_event() if value is None else value,
        headers=(
            ("reason", reason.encode()),
            ("detail", b"d"),
            ("source_topic", source.encode()),
            ("source_partition", b"2"),
            ("source_offset", str(source_offset).encode()),
            *extra,
        ),
    )


def _policy(*, force: bool = False) -> ReplayPolicy:
    return ReplayPolicy(
        topic=EVENTS, future_tolerance=timedelta(minutes=5), clock=lambda: NOW, force=force
    )


@pytest.mark.parametrize("reason", ["future_timestamp", "rejected_by_sink", "search_rejected"])
def test_letters_that_can_succeed_now_are_replayed(reason: str) -> None:
    assert _policy().refusal(_letter(reason)) is None


def test_a_future_event_is_replayed_once_it_lies_within_the_tolerance() -> None:
    # 12:05:00 is exactly the tolerance (5 minutes) ahead of 12:00: valid, as for the consumer.
    at_tolerance = _letter("future_timestamp", _event("2026-11-30T12:05:00Z"))
    beyond = _letter("future_timestamp", _event("2026-11-30T12:05:01Z"), source_offset=8)
    assert _policy().refusal(at_tolerance) is None
    assert _policy().refusal(beyond) == "not_yet"
    assert _policy(force=True).refusal(beyond) is None


@pytest.mark.parametrize("reason", ["not_json", "schema", "too_large"])
def test_reasons_about_the_bytes_need_force(reason: str) -> None:
    letter = _letter(reason, b"{not json")
    assert _policy().refusal(letter) == "never_again"
    assert _policy(force=True).refusal(letter) is None


def test_an_unknown_reason_needs_force() -> None:
    assert _policy().refusal(_letter("from_the_future")) == "unknown_reason"
    assert _policy(force=True).refusal(_letter("from_the_future")) is None


def test_a_sink_refusal_whose_bytes_the_consumer_would_refuse_now_needs_force() -> None:
    letter = _letter("rejected_by_sink", b'{"event_id": "x"}')
    assert _policy().refusal(letter) == "refused_now"
    assert _policy(force=True).refusal(letter) is None


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ((("truncated", b"true"), ("original_size", b"3000000")), "truncated"),
        ((("key_truncated", b"true"), ("original_key_size", b"70000")), "key_truncated"),
    ],
)
def test_a_cut_letter_is_never_replayed(extra: tuple[tuple[str, bytes], ...], why: str) -> None:
    letter = _letter("future_timestamp", extra=extra)
    assert _policy().refusal(letter) == why
    assert _policy(force=True).refusal(letter) == why


def test_letters_from_another_source_are_never_replayed() -> None:
    session = _letter("search_rejected", b'{"session_id": "s"}', source="sessions")
    other = _letter("future_timestamp", source="other.events")
    for force in (False, True):
        assert _policy(force=force).refusal(session) == "session_document"
        assert _policy(force=force).refusal(other) == "other_topic"


def test_a_second_letter_of_one_source_message_is_skipped() -> None:
    policy = _policy()
    assert policy.refusal(_letter("future_timestamp", offset=0)) is None
    assert policy.refusal(_letter("future_timestamp", offset=5)) == "repeated_letter"
    assert policy.refusal(_letter("future_timestamp", offset=6, source_offset=9)) is None
    # A letter skipped for its content does not mark its source as replayed.
    policy = _policy()
    assert policy.refusal(_letter("future_timestamp", _event("2027-01-01T00:00:00Z"))) == "not_yet"
    assert policy.refusal(_letter("future_timestamp")) is None


def test_the_filter_keeps_a_reason_and_a_half_open_time_window() -> None:
    noon_ms = 1_796_040_000_000  # 2026-11-30T12:00:00Z
    window = LetterFilter(since=NOW, until=NOW + timedelta(hours=1))
    assert window.matches(_letter("schema", timestamp_ms=noon_ms))
    assert not window.matches(_letter("schema", timestamp_ms=noon_ms - 1))
    assert window.matches(_letter("schema", timestamp_ms=noon_ms + 3_600_000 - 1))
    assert not window.matches(_letter("schema", timestamp_ms=noon_ms + 3_600_000))
    assert not window.matches(_letter("schema", timestamp_ms=None))
    assert LetterFilter().matches(_letter("schema", timestamp_ms=None))
    assert LetterFilter(reason="schema").matches(_letter("schema"))
    assert not LetterFilter(reason="schema").matches(_letter("not_json"))


def test_the_summary_counts_by_reason_and_says_what_to_do_with_the_rest() -> None:
    summary = ReplaySummary(
        replayed=Counter({"search_rejected": 1, "future_timestamp": 2}),
        skipped=Counter({"truncated": 1, "never_again": 3}),
    )
    lines = summary.lines(topic=EVENTS, dry_run=False)
    assert lines[0] == (
        "replayed 3 letter(s) to clickstream.events (future_timestamp 2, search_rejected 1)"
    )
    assert lines[1] == "skipped 4 letter(s):"
    assert lines[2].startswith("  3 not_json, schema or too_large: the same bytes are refused")
    assert lines[3].startswith("  1 value truncated:")
    assert "send the original again from its producer" in lines[3]
    dry = ReplaySummary(replayed=Counter({"future_timestamp": 2})).lines(topic="t", dry_run=True)
    assert dry == ["would replay 2 letter(s) to t (future_timestamp 2); nothing sent (--dry-run)"]
    failed = ReplaySummary(replayed=Counter({"future_timestamp": 2}), undelivered=1)
    assert failed.lines(topic="t", dry_run=False) == [
        "replayed 2 letter(s) to t (future_timestamp 2); 1 of them NOT delivered"
    ]
    assert ReplaySummary().lines(topic="t", dry_run=False) == ["replayed 0 letter(s) to t"]


def test_offset_ranges_and_what_is_read_of_a_partition() -> None:
    assert _offset_range("7") == (7, 7)
    assert _offset_range("3-9") == (3, 9)
    for bad in ("9-3", "-1", "a-b", "1-", ""):
        with pytest.raises(Exception, match="expected"):
            _offset_range(bad)
    # a partition holding offsets 10..19 (low 10, high 20)
    assert _span(10, 20, last=None, offsets=None) == (10, 20)
    assert _span(10, 20, last=3, offsets=None) == (17, 20)
    assert _span(10, 20, last=50, offsets=None) == (10, 20)
    assert _span(10, 20, last=None, offsets=(5, 12)) == (10, 13)
    assert _span(10, 20, last=None, offsets=(15, 99)) == (15, 20)
    assert _span(10, 20, last=None, offsets=(25, 30)) == (25, 20)  # empty: nothing read


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--replay"], "--replay needs a scope"),
        (["--replay", "--all", "--json"], "does not go with --replay"),
        (["--dry-run", "--all"], "go with --replay"),
        (["--force", "--all"], "go with --replay"),
        (["--all", "--last", "3"], "not allowed with"),
        (["--since", "2026-11-30T12:00:00"], "offset"),
    ],
)
def test_flags_that_do_not_go_together_are_refused_before_anything_connects(
    capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--bootstrap-servers", "127.0.0.1:1", *args])
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err

"""``python -m clickstream.dead_letters --replay`` against real Kafka and PostgreSQL: letters go
back to the events topic byte for byte, the consumer stores a replayed event once however often
it is replayed, and letters that cannot succeed are refused with nothing sent."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from clickstream.consume import ConsumerOptions, run
from clickstream.dead_letters import KafkaDeadLetterSink, main, read_letters
from clickstream.pipeline import DeadLetter
from clickstream.search import make_client
from clickstream.search.indices import events_index
from clickstream.settings import Settings
from tests.support import messages_on, produce, read_all, scalar

pytestmark = pytest.mark.integration

EVENT_ID = "7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d"


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command reads CLICKSTREAM_* like in production; only what a test sets counts."""
    for name in [n for n in os.environ if n.startswith("CLICKSTREAM_")]:
        monkeypatch.delenv(name)


def _event(occurred_at: datetime, *, event_id: str = EVENT_ID) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "event_type": "page_view",
            "occurred_at": occurred_at.isoformat().replace("+00:00", "Z"),
            "user_id": "visitor-replay",
            "page_url": "https://shop.example/",
            "page_type": "home",
            "device_type": "mobile",
            "country": "DE",
        }
    ).encode()


def _replay(capsys: pytest.CaptureFixture[str], stack, topics, *args: str) -> tuple[int, str]:
    code = main(
        [
            "--bootstrap-servers",
            stack.kafka_bootstrap,
            "--topic",
            topics.events,
            "--dlq-topic",
            topics.dlq,
            "--replay",
            *args,
        ]
    )
    return code, capsys.readouterr().out


def _consumer_settings(stack, topics, database_url: str, group: str, tolerance: int) -> Settings:
    return Settings(
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        topic=topics.events,
        dlq_topic=topics.dlq,
        consumer_group=group,
        database_url=database_url,
        future_tolerance_seconds=tolerance,
    )


def test_a_future_event_replayed_twice_is_stored_and_counted_once(
    stack,
    topics,
    migrated_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    t = topics(1)
    key, value = b"visitor-replay", _event(datetime.now(UTC) + timedelta(minutes=20))
    produce(stack.kafka_bootstrap, t.events, [(key, value)])
    group = f"test-{uuid.uuid4()}"
    options = ConsumerOptions(exit_when_idle=1, opensearch=False, progress_interval=2)

    # The consumer allows 60 s: the event, 20 minutes ahead, is dead-lettered.
    strict = _consumer_settings(stack, t, migrated_database_url, group, tolerance=60)
    first = run(strict, options)
    assert (first.consumed, first.stored, first.dead_lettered) == (1, 0, 1)
    assert first.reasons == {"future_timestamp": 1}
    [letter] = read_letters(strict, last=None)
    assert (letter.reason, letter.key, letter.value) == ("future_timestamp", key, value)

    # Too early: with the same tolerance the consumer would refuse it again; nothing is sent.
    monkeypatch.setenv("CLICKSTREAM_FUTURE_TOLERANCE_SECONDS", "60")
    code, out = _replay(capsys, stack, t, "--all")
    assert code == 0
    assert out.startswith(f"replayed 0 letter(s) to {t.events}\nskipped 1 letter(s):\n")
    assert "occurred_at still more than the future tolerance" in out
    assert messages_on(stack.kafka_bootstrap, t.events) == 1

    # Time has passed (as far as the tolerance is concerned): replay it, twice.
    monkeypatch.setenv("CLICKSTREAM_FUTURE_TOLERANCE_SECONDS", "3600")
    for _ in range(2):
        code, out = _replay(capsys, stack, t, "--all", "--reason", "future_timestamp")
        assert code == 0
        assert out == f"replayed 1 letter(s) to {t.events} (future_timestamp 1)\n"
    on_topic = sorted(read_all(stack.kafka_bootstrap, t.events, expected=3), key=lambda m: m.offset)
    assert [(m.key, m.value) for m in on_topic] == [(key, value)] * 3  # byte for byte
    assert [m.headers for m in on_topic] == [
        {},
        {"replayed_from": f"{t.dlq}[0]@0"},
        {"replayed_from": f"{t.dlq}[0]@0"},
    ]

    # The same group reads the two replays (headers and all) with a tolerance that takes them.
    lenient = _consumer_settings(stack, t, migrated_database_url, group, tolerance=3600)
    second = run(lenient, options)
    assert (second.consumed, second.stored, second.duplicates, second.dead_lettered) == (
        2,
        1,
        1,
        0,
    )
    assert scalar(migrated_database_url, "SELECT count(*) FROM events") == 1
    assert str(scalar(migrated_database_url, "SELECT event_id FROM events")) == EVENT_ID
    assert scalar(migrated_database_url, "SELECT count(*) FROM traffic_minute") == 1
    assert scalar(migrated_database_url, "SELECT sum(events) FROM traffic_minute") == 1
    assert scalar(migrated_database_url, "SELECT sum(page_views) FROM traffic_minute") == 1
    assert scalar(migrated_database_url, "SELECT sum(event_count) FROM sessions") == 1
    assert len(list(read_letters(lenient, last=None))) == 1  # no new dead letter


def _letters(stack, t, *letters: DeadLetter) -> None:
    sink = KafkaDeadLetterSink(
        Settings(kafka_bootstrap_servers=stack.kafka_bootstrap, topic=t.events, dlq_topic=t.dlq)
    )
    sink.send(letters)
    sink.close()


def test_letters_that_cannot_succeed_are_refused_and_nothing_is_sent(
    stack, topics, capsys: pytest.CaptureFixture[str]
) -> None:
    t = topics(1)
    past = _event(datetime(2026, 11, 30, 9, 0, tzinfo=UTC))
    _letters(
        stack,
        t,
        DeadLetter(b"u1", b"{oops", "not_json", "d", t.events, 0, 1),
        DeadLetter(b"u2", b'{"event_id": "x"}', "schema", "d", t.events, 0, 2),
        DeadLetter(b"u3", b"y" * 5000, "too_large", "d", t.events, 0, 3),
        DeadLetter(
            b"u4",
            past[:40],
            "future_timestamp",
            "d",
            t.events,
            0,
            4,
            extra_headers=(("truncated", b"true"), ("original_size", b"3000000")),
        ),
        DeadLetter(b"u5", b'{"session_id": "s"}', "search_rejected", "d", "sessions", -1, -1),
        DeadLetter(b"u6", past, "future_timestamp", "d", "other.events", 0, 6),
    )
    code, out = _replay(capsys, stack, t, "--all")
    assert code == 0
    lines = out.splitlines()
    assert lines[:2] == [f"replayed 0 letter(s) to {t.events}", "skipped 6 letter(s):"]
    assert lines[2].startswith("  3 not_json, schema or too_large: the same bytes are refused")
    assert lines[3].startswith("  1 from another source topic: replay them with --topic")
    assert lines[4].startswith("  1 session documents OpenSearch refused")
    assert lines[5].startswith("  1 value truncated:")
    assert len(lines) == 6
    assert messages_on(stack.kafka_bootstrap, t.events) == 0

    # --force sends the letters about their bytes, as they are; never a cut one or a stranger.
    code, out = _replay(capsys, stack, t, "--all", "--force")
    assert code == 0
    assert out.splitlines()[:2] == [
        f"replayed 3 letter(s) to {t.events} (not_json 1, schema 1, too_large 1)",
        "skipped 3 letter(s):",
    ]
    sent = sorted(read_all(stack.kafka_bootstrap, t.events, expected=3), key=lambda m: m.offset)
    assert [(m.key, m.value) for m in sent] == [
        (b"u1", b"{oops"),
        (b"u2", b'{"event_id": "x"}'),
        (b"u3", b"y" * 5000),
    ]
    assert [m.headers["replayed_from"] for m in sent] == [f"{t.dlq}[0]@{n}" for n in range(3)]


def test_a_dry_run_counts_by_reason_and_sends_nothing(
    stack, topics, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    t = topics(3)
    past = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    ids = [f"7a6b5c4d-3e2f-4a1b-8c9d-00000000000{n}" for n in range(3)]
    _letters(
        stack,
        t,
        DeadLetter(b"v", _event(past, event_id=ids[0]), "future_timestamp", "d", t.events, 0, 1),
        DeadLetter(b"v", _event(past, event_id=ids[1]), "rejected_by_sink", "d", t.events, 1, 2),
        DeadLetter(b"v", _event(past, event_id=ids[2]), "search_rejected", "d", t.events, 2, 3),
        DeadLetter(b"v", b"{oops", "not_json", "d", t.events, 0, 4),
    )
    code, out = _replay(capsys, stack, t, "--all", "--dry-run")
    assert code == 0
    assert out.splitlines() == [
        f"would replay 3 letter(s) to {t.events} "
        "(future_timestamp 1, rejected_by_sink 1, search_rejected 1); nothing sent (--dry-run)",
        "skipped 1 letter(s):",
        "  1 not_json, schema or too_large: the same bytes are refused again; fix them at the "
        "producer (or --force to send them anyway)",
    ]
    # The selection flags: dead-letter offsets 1 and 2, one reason, a time window.
    code, out = _replay(capsys, stack, t, "--offsets", "1-2", "--dry-run")
    assert out.splitlines()[0].startswith("would replay 2 letter(s) to ")
    assert "(rejected_by_sink 1, search_rejected 1)" in out
    code, out = _replay(capsys, stack, t, "--last", "4", "--reason", "search_rejected", "--dry-run")
    assert out.splitlines()[0].startswith("would replay 1 letter(s) to ")
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    code, out = _replay(capsys, stack, t, "--all", "--since", later, "--dry-run")
    assert out.splitlines() == [f"would replay 0 letter(s) to {t.events}; nothing sent (--dry-run)"]
    assert messages_on(stack.kafka_bootstrap, t.events) == 0

    # Without --dry-run, a missing events topic stops it before anything is read or sent.
    code = main(
        [
            "--bootstrap-servers",
            stack.kafka_bootstrap,
            "--topic",
            f"absent-{uuid.uuid4().hex[:8]}",
            "--dlq-topic",
            t.dlq,
            "--replay",
            "--all",
        ]
    )
    assert code == 2
    assert "python -m clickstream.topics" in caplog.text


def test_an_event_opensearch_refused_is_indexed_from_its_stored_copy_when_replayed(
    stack,
    topics,
    migrated_database_url: str,
    opensearch_index_prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    t = topics(1)
    occurred = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    key, value = b"visitor-replay", _event(occurred)
    client = make_client(stack.opensearch_url)
    index = events_index(opensearch_index_prefix, occurred)
    # A mapping problem: the day's index exists with `country` as a number, so "DE" is refused.
    client.indices.create(
        index=index, body={"mappings": {"properties": {"country": {"type": "integer"}}}}
    )
    produce(stack.kafka_bootstrap, t.events, [(key, value)])
    settings = Settings(
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        topic=t.events,
        dlq_topic=t.dlq,
        consumer_group=f"test-{uuid.uuid4()}",
        database_url=migrated_database_url,
        opensearch_url=stack.opensearch_url,
        opensearch_index_prefix=opensearch_index_prefix,
    )
    options = ConsumerOptions(exit_when_idle=1, progress_interval=2)
    first = run(settings, options)
    # Stored, so not dead-lettered in the count; its letter is counted as refused by OpenSearch.
    assert (first.stored, first.dead_lettered, first.search_rejected) == (1, 0, 1)
    assert not client.exists(index=index, id=EVENT_ID)

    client.indices.delete(index=index)  # the fix: the template makes the index again
    code, out = _replay(capsys, stack, t, "--all")
    assert (code, out) == (0, f"replayed 1 letter(s) to {t.events} (search_rejected 1)\n")
    second = run(settings, options)
    # Stored already: a duplicate in SQL, whose stored copy is indexed.
    assert (second.consumed, second.stored, second.duplicates, second.dead_lettered) == (
        1,
        0,
        1,
        0,
    )
    document = client.get(index=index, id=EVENT_ID)["_source"]
    assert (document["country"], document["user_id"]) == ("DE", "visitor-replay")
    assert scalar(migrated_database_url, "SELECT count(*) FROM events") == 1
    assert scalar(migrated_database_url, "SELECT sum(events) FROM traffic_minute") == 1

"""``python -m clickstream.dead_letters`` against real Kafka: the letters the consumer's sink
wrote, read back with their reason, detail, origin, key and bytes."""

from __future__ import annotations

import json
import uuid

import pytest

from clickstream.dead_letters import KafkaDeadLetterSink, main
from clickstream.pipeline import DeadLetter
from clickstream.settings import Settings

pytestmark = pytest.mark.integration


def _letter(number: int, reason: str, value: bytes) -> DeadLetter:
    return DeadLetter(
        key=f"user-{number}".encode(),
        value=value,
        reason=reason,
        detail=f"detail {number}",
        source_topic="events-x",
        source_partition=number % 3,
        source_offset=1000 + number,
    )


@pytest.fixture
def letters_topic(stack, topics) -> str:
    t = topics(1)
    sink = KafkaDeadLetterSink(
        Settings(kafka_bootstrap_servers=stack.kafka_bootstrap, topic=t.events, dlq_topic=t.dlq)
    )
    sink.send(
        [
            _letter(1, "not_json", b"{oops"),
            _letter(2, "schema", b'{"event_id": "x"}'),
            _letter(3, "schema", "caf\u00e9 \xff".encode("latin-1")),
            _letter(4, "too_large", b"y" * 5000),
        ]
    )
    sink.close()
    return t.dlq


def _run(capsys: pytest.CaptureFixture[str], stack, topic: str, *args: str) -> tuple[int, str]:
    code = main(["--bootstrap-servers", stack.kafka_bootstrap, "--dlq-topic", topic, *args])
    return code, capsys.readouterr().out


def test_every_letter_is_shown_with_its_reason_origin_key_and_bytes(
    capsys: pytest.CaptureFixture[str], stack, letters_topic: str
) -> None:
    code, out = _run(capsys, stack, letters_topic, "--all", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["offset"] for row in rows] == [0, 1, 2, 3]
    first = rows[0]
    assert first["headers"] == {
        "reason": "not_json",
        "detail": "detail 1",
        "source_topic": "events-x",
        "source_partition": "1",
        "source_offset": "1001",
    }
    assert (first["key"], first["value"], first["value_bytes"]) == ("user-1", "{oops", 5)
    # Bytes that are not UTF-8 are shown escaped, never dropped.
    assert rows[2]["value"] == "caf\\xe9 \\xff"
    assert rows[3]["value_bytes"] == 5000


def test_the_text_form_filters_by_reason_and_keeps_the_newest(
    capsys: pytest.CaptureFixture[str], stack, letters_topic: str
) -> None:
    code, out = _run(capsys, stack, letters_topic, "--all", "--reason", "schema")
    assert code == 0
    assert out.count("  schema  from events-x[") == 2
    assert "not_json" not in out
    assert "    detail 2\n" in out
    assert "from events-x[0]@1003" in out
    code, out = _run(capsys, stack, letters_topic, "--last", "1")
    assert code == 0
    assert out.startswith("[0]@3  ")
    assert "too_large  from events-x[1]@1004" in out
    assert "... (5,000 bytes)" in out  # long values are cut for the terminal


def test_a_missing_dead_letter_topic_says_what_to_do(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, stack
) -> None:
    code, out = _run(capsys, stack, f"absent-{uuid.uuid4().hex[:8]}")
    assert code == 2
    assert out == ""
    assert "python -m clickstream.topics" in caplog.text

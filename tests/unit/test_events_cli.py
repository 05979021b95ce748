"""``python -m clickstream.events``: the schema, and validating a file of events line by line."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from clickstream.events import _main as events_main
from clickstream.events import json_schema


def _event(number: int, *, ahead: timedelta = timedelta(minutes=-1)) -> dict[str, Any]:
    return {
        "event_id": f"3f2b8c1e-9d4a-4c6b-8e2f-1a7d5c9b0e{number:02d}",
        "event_type": "page_view",
        "occurred_at": (datetime.now(UTC) + ahead).isoformat(),
        "user_id": f"visitor-{number}",
        "page_url": "https://shop.example.com/",
        "page_type": "home",
        "device_type": "desktop",
    }


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_schema_is_the_contract_s(capsys: pytest.CaptureFixture[str]) -> None:
    assert events_main(["--schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()


def test_each_invalid_line_is_reported_with_its_reason_and_blank_lines_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_type = {**_event(2), "event_type": "click"}
    lines = [json.dumps(_event(1)), "", "{not json", "   ", json.dumps(bad_type), ""]
    assert events_main(["--validate", _write(tmp_path / "e.ndjson", lines)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "line 3: not_json: the message is not JSON: Expecting property name enclosed in double "
        "quotes at line 1 column 2",
        "line 5: schema: field 'event_type': Input should be 'page_view', 'search', "
        "'add_to_cart', 'remove_from_cart', 'begin_checkout' or 'purchase'",
    ]


def test_a_file_of_valid_events_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [json.dumps(_event(n)) for n in range(5)]
    assert events_main(["--validate", _write(tmp_path / "e.ndjson", lines)]) == 0
    assert capsys.readouterr().out == ""


def test_the_future_tolerance_is_the_consumer_s_setting_or_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "e.ndjson", [json.dumps(_event(1, ahead=timedelta(minutes=10)))])
    monkeypatch.delenv("CLICKSTREAM_FUTURE_TOLERANCE_SECONDS", raising=False)
    assert events_main(["--validate", path]) == 1  # 10 minutes ahead; 5 allowed by default
    assert "future_timestamp" in capsys.readouterr().out
    monkeypatch.setenv("CLICKSTREAM_FUTURE_TOLERANCE_SECONDS", "3600")
    assert events_main(["--validate", path]) == 0
    assert events_main(["--validate", path, "--future-tolerance", "60"]) == 1


@pytest.mark.parametrize("value", ["-1", "86401", "1e9", "nan", "inf", "soon"])
def test_a_future_tolerance_flag_outside_the_setting_s_bounds_is_exit_2(
    tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "e.ndjson", [json.dumps(_event(1, ahead=timedelta(minutes=10)))])
    with pytest.raises(SystemExit) as exit_info:
        events_main(["--validate", path, "--future-tolerance", value])
    assert exit_info.value.code == 2
    assert "--future-tolerance" in capsys.readouterr().err


def test_a_file_that_cannot_be_read_is_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert events_main(["--validate", str(tmp_path / "missing.ndjson")]) == 2
    assert events_main(["--validate", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert "No such file or directory" in err[0]
    assert "Is a directory" in err[1]

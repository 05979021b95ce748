"""``python -m clickstream.analytics``: the hand-checked figures of tests/analytics_cases.py,
printed for a terminal and as JSON, and its errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from clickstream.analytics import main as analytics_main
from tests.analytics_cases import sqlite_database

HOUR = ["--start", "2024-06-01T12:00:00Z", "--end", "2024-06-01T13:00:00Z"]


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return sqlite_database(tmp_path_factory.mktemp("report"))


def test_the_report_prints_the_hand_computed_figures(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert analytics_main(["--database-url", database_url, *HOUR]) == 0
    out = capsys.readouterr().out
    # The expectations of test_dashboard.py (hand-computed in tests/analytics_cases.py).
    for line in (
        "  sessions                      10    visitors                   9",
        "  events                        29    page views                16",
        "  bounce rate               30.0 %    conversion rate       40.0 %",
        "  avg visit duration        96.1 s    views per visit         1.50",
        "  purchases                      4    revenue           200.00 EUR",
    ):
        assert line in out, out
    funnel = re.findall(r"(\d+)   drop-off", out)
    assert funnel == ["9", "6", "3", "1", "1"]
    assert "         2    50.0 %  home > product > checkout > confirmation" in out


def test_json_is_the_dashboard_document(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert analytics_main(["--database-url", database_url, *HOUR, "--json", "--limit", "1"]) == 0
    board = json.loads(capsys.readouterr().out)
    assert board["kpis"]["sessions"] == 10
    assert [step["sessions"] for step in board["funnel"]["steps"]] == [9, 6, 3, 1, 1]
    assert board["conversion_paths"]["paths"] == [
        {"path": "home > product > checkout > confirmation", "sessions": 2, "share": 0.5}
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["--start", "2024-06-01T12:00:00Z"],
        ["--start", "2024-06-01T13:00:00Z", "--end", "2024-06-01T12:00:00Z"],
        ["--start", "2024-06-01T12:00:00", "--end", "2024-06-01T13:00:00Z"],
        ["--minutes", "0"],
        ["--limit", "abc"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        analytics_main(["--database-url", "sqlite:///unused.db", *argv])
    assert exit_.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_database_without_the_schema_exits_3_and_says_what_to_do(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "empty.db").touch()  # a database, without tables
    assert analytics_main(["--database-url", f"sqlite:///{tmp_path / 'empty.db'}"]) == 3
    assert "alembic upgrade head" in caplog.text


def test_a_missing_sqlite_file_exits_2_and_is_not_created(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "typo.db"
    assert analytics_main(["--database-url", f"sqlite:///{missing}"]) == 2
    assert f"no SQLite database at {missing}" in caplog.text
    assert not missing.exists()

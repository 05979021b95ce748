"""The consumer's command line: what --help explains and what it refuses before connecting."""

from __future__ import annotations

from pathlib import Path

import pytest

from clickstream.consume import main


def test_help_explains_the_search_sync_interval(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--search-sync-interval SECONDS" in text
    assert "the session index's refresh interval" in text
    assert "examples:" in text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--search-sync-interval", "0"], "--search-sync-interval must be more than 0"),
        (["--search-sync-interval", "inf"], "and at most 3600 seconds"),
        (["--search-sync-interval", "nan"], "--search-sync-interval must be more than 0"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_bad_values_stop_before_connecting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, flags: list[str], message: str
) -> None:
    # Nothing listens on port 9 (discard): the run would fail differently if it got that far.
    common = ["--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}"]
    common += ["--bootstrap-servers", "127.0.0.1:9", "--no-opensearch"]
    assert main([*common, *flags]) == 2
    assert message in caplog.text
    assert not (tmp_path / "db.sqlite").exists()

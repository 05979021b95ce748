"""``python -m clickstream.search``: help, settings errors and exit codes (no server needed)."""

from __future__ import annotations

import socket

import pytest

from clickstream.search.__main__ import _parser, main


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "CLICKSTREAM_OPENSEARCH_URL",
        "CLICKSTREAM_OPENSEARCH_INDEX_PREFIX",
        "CLICKSTREAM_DASHBOARDS_URL",
        "CLICKSTREAM_STACK_OUTPUTS",
        "CLICKSTREAM_PULUMI_STACK",
    ):
        monkeypatch.delenv(name, raising=False)


def test_help_describes_commands_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in ("setup", "import-dashboards", "prune-sessions", "examples:"):
        assert text in out


@pytest.mark.parametrize(
    "argv",
    [
        ["setup"],
        ["prune-sessions"],
        ["import-dashboards"],
        ["setup", "--opensearch-url", "ftp://host"],
        ["setup", "--opensearch-url", "http://127.0.0.1:9", "--prefix", "Bad Prefix"],
    ],
)
def test_missing_or_bad_settings_exit_2(argv: list[str]) -> None:
    assert main(argv) == 2


def test_bad_numbers_are_usage_errors() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["setup", "--shards", "0"])
    assert exit_info.value.code == 2


def test_unreachable_opensearch_exits_1(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["setup", "--opensearch-url", f"http://user:secret@127.0.0.1:{port}"]) == 1
    assert "unreachable" in caplog.text
    assert "secret" not in caplog.text


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["setup"], "INFO"),
        (["setup", "--log-level", "warning"], "WARNING"),
        (["--log-level", "debug", "setup"], "DEBUG"),
        (["--log-level", "debug", "prune-sessions", "--log-level", "error"], "ERROR"),
    ],
)
def test_log_level_may_come_before_or_after_the_command(argv: list[str], level: str) -> None:
    assert _parser().parse_args(argv).log_level == level

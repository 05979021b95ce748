"""The consumer as a user runs it: flag ranges, settings librdkafka refuses, a schema behind the
code, and signals while it waits for a service at start. No service is needed: nothing listens
on port 9 of the loopback interface (discard), and the database is SQLite."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from clickstream.consume import main
from clickstream.db.migrate import upgrade
from clickstream.db.models import Base

ROOT = Path(__file__).resolve().parents[2]
NOWHERE = "127.0.0.1:9"


@pytest.fixture(autouse=True)
def _no_clickstream_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shell's CLICKSTREAM_* variables (a real stack, stack outputs) must not leak in."""
    for name in list(os.environ):
        if name.startswith("CLICKSTREAM_"):
            monkeypatch.delenv(name)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database with every table of this version."""
    url = f"sqlite:///{tmp_path / 'migrated.sqlite'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    return url


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # 2,000,000 raised a traceback (librdkafka hands out at most 1,000,000 per call); the
        # limit is now 10,000, for the advisory locks a batch holds (docs/consumer.md).
        (["--batch-size", "10001"], "--batch-size must be at least 1 and at most 10000"),
        # 0, negative and NaN logged a progress line on every poll (4 a second); inf never.
        (["--progress-interval", "0"], "--progress-interval must be more than 0"),
        (["--progress-interval", "-1"], "--progress-interval must be more than 0"),
        (["--progress-interval", "nan"], "--progress-interval must be more than 0"),
        (["--progress-interval", "inf"], "and at most 86400 seconds, got inf"),
        # NaN and inf never exited (silently); a negative value was taken as 0.
        (["--exit-when-idle", "nan"], "--exit-when-idle must be at least 0"),
        (["--exit-when-idle", "inf"], "--exit-when-idle must be at least 0"),
        (["--exit-when-idle", "-1"], "--exit-when-idle must be at least 0"),
        # NaN and inf raised a traceback, 0 and huge values a "fatal Kafka error" (status 1),
        # and 3 (below the broker's 6 s) a JoinGroup failure on every poll.
        (["--session-timeout", "nan"], "--session-timeout must be at least 6 and at most 1800"),
        (["--session-timeout", "inf"], "--session-timeout must be at least 6 and at most 1800"),
        (["--session-timeout", "0"], "--session-timeout must be at least 6 and at most 1800"),
        (["--session-timeout", "3"], "--session-timeout must be at least 6 and at most 1800"),
        (["--session-timeout", "1801"], "--session-timeout must be at least 6 and at most 1800"),
        (["--session-timeout", "1e30"], "--session-timeout must be at least 6 and at most 1800"),
    ],
)
def test_out_of_range_flags_stop_before_connecting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, flags: list[str], message: str
) -> None:
    database = tmp_path / "db.sqlite"
    common = ["--database-url", f"sqlite:///{database}", "--bootstrap-servers", NOWHERE]
    assert main([*common, "--no-opensearch", *flags]) == 2
    assert message in caplog.text
    assert not database.exists()  # refused before anything was opened


@pytest.mark.parametrize("value", ["0", "10000"])
def test_the_batch_size_limits_themselves_are_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    # 10,000 passes the flag check and the run gets as far as the empty database.
    (tmp_path / "empty.sqlite").touch()
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    code = main(["--database-url", url, "--bootstrap-servers", NOWHERE, "--batch-size", value])
    assert code == 2
    if value == "0":
        assert "--batch-size must be at least 1" in caplog.text
    else:
        assert "run `alembic upgrade head`" in caplog.text


def test_tls_material_librdkafka_refuses_is_a_configuration_error(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # It used to be a "fatal Kafka error" (status 1), and only after OpenSearch was set up.
    monkeypatch.setenv("CLICKSTREAM_KAFKA_SSL_CA", "not a certificate")
    argv = ["--database-url", sqlite_url, "--bootstrap-servers", NOWHERE, "--no-opensearch"]
    assert main(argv) == 2
    assert "the Kafka client refused its configuration" in caplog.text
    assert "CLICKSTREAM_KAFKA_SSL_" in caplog.text


def test_a_schema_behind_head_asks_for_the_upgrade(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # At the first revision search_outbox is missing: the outbox drain used to fail with a
    # traceback (status 1) once the consumer had started.
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    upgrade(url, "9795b3530028")
    assert main(["--database-url", url, "--bootstrap-servers", NOWHERE, "--no-opensearch"]) == 2
    assert "no table search_outbox" in caplog.text
    assert "run `alembic upgrade head`" in caplog.text


def test_a_missing_column_asks_for_the_upgrade(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE sessions DROP COLUMN city"))
    engine.dispose()
    argv = ["--database-url", sqlite_url, "--bootstrap-servers", NOWHERE, "--no-opensearch"]
    assert main(argv) == 2
    assert "column sessions.city" in caplog.text
    assert "run `alembic upgrade head`" in caplog.text


# --- signals, in a child process -----------------------------------------------------------


class _Child:
    """``python -m clickstream.consume`` with its stderr read line by line in a thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clickstream.consume", *args],
            cwd=ROOT,
            env=_clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        """Wait until a stderr line contains ``text`` (fail if the child exits first)."""
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                pytest.fail(f"exited before logging {text!r}:\n{''.join(self.seen)}")
            self.seen.append(line)
            if text in line:
                return

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        """The exit status and stdout (the child is killed if it does not exit in time)."""
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise
        return self.process.returncode, out

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def child() -> Iterator[list[_Child]]:
    started: list[_Child] = []
    yield started
    for one in started:
        one.kill()


SUMMARY = "consumed 0, stored 0, duplicates 0, dead-lettered 0 (reasons: none)\n"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_waiting_for_the_database_is_a_clean_stop(
    child: list[_Child], signum: signal.Signals
) -> None:
    # It used to log the connection error and exit 2.
    url = "postgresql+psycopg://nobody:secret@127.0.0.1:9/nothing"
    consumer = _Child("--database-url", url, "--bootstrap-servers", NOWHERE, "--no-opensearch")
    child.append(consumer)
    consumer.wait_for("database unavailable")
    consumer.process.send_signal(signum)
    code, out = consumer.finish()
    assert (code, out) == (0, SUMMARY)


def test_kafka_unreachable_at_start_is_waited_for_and_a_signal_stops_cleanly(
    child: list[_Child], sqlite_url: str
) -> None:
    # It used to give up after 15 s with "Kafka did not answer a metadata request" (status 2),
    # deaf to Ctrl-C meanwhile, and without saying what to check.
    consumer = _Child("--database-url", sqlite_url, "--bootstrap-servers", NOWHERE)
    child.append(consumer)
    consumer.wait_for(f"Kafka at {NOWHERE} has not answered")
    assert "CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS" in consumer.seen[-1]
    consumer.process.send_signal(signal.SIGINT)
    code, out = consumer.finish()
    assert (code, out) == (0, SUMMARY)


def test_a_second_signal_exits_at_once_with_130() -> None:
    # The first signal asks for a clean stop; a second one must not be ignored while a batch
    # waits (up to the 120-s statement timeout, or OpenSearch retries).
    script = (
        "import os, signal, time\n"
        "from clickstream.consume import _Stop\n"
        "stop = _Stop()\n"
        "signal.signal(signal.SIGINT, stop)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "while not stop.event.is_set():\n"
        "    time.sleep(0.01)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(60)\n"
        "print('still running')\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=50)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    assert process.returncode == 130
    assert out == ""
    assert "received SIGINT again: exiting at once" in err


def test_help_documents_the_exit_statuses_and_the_second_signal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text_ = " ".join(capsys.readouterr().out.split())
    assert "a second one exits at once with 130" in text_
    assert "0 success, 1 fatal Kafka error, 2 configuration error" in text_

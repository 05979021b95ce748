"""``python -m clickstream.demo`` on its own: Ctrl-C stops every part cleanly, exit status 0.

The demo needs no server: Kafka is librdkafka's in-process mock cluster on a loopback port and
the database is a SQLite file. The browser test (tests/browser/test_demo_page.py) looks at the
dashboard it serves; this one checks the process life cycle.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clickstream.demo import DemoOptions, _banner, main
from clickstream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


def test_ctrl_c_stops_everything_cleanly_and_removes_the_temporary_database(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "CLICKSTREAM_DATABASE_URL": "postgresql://nowhere:1/x"}
    process = subprocess.Popen(
        [sys.executable, "-m", "clickstream.demo", "--port", "0", "--rate", "20", "--seed", "3"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    out: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, out), daemon=True).start()
    printed: list[str] = []
    try:
        while not any("Open http" in line for line in printed):
            line = out.get(timeout=120)
            assert line is not None, f"the demo ended early: {printed} {process.stderr.read()}"
            printed.append(line)
        database = Path(re.search(r"SQLite (\S+)", "".join(printed)).group(1))
        # The CLICKSTREAM_* environment is ignored: the demo embeds its own database.
        assert database.name == "clickstream-demo.db"
        assert database.exists()
        # Let some events through before stopping (a condition, not a timing assertion).
        deadline = time.monotonic() + 60
        while database.stat().st_size < 200_000 and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
        while (line := out.get(timeout=30)) is not None:
            printed.append(line)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read()
    assert "received SIGINT" in stderr
    assert "Traceback" not in stderr
    summary = re.search(
        r"produced ([\d,]+) events \(delivered ([\d,]+)\); the database holds ([\d,]+) events",
        "".join(printed),
    )
    assert summary is not None, printed
    produced, delivered, stored = (int(g.replace(",", "")) for g in summary.groups())
    assert produced == delivered == stored > 0
    assert not database.parent.exists(), "the temporary data folder is removed at exit"


def test_the_command_explains_what_is_embedded(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for words in ("mock Kafka cluster", "SQLite", "PostgreSQL", "--duration", "--backfill"):
        assert words in text


def test_the_banner_keeps_its_columns_apart_for_a_long_database_path() -> None:
    database = Path("/var/data") / ("clickstream-demo-" + "x" * 60) / "clickstream-demo.db"
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9092")
    text = _banner(settings, database, "http://127.0.0.1:8050/", DemoOptions())
    row = next(line for line in text.splitlines() if line.strip().startswith("Database"))
    assert row.split(f"SQLite {database}", 1)[1].startswith("  PostgreSQL (e.g.")
    header = next(line for line in text.splitlines() if "embedded here" in line)
    kafka = next(line for line in text.splitlines() if line.strip().startswith("Kafka"))
    assert header.index("production") == kafka.index("Apache Kafka")  # one column

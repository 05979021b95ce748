"""``python -m clickstream.demo --duration``: the whole embedded pipeline, seen in a browser."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

from sqlalchemy import func, select

from clickstream.db import make_engine
from clickstream.db.models import events_table, sessions_table

ROOT = Path(__file__).resolve().parents[2]


def _lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


def test_the_demo_feeds_a_live_dashboard_and_stops_by_itself(
    page, tmp_path: Path, screenshot
) -> None:
    data_dir = tmp_path / "demo"
    log = (tmp_path / "demo.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "clickstream.demo", "--duration", "30", "--port", "0",
         "--rate", "20", "--refresh", "1", "--seed", "5", "--data-dir", str(data_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    out: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, out), daemon=True).start()
    printed: list[str] = []
    try:
        url = None
        while url is None:
            line = out.get(timeout=120)
            assert line is not None, f"the demo ended early: {printed}"
            printed.append(line)
            match = re.search(r"Open (http://127\.0\.0\.1:\d+/)", line)
            url = match.group(1) if match else None
        banner = "".join(printed)
        assert "librdkafka mock cluster" in banner
        assert "SQLite" in banner
        assert "PostgreSQL" in banner  # what production uses instead

        page.goto(url)
        # Live data: wait until the consumer has stored sessions and the page has refreshed.
        page.wait_for_function(
            """() => {
                const value = (id) =>
                    Number(document.querySelector(`[data-testid=${id}]`).dataset.value || 0);
                return Number(document.body.dataset.renders || 0) >= 4
                    && value('kpi-sessions') > 0 && value('current-visitors') > 0
                    && document.querySelectorAll('[data-testid=map-point]').length > 0;
            }""",
            timeout=60_000,
        )
        assert "mock cluster" in page.inner_text("[data-testid=banner]")
        # One response feeds every figure: the chart adds up to the tiles (minute-aligned range).
        chart = page.locator("[data-testid=traffic-chart]")
        kpi = page.locator("[data-testid=kpi-page-views]")
        assert chart.get_attribute("data-total-page-views") == kpi.get_attribute("data-value")
        first_step = page.locator("[data-testid=funnel-step]").first.get_attribute("data-sessions")
        sessions = page.locator("[data-testid=kpi-sessions]").get_attribute("data-value")
        assert 0 < int(first_step) <= int(sessions)
        screenshot(page, "demo")
        page.goto("about:blank")  # stop refreshing: the server goes away with the demo

        assert process.wait(timeout=120) == 0
        while (line := out.get(timeout=30)) is not None:
            printed.append(line)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    summary = re.search(
        r"produced ([\d,]+) events \(delivered ([\d,]+)\); the database holds ([\d,]+) events",
        "".join(printed),
    )
    assert summary is not None, printed
    produced, delivered, stored = (int(g.replace(",", "")) for g in summary.groups())
    assert produced == delivered == stored > 0
    engine = make_engine(f"sqlite:///{data_dir / 'clickstream-demo.db'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(events_table)).scalar() == stored
            assert conn.execute(select(func.count()).select_from(sessions_table)).scalar() > 0
    finally:
        engine.dispose()

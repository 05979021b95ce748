"""One-shot commands against a hung server: a stop is honoured and a long wait is reported.

A hung server keeps its connections open and answers nothing (a stopped process, a silent
network path); no driver timeout fires on the client's side. Before these fixes,
``clickstream.topics`` and ``clickstream.dead_letters`` waited for Kafka inside librdkafka with
SIGINT held until the request timed out (then a traceback) and SIGTERM killed them without a
word; ``clickstream.db.retention`` waited for PostgreSQL in silence for as long as it hung; a
dashboard request waited, unanswered, until the server came back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from sqlalchemy.engine import make_url

from clickstream.dashboard.server import DashboardApp, Response
from clickstream.db import make_engine
from tests.support import ROOT, blackout, kill_hard, wait_until


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSTREAM_")}
    return env | {f"CLICKSTREAM_{name.upper()}": value for name, value in settings.items()}


def _start(module: str, *args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=env,
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def _stop(process: subprocess.Popen[bytes], signum: int, log: Path) -> tuple[int, str]:
    process.send_signal(signum)
    try:
        code = process.wait(60)  # a liveness bound: before the fix SIGINT waited for the server
    except subprocess.TimeoutExpired:
        kill_hard(process)
        raise
    return code, log.read_text(errors="replace")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("module", ["clickstream.topics", "clickstream.dead_letters"])
def test_a_kafka_command_reports_a_hung_broker_and_stops_on_a_signal(
    stack, tmp_path: Path, module: str, signum: int
) -> None:
    host, _, port = stack.kafka_bootstrap.rpartition(":")
    name = f"hung-{uuid.uuid4().hex[:12]}"  # never created: the hang holds every request
    log = tmp_path / "command.log"
    with blackout(host, int(port)) as proxy:
        proxy.hang()
        env = _env(
            kafka_bootstrap_servers=f"127.0.0.1:{proxy.port}", topic=name, dlq_topic=name + ".dlq"
        )
        process = _start(module, "--timeout", "600", env=env, log=log)
        try:
            wait_until(
                lambda: "has not answered a metadata request" in log.read_text(errors="replace"),
                timeout=60,
                what="the line saying that Kafka is awaited",
            )
            code, output = _stop(process, signum, log)
        finally:
            if process.poll() is None:
                kill_hard(process)
    assert code == 130, output[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]


def test_search_setup_reports_a_hung_node_and_stops_on_a_signal(
    stack, opensearch_index_prefix: str, tmp_path: Path
) -> None:
    url = urlsplit(stack.opensearch_url)
    log = tmp_path / "search.log"
    with blackout(url.hostname or "", url.port or 0) as proxy:
        proxy.hang()
        env = _env(
            opensearch_url=f"http://127.0.0.1:{proxy.port}",
            opensearch_index_prefix=opensearch_index_prefix,
        )
        process = _start("clickstream.search", "setup", env=env, log=log)
        try:
            # Reported after 10 s; the client's own timeout (30 s) has not yet failed it.
            wait_until(
                lambda: "to finish the setup; still waiting" in log.read_text(errors="replace"),
                timeout=25,
                what="the line saying that OpenSearch is awaited",
            )
            code, output = _stop(process, signal.SIGTERM, log)
        finally:
            if process.poll() is None:
                kill_hard(process)
    assert code == 130, output[-3000:]
    assert "stopped by SIGTERM" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]


def _through(proxy_port: int, url: str) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy_port).render_as_string(False)


def test_retention_reports_a_hung_database_and_stops_on_a_signal(
    migrated_database_url: str, tmp_path: Path
) -> None:
    real = make_url(migrated_database_url)
    libpq = real.set(drivername="postgresql").render_as_string(hide_password=False)
    log = tmp_path / "retention.log"
    with psycopg.connect(libpq) as locker, blackout(real.host or "", real.port or 0) as proxy:
        # The purge's first statement waits behind this lock; then the server "hangs".
        locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        url = _through(proxy.port, migrated_database_url)
        process = _start(
            "clickstream.db.retention", "--older-than", "1d", env=_env(database_url=url), log=log
        )
        try:
            wait_until(
                lambda: "purging data older than" in log.read_text(errors="replace"),
                timeout=60,
                what="the purge to start",
            )
            proxy.hang()
            wait_until(
                lambda: "waited " in log.read_text(errors="replace"),
                timeout=60,
                what="the line saying that the database is awaited",
            )
            code, output = _stop(process, signal.SIGINT, log)
        finally:
            if process.poll() is None:
                kill_hard(process)
            proxy.resume()
            locker.rollback()
    assert code == 130, output[-3000:]
    assert "for the database to answer (a batch of events); still waiting" in output, output
    assert "retention stopped by SIGINT" in output, output
    assert "Traceback" not in output, output


def test_a_dashboard_request_is_answered_503_while_the_database_hangs(
    migrated_database_url: str,
) -> None:
    real = make_url(migrated_database_url)
    with blackout(real.host or "", real.port or 0) as proxy:
        engine = make_engine(_through(proxy.port, migrated_database_url))
        app = DashboardApp(engine, query_timeout=1.0)
        try:
            assert app.respond("GET", "/api/kpis?minutes=5").status is HTTPStatus.OK
            proxy.hang()
            answers: list[Response] = []
            asking = threading.Thread(
                target=lambda: answers.append(app.respond("GET", "/api/kpis?minutes=5"))
            )
            asking.start()
            asking.join(60)  # a liveness bound: before the fix the request waited for the server
            assert answers, "the request was not answered while the database hung"
            assert answers[0].status is HTTPStatus.SERVICE_UNAVAILABLE
            assert b"did not answer within 1 s" in answers[0].body
        finally:
            proxy.resume()
            engine.dispose()

"""The pure parts of the local stack: configuration, rendered files, readiness, CLI parsing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devstack.__main__ import _environment_hint, build_parser, config_from_args, main
from devstack.config import StackConfig, config_from_env, env_command, env_exports
from devstack.kafka import BrokerConfig, TlsListener, broker_argv, render_server_properties
from devstack.opensearch import node_argv
from devstack.postgres import find_bindir, render_hba, render_server_conf
from devstack.process import is_running, read_pid, stop_pid, write_pid
from devstack.readiness import ReadinessPolicy, StartupError, Verdict, judge, wait_until_ready
from devstack.stack import make_services


def _properties(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_defaults_are_the_documented_ports():
    config = config_from_env({})
    assert (config.kafka_port, config.kafka_controller_port) == (19092, 19093)
    assert (config.postgres_port, config.opensearch_port) == (15432, 19200)
    assert config.home.name == ".local"
    assert (config.heap, config.opensearch_heap) == ("512m", "2g")


def test_env_exports_point_at_the_stack():
    assert env_exports(StackConfig(home=Path("/x"))) == [
        "export CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092",
        "export CLICKSTREAM_DATABASE_URL="
        "postgresql+psycopg://clickstream:clickstream@127.0.0.1:15432/clickstream",
        "export CLICKSTREAM_OPENSEARCH_URL=http://127.0.0.1:19200",
    ]


def test_environment_then_overrides():
    env = {
        "CLICKSTREAM_DEVSTACK_KAFKA_PORT": "29092",
        "CLICKSTREAM_DEVSTACK_POSTGRES_PORT": "25432",
        "CLICKSTREAM_DEVSTACK_HOME": "/srv/stack",
        "CLICKSTREAM_DEVSTACK_HEAP": "256m",
        "CLICKSTREAM_DEVSTACK_OPENSEARCH_HEAP": "1g",
    }
    config = config_from_env(env, overrides={"postgres_port": 35432, "opensearch_port": None})
    assert config.kafka_port == 29092
    assert config.postgres_port == 35432
    assert config.opensearch_port == 19200
    assert config.home == Path("/srv/stack")
    assert config.heap == "256m"
    assert config.opensearch_heap == "1g"
    assert config.database_url("other").endswith("@127.0.0.1:35432/other")


@pytest.mark.parametrize("raw", ["abc", "0", "70000"])
def test_bad_port_is_named(raw):
    with pytest.raises(ValueError, match="CLICKSTREAM_DEVSTACK_KAFKA_PORT"):
        config_from_env({"CLICKSTREAM_DEVSTACK_KAFKA_PORT": raw})


def test_ports_must_be_distinct():
    with pytest.raises(ValueError, match="distinct"):
        config_from_env({"CLICKSTREAM_DEVSTACK_OPENSEARCH_PORT": "19092"})


def test_password_is_quoted_in_the_url():
    url = StackConfig(postgres_password="p@ss/word").database_url()
    assert url.startswith("postgresql+psycopg://clickstream:p%40ss%2Fword@")


def test_plaintext_broker_properties():
    config = BrokerConfig(data_dir=Path("/d"), port=1111, controller_port=2222)
    props = _properties(render_server_properties(config))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:1111,CONTROLLER://127.0.0.1:2222"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:1111"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:2222"
    assert props["process.roles"] == "broker,controller"
    assert props["auto.create.topics.enable"] == "false"
    assert props["log.dirs"] == "/d/kraft-logs"
    assert not any(key.startswith("ssl.") for key in props)


def test_tls_broker_properties_and_overrides():
    tls = TlsListener(
        keystore_path=Path("/k.p12"),
        truststore_path=Path("/t.p12"),
        keystore_password="ks",
        truststore_password="ts",
    )
    config = BrokerConfig(
        data_dir=Path("/d"),
        port=1111,
        controller_port=2222,
        tls=tls,
        extra_properties={"num.partitions": "6", "ssl.principal.mapping.rules": "RULE:a\\b"},
    )
    props = _properties(render_server_properties(config))
    assert props["listeners"] == "SSL://127.0.0.1:1111,CONTROLLER://127.0.0.1:2222"
    assert props["listener.security.protocol.map"] == "SSL:SSL,CONTROLLER:PLAINTEXT"
    assert props["inter.broker.listener.name"] == "SSL"
    assert props["ssl.client.auth"] == "required"
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PKCS12"
    assert props["ssl.keystore.password"] == "ks"
    assert "ssl.key.password" not in props
    assert props["num.partitions"] == "6"
    # java.util.Properties reads "\\" back as one backslash.
    assert props["ssl.principal.mapping.rules"] == "RULE:a\\\\b"


def test_broker_command_line():
    config = BrokerConfig(data_dir=Path("/d"), port=1, controller_port=2, heap="300m", java="j")
    argv = broker_argv(config, Path("/libs"))
    assert argv[0] == "j"
    assert "-Xmx300m" in argv
    assert argv[-4:] == ["-cp", "/libs/*", "kafka.Kafka", "/d/server.properties"]


def test_opensearch_command_line():
    argv = node_argv(
        java="j",
        heap="512m",
        home=Path("/h"),
        libs=Path("/h/libs"),
        classes=Path("/h/classes"),
        http_port=19200,
        transport_port=19300,
    )
    assert argv[0] == "j"
    assert {"-Xms512m", "-Xmx512m"} <= set(argv)
    assert argv[-6:] == [
        "-cp",
        "/h/libs/*:/h/classes",
        "EmbeddedOpenSearch",
        "/h",
        "19200",
        "19300",
    ]


def test_postgres_files():
    conf = render_server_conf(port=15432, socket_dir=Path("/s"))
    assert "listen_addresses = '127.0.0.1'" in conf
    assert "port = 15432" in conf
    assert "unix_socket_directories = '/s'" in conf
    rules = [line.split() for line in render_hba().splitlines() if not line.startswith("#")]
    assert ["local", "all", "all", "trust"] in rules
    assert ["host", "all", "all", "127.0.0.1/32", "scram-sha-256"] in rules
    assert len(rules) == 2  # nothing beyond loopback and the socket


def test_find_bindir_prefers_the_newest_version():
    candidates = [
        Path("/usr/lib/postgresql/9.6/bin/pg_ctl"),
        Path("/usr/lib/postgresql/16/bin/pg_ctl"),
        Path("/usr/lib/postgresql/15/bin/pg_ctl"),
    ]
    assert find_bindir(candidates, None) == Path("/usr/lib/postgresql/16/bin")
    assert find_bindir([], None) is None


@pytest.mark.parametrize(
    ("ready", "alive", "elapsed", "expected"),
    [
        (True, True, 0.0, Verdict.READY),
        (True, False, 99.0, Verdict.READY),
        (False, False, 0.0, Verdict.DIED),
        (False, True, 9.9, Verdict.WAIT),
        (False, True, 10.0, Verdict.TIMED_OUT),
    ],
)
def test_judge(ready, alive, elapsed, expected):
    policy = ReadinessPolicy(timeout_s=10.0)
    assert judge(ready=ready, alive=alive, elapsed_s=elapsed, policy=policy) is expected


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_until_ready_returns_after_probes_succeed():
    clock = _FakeClock()
    answers = iter([False, False, True])
    waited = wait_until_ready(
        "svc",
        probe=lambda: next(answers),
        alive=lambda: True,
        policy=ReadinessPolicy(timeout_s=10, interval_s=1),
        log_path=Path("/l.log"),
        clock=clock,
        sleep=clock.sleep,
    )
    assert waited == 2.0


def test_wait_until_ready_timeout_names_the_log():
    clock = _FakeClock()
    with pytest.raises(StartupError, match=r"not ready after 3 s; see its log: /l\.log"):
        wait_until_ready(
            "svc",
            probe=lambda: False,
            alive=lambda: True,
            policy=ReadinessPolicy(timeout_s=3, interval_s=1),
            log_path=Path("/l.log"),
            clock=clock,
            sleep=clock.sleep,
        )


def test_wait_until_ready_stops_when_the_process_dies():
    clock = _FakeClock()
    with pytest.raises(StartupError, match="exited during startup"):
        wait_until_ready(
            "svc",
            probe=lambda: False,
            alive=lambda: False,
            policy=ReadinessPolicy(timeout_s=60),
            log_path=Path("/l.log"),
            clock=clock,
            sleep=clock.sleep,
        )
    # two consecutive "not alive" readings, one polling interval apart
    assert clock.now == ReadinessPolicy(timeout_s=60).interval_s


def test_wait_until_ready_survives_one_transient_dead_reading():
    clock = _FakeClock()
    readings = iter([False, True, True])
    waited = wait_until_ready(
        "svc",
        probe=lambda: clock.now >= 2 * ReadinessPolicy(timeout_s=60).interval_s,
        alive=lambda: next(readings, True),
        policy=ReadinessPolicy(timeout_s=60),
        log_path=Path("/l.log"),
        clock=clock,
        sleep=clock.sleep,
    )
    assert waited == 2 * ReadinessPolicy(timeout_s=60).interval_s


def test_parser_accepts_services_and_port_flags():
    args = build_parser().parse_args(["up", "kafka", "postgres", "--kafka-port", "29092"])
    assert (args.command, args.services) == ("up", ["kafka", "postgres"])
    assert config_from_args(args, {}).kafka_port == 29092


def test_env_command_prints_exports(capsys):
    assert main(["env", "--opensearch-port", "29200"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "export CLICKSTREAM_OPENSEARCH_URL=http://127.0.0.1:29200"


def test_unknown_service_is_rejected():
    with pytest.raises(ValueError, match="unknown service"):
        make_services(StackConfig(), ["kafka", "redis"])


def test_pid_files_and_stopping_a_process(tmp_path):
    marker = f"import time; time.sleep(60)  # {tmp_path}"
    proc = subprocess.Popen([sys.executable, "-c", marker])
    try:
        write_pid(tmp_path / "x.pid", proc.pid)
        pid = read_pid(tmp_path / "x.pid")
        assert pid == proc.pid
        assert is_running(pid, marker=str(tmp_path))
        assert not is_running(pid, marker="some other command line")
        assert stop_pid(proc.pid, marker=str(tmp_path), timeout_s=10) is True
        proc.wait(timeout=10)
        assert not is_running(proc.pid, marker=str(tmp_path))
    finally:
        proc.kill()
        proc.wait()
    assert read_pid(tmp_path / "missing.pid") is None


def test_env_command_is_plain_with_the_default_application_ports():
    # The controller and transport ports and the home are not in the exports.
    config = config_from_env(
        {"CLICKSTREAM_DEVSTACK_KAFKA_CONTROLLER_PORT": "29093"},
        overrides={"home": "/elsewhere", "opensearch_transport_port": 29300},
    )
    assert env_command(config) == ("python -m devstack env", [])


def test_env_command_carries_ports_from_flags_and_from_the_environment(capsys, monkeypatch):
    # As `up --kafka-port 29092` with CLICKSTREAM_DEVSTACK_OPENSEARCH_PORT=29200 set.
    args = build_parser().parse_args(["up", "--kafka-port", "29092"])
    config = config_from_args(args, {"CLICKSTREAM_DEVSTACK_OPENSEARCH_PORT": "29200"})
    command, ports = env_command(config)
    assert command == "python -m devstack env --kafka-port 29092 --opensearch-port 29200"
    assert ports == ["Kafka 29092", "OpenSearch 29200"]
    # The hint's command prints the exports of those ports in a shell without the variable.
    monkeypatch.delenv("CLICKSTREAM_DEVSTACK_OPENSEARCH_PORT", raising=False)
    monkeypatch.delenv("CLICKSTREAM_DEVSTACK_KAFKA_PORT", raising=False)
    monkeypatch.delenv("CLICKSTREAM_DEVSTACK_POSTGRES_PORT", raising=False)
    assert main(command.split()[3:]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "export CLICKSTREAM_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:29092",
        "export CLICKSTREAM_DATABASE_URL="
        "postgresql+psycopg://clickstream:clickstream@127.0.0.1:15432/clickstream",
        "export CLICKSTREAM_OPENSEARCH_URL=http://127.0.0.1:29200",
    ]


def test_up_hint_names_the_ports_the_application_must_use():
    config = config_from_env({}, overrides={"postgres_port": 25432})
    assert _environment_hint(config) == (
        "non-default ports (PostgreSQL 25432): point the application at them with "
        'eval "$(python -m devstack env --postgres-port 25432)"'
    )
    assert _environment_hint(StackConfig()) == 'environment: eval "$(python -m devstack env)"'

"""One Kafka 4.x node (KRaft broker + controller) run from jars collected off Maven Central."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import re
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from devstack import maven
from devstack.config import HOST, default_home
from devstack.process import is_running, port_open, spawn, stop_pid
from devstack.readiness import ReadinessPolicy, StartupError, wait_until_ready

__all__ = [
    "KAFKA_POM",
    "BrokerConfig",
    "RunningBroker",
    "TlsListener",
    "broker_argv",
    "ensure_libs",
    "format_storage",
    "launch",
    "libs_dir",
    "log_says_started",
    "render_server_properties",
    "start_broker",
]

logger = logging.getLogger(__name__)

KAFKA_POM = Path(__file__).with_name("pom.xml")
_LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
_STARTED = re.compile(r"Kafka Server started")


def libs_dir(home: Path) -> Path:
    """Return where the broker jars live inside the stack home."""
    return home / "kafka" / "libs"


def ensure_libs(home: Path) -> Path:
    """Collect the broker jars into ``home`` (downloads on first use) and return their folder."""
    dest = libs_dir(home)
    maven.copy_dependencies(KAFKA_POM, dest, label="kafka")
    return dest


@dataclass(frozen=True)
class TlsListener:
    """Make the client listener ``SSL`` (mutual TLS by default) instead of ``PLAINTEXT``.

    ``store_type`` applies to both stores. ``PKCS12``/``JKS`` stores need passwords. With ``PEM``,
    ``keystore_path`` is one file holding the PKCS#8 private key followed by the certificate chain
    (``key_password`` only if that key is encrypted; then it must be), and ``truststore_path`` is a
    file of CA certificates. The server certificate should name ``IP:127.0.0.1`` in its
    subjectAltName, because the broker verifies that host name when it connects to itself.
    """

    keystore_path: Path
    truststore_path: Path
    store_type: Literal["PKCS12", "JKS", "PEM"] = "PKCS12"
    keystore_password: str | None = None
    truststore_password: str | None = None
    key_password: str | None = None
    client_auth: Literal["required", "requested", "none"] = "required"


@dataclass(frozen=True)
class BrokerConfig:
    """A single-node KRaft cluster listening on 127.0.0.1.

    Attributes:
        data_dir: holds ``server.properties``, the KRaft log dirs and ``broker.log``.
        port: the client listener (PLAINTEXT, or SSL when ``tls`` is set).
        controller_port: the KRaft controller listener (always PLAINTEXT, loopback only).
        tls: make the client listener SSL with these stores.
        heap: JVM ``-Xmx``.
        java: the ``java`` executable (Java 17 or newer).
        home: the stack home whose ``kafka/libs`` holds the jars (downloaded if missing).
        extra_properties: more ``server.properties`` entries; they override the defaults.
    """

    data_dir: Path
    port: int
    controller_port: int
    tls: TlsListener | None = None
    heap: str = "512m"
    java: str = "java"
    home: Path = dataclasses.field(default_factory=default_home)
    extra_properties: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def properties_path(self) -> Path:
        """Where the rendered ``server.properties`` is written."""
        return self.data_dir / "server.properties"

    @property
    def log_path(self) -> Path:
        """The broker's stdout/stderr (its log4j output)."""
        return self.data_dir / "broker.log"

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the client listener."""
        return f"{HOST}:{self.port}"


def _escape(value: str) -> str:
    # java.util.Properties treats backslash as an escape and a newline as the end of the value.
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def render_server_properties(config: BrokerConfig) -> str:
    """Render ``server.properties`` for ``config`` (pure).

    One node is both broker and controller with a static voter list, so storage is formatted
    without ``--standalone``. Topics are never auto-created: the application creates its own.
    """
    listener = "SSL" if config.tls else "PLAINTEXT"
    props: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{config.controller_port}",
        "listeners": f"{listener}://{HOST}:{config.port},CONTROLLER://{HOST}:{config.controller_port}",
        "advertised.listeners": f"{listener}://{HOST}:{config.port}",
        "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": listener,
        "log.dirs": str(config.data_dir / "kraft-logs"),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        "log.retention.hours": "168",
        "log.segment.bytes": str(64 * 1024 * 1024),
    }
    if config.tls is not None:
        tls = config.tls
        props |= {
            "ssl.keystore.type": tls.store_type,
            "ssl.keystore.location": str(tls.keystore_path),
            "ssl.truststore.type": tls.store_type,
            "ssl.truststore.location": str(tls.truststore_path),
            "ssl.client.auth": tls.client_auth,
        }
        optional = {
            "ssl.keystore.password": tls.keystore_password,
            "ssl.truststore.password": tls.truststore_password,
            "ssl.key.password": tls.key_password,
        }
        props |= {key: value for key, value in optional.items() if value is not None}
    props |= dict(config.extra_properties)
    lines = ["# Rendered by devstack; edits are overwritten on the next start."]
    lines += [f"{key}={_escape(value)}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def _java_opts(config: BrokerConfig) -> list[str]:
    return [
        "-Xms128m",
        f"-Xmx{config.heap}",
        "-XX:+UseSerialGC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile=file:{_LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={config.data_dir}",
    ]


def broker_argv(config: BrokerConfig, libs: Path) -> list[str]:
    """Return the command line that runs the broker (pure)."""
    return [
        config.java,
        *_java_opts(config),
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(config.properties_path),
    ]


def _new_cluster_id() -> str:
    # Kafka's Uuid text form: URL-safe base64 of 16 random bytes without padding.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not text.startswith("-"):
            return text


def format_storage(config: BrokerConfig, libs: Path) -> None:
    """Write ``server.properties`` and format the KRaft log dir unless already formatted.

    Raises:
        StartupError: ``kafka.tools.StorageTool format`` failed; its output is in the message.
    """
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.properties_path.write_text(render_server_properties(config), encoding="utf-8")
    if (config.data_dir / "kraft-logs" / "meta.properties").exists():
        return
    argv = [
        config.java,
        "-Xmx256m",
        f"-Dlog4j2.configurationFile=file:{_LOG4J_CONFIG}",
        "-cp",
        f"{libs}/*",
        "kafka.tools.StorageTool",
        "format",
        "--cluster-id",
        _new_cluster_id(),
        "--config",
        str(config.properties_path),
        "--ignore-formatted",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StartupError(
            f"formatting Kafka storage in {config.data_dir} failed:\n{result.stdout}{result.stderr}"
        )
    logger.info("kafka: formatted KRaft storage in %s", config.data_dir / "kraft-logs")


def launch(config: BrokerConfig) -> subprocess.Popen[bytes]:
    """Install jars if needed, format storage, and start the broker without waiting for it."""
    libs = ensure_libs(config.home)
    format_storage(config, libs)
    return spawn(broker_argv(config, libs), log_path=config.log_path, cwd=config.data_dir)


def log_says_started(log_path: Path) -> bool:
    """Tell whether the broker log contains Kafka's "Kafka Server started" line."""
    try:
        return bool(_STARTED.search(log_path.read_text(encoding="utf-8", errors="replace")))
    except OSError:
        return False


@dataclass
class RunningBroker:
    """A broker started by :func:`start_broker`; stop it with :meth:`stop` or a ``with`` block."""

    config: BrokerConfig
    process: subprocess.Popen[bytes]

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the client listener."""
        return self.config.bootstrap

    @property
    def pid(self) -> int:
        """Process id of the broker JVM."""
        return self.process.pid

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop gracefully (SIGTERM), kill after ``timeout_s``; safe to call twice."""
        if self.process.poll() is None:
            stop_pid(self.process.pid, marker=None, timeout_s=timeout_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_broker(config: BrokerConfig, *, timeout_s: float = 90.0) -> RunningBroker:
    """Start an extra broker and wait until it is ready.

    Ready means the log says "Kafka Server started" and the client port accepts TCP; this needs
    no client credentials, so it works for mutual-TLS listeners too. The broker is a child of
    the calling process; stop it with :meth:`RunningBroker.stop`.

    Raises:
        StartupError: the broker exited or was not ready in time (the message names its log).
    """
    if port_open(HOST, config.port) or port_open(HOST, config.controller_port):
        raise StartupError(
            f"port {config.port} or {config.controller_port} on {HOST} is already in use"
        )
    process = launch(config)
    broker = RunningBroker(config=config, process=process)
    try:
        wait_until_ready(
            f"Kafka broker on {config.bootstrap}",
            probe=lambda: log_says_started(config.log_path) and port_open(HOST, config.port),
            alive=lambda: process.poll() is None and is_running(process.pid),
            policy=ReadinessPolicy(timeout_s=timeout_s),
            log_path=config.log_path,
        )
    except BaseException:
        broker.stop()
        raise
    return broker

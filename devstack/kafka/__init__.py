"""Kafka 4.x for the local stack, and extra brokers for tests.

The broker is assembled from Maven Central: ``pom.xml`` beside this module names
``org.apache.kafka:kafka_2.13`` and the SLF4J 1.7 -> log4j2 binding (``log4j-slf4j-impl``) that
Kafka's runtime POM leaves out; ``mvn dependency:copy-dependencies -DincludeScope=runtime`` copies
the jars into ``.local/kafka/libs``. One JVM (``kafka.Kafka``) is both broker and KRaft controller
(static voter list), its storage is formatted on first start, and topics are never auto-created.

The stack's broker (``python -m devstack up``) has a PLAINTEXT listener on 127.0.0.1:19092 and its
controller on 19093. Tests that need another broker, for instance one with a mutual-TLS listener,
start their own::

    from devstack.kafka import BrokerConfig, TlsListener, start_broker
    from devstack.process import free_tcp_port

    config = BrokerConfig(
        data_dir=tmp_path / "broker",
        port=free_tcp_port(),
        controller_port=free_tcp_port(),
        tls=TlsListener(
            keystore_path=tmp_path / "server.p12",   # or store_type="PEM": key + chain in one file
            truststore_path=tmp_path / "ca.p12",
            keystore_password="secret",
            truststore_password="secret",
            key_password="secret",
        ),
    )
    with start_broker(config) as broker:   # waits until ready; raises StartupError otherwise
        ...  # clients use broker.bootstrap with security.protocol=SSL and a client certificate

``start_broker`` reuses the stack's jars (downloading them on first use), runs the broker as a
child process and returns a :class:`RunningBroker` whose ``stop()`` (or the ``with`` block) ends it
and waits for it. The server certificate should carry ``IP:127.0.0.1`` as a subjectAltName.
"""

from __future__ import annotations

import contextlib
import logging

from devstack.config import HOST, StackConfig
from devstack.kafka.broker import (
    KAFKA_POM,
    BrokerConfig,
    RunningBroker,
    TlsListener,
    broker_argv,
    ensure_libs,
    format_storage,
    launch,
    libs_dir,
    render_server_properties,
    start_broker,
)
from devstack.process import is_running, port_open, read_pid, stop_pid, write_pid

__all__ = [
    "KAFKA_POM",
    "BrokerConfig",
    "KafkaService",
    "RunningBroker",
    "TlsListener",
    "broker_argv",
    "ensure_libs",
    "format_storage",
    "libs_dir",
    "render_server_properties",
    "start_broker",
]

logger = logging.getLogger(__name__)


class KafkaService:
    """The stack's PLAINTEXT broker, found again through ``.local/kafka/kafka.pid``."""

    name = "kafka"
    startup_timeout_s = 120.0

    def __init__(self, config: StackConfig) -> None:
        """Describe the broker of ``config`` (nothing is started)."""
        self.config = config
        self.broker = BrokerConfig(
            data_dir=config.home / "kafka",
            port=config.kafka_port,
            controller_port=config.kafka_controller_port,
            heap=config.heap,
            java=config.java,
            home=config.home,
        )
        self.log_path = self.broker.log_path
        self._pid_path = self.broker.data_dir / "kafka.pid"
        # The properties path is unique to this stack home, so a recycled pid is not mistaken
        # for our broker.
        self._marker = str(self.broker.properties_path)

    def install(self) -> None:
        """Collect the broker jars (first run downloads ~45 MB)."""
        ensure_libs(self.config.home)

    def start(self) -> None:
        """Format storage if new and start the broker in the background."""
        process = launch(self.broker)
        write_pid(self._pid_path, process.pid)

    def pid(self) -> int | None:
        """Return the broker's pid when it is running."""
        pid = read_pid(self._pid_path)
        return pid if is_running(pid, marker=self._marker) else None

    def port_taken(self) -> bool:
        """Tell whether 127.0.0.1:<kafka port> accepts connections."""
        return port_open(HOST, self.config.kafka_port)

    def probe(self) -> bool:
        """Ask the broker for cluster metadata with an admin client; True when it answers."""
        if not self.port_taken():
            return False
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415 - keep CLI start fast

        admin = AdminClient({"bootstrap.servers": self.broker.bootstrap, "log_level": 0})
        try:
            metadata = admin.list_topics(timeout=3)
        except Exception:  # any failure just means "not ready yet"
            return False
        return bool(metadata.brokers)

    def stop(self, *, timeout_s: float) -> bool:
        """Stop the broker (controlled shutdown on SIGTERM) and remove its pid file."""
        pid = read_pid(self._pid_path)
        gone = pid is None or stop_pid(pid, marker=self._marker, timeout_s=timeout_s)
        if gone:
            with contextlib.suppress(FileNotFoundError):
                self._pid_path.unlink()
        return gone

    def endpoint(self) -> str:
        """Bootstrap servers of the PLAINTEXT listener."""
        return self.broker.bootstrap

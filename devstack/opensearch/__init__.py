"""OpenSearch 2.19 for the local stack: one node in one JVM, modules on the classpath.

Why an in-process launcher and not the distribution: Maven Central serves the 2.19 integ-test
zip, but it holds only the ``transport-netty4`` module, so it lacks ``geo`` (geotile_grid and
geohash_grid aggregations for maps), ``analysis-common`` (a ``lowercase`` normalizer for keyword
fields), ``lang-painless`` and ``mapper-extras``; grafting those into its ``modules/`` folder
means hand-written plugin descriptors and jar-hell checks. The distribution also refuses to run as
root (CI runs as root) and installs a SecurityManager. The plugin jars themselves are on Maven
Central, so ``pom.xml`` beside this module puts ``org.opensearch:opensearch``, those modules and
``org.opensearch.test:framework`` on one classpath, and ``EmbeddedOpenSearch.java`` starts
``org.opensearch.node.MockNode`` with the plugin classes. With no mock marker plugins present that
is a real node: real Netty HTTP, real Lucene indices on disk. It skips Bootstrap (no root check,
no SecurityManager, no jar hell) and needs Java 17..21 (2.x; Java 24 removed the SecurityManager
API it still references). Security is absent: HTTP on 127.0.0.1 without TLS or auth.

Known difference from a packaged node: classpath plugins get no ``extendedPlugins``, so Painless
scripts cannot call analysis-specific whitelisted APIs. Index State Management (a separate plugin)
is not included.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from devstack import maven
from devstack.config import HOST, StackConfig
from devstack.process import (
    is_running,
    port_open,
    read_pid,
    spawn,
    stop_pid,
    write_pid,
)
from devstack.readiness import StartupError

__all__ = ["OPENSEARCH_POM", "OpenSearchService", "node_argv"]

logger = logging.getLogger(__name__)

OPENSEARCH_POM = Path(__file__).with_name("pom.xml")
_LAUNCHER = Path(__file__).with_name("EmbeddedOpenSearch.java")
_LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
_MAIN_CLASS = "EmbeddedOpenSearch"


def node_argv(
    *,
    java: str,
    heap: str,
    home: Path,
    libs: Path,
    classes: Path,
    http_port: int,
    transport_port: int,
) -> list[str]:
    """Return the command line that runs the node (pure)."""
    return [
        java,
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-XX:+UseSerialGC",
        "-Djava.awt.headless=true",
        "-Dfile.encoding=UTF-8",
        f"-Dlog4j2.configurationFile=file:{_LOG4J_CONFIG}",
        # Netty and Lucene look for these; the packaged jvm.options sets them too.
        "-Dio.netty.noUnsafe=true",
        "-Dio.netty.recycler.maxCapacityPerThread=0",
        f"-Djava.io.tmpdir={home / 'tmp'}",
        "-cp",
        f"{libs}/*:{classes}",
        _MAIN_CLASS,
        str(home),
        str(http_port),
        str(transport_port),
    ]


class OpenSearchService:
    """The stack's OpenSearch node in ``.local/opensearch``."""

    name = "opensearch"
    startup_timeout_s = 240.0

    def __init__(self, config: StackConfig) -> None:
        """Describe the node of ``config`` (nothing is started)."""
        self.config = config
        self.home = config.home / "opensearch"
        self.libs = self.home / "libs"
        self.classes = self.home / "classes"
        self.log_path = self.home / "opensearch.log"
        self._pid_path = self.home / "opensearch.pid"
        self._marker = f"{_MAIN_CLASS} {self.home} "

    def _compile_launcher(self) -> None:
        digest = hashlib.sha256(_LAUNCHER.read_bytes()).hexdigest()
        stamp = self.classes / ".devstack-stamp"
        with contextlib.suppress(OSError):
            if stamp.read_text(encoding="ascii").strip() == digest:
                return
        java = shutil.which(self.config.java)
        javac = Path(java).resolve().parent / "javac" if java else None
        if javac is None or not javac.exists():
            raise StartupError(f"no javac next to {self.config.java!r}; install a JDK 17")
        if self.classes.exists():
            shutil.rmtree(self.classes)
        self.classes.mkdir(parents=True)
        result = subprocess.run(
            [str(javac), "-cp", f"{self.libs}/*", "-d", str(self.classes), str(_LAUNCHER)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StartupError(
                f"compiling {_LAUNCHER.name} failed:\n{result.stdout}{result.stderr}"
            )
        stamp.write_text(digest + "\n", encoding="ascii")

    def install(self) -> None:
        """Collect the node's jars (first run downloads ~70 MB) and compile the launcher."""
        maven.copy_dependencies(OPENSEARCH_POM, self.libs, label="opensearch")
        self._compile_launcher()

    def start(self) -> None:
        """Start the node in the background."""
        (self.home / "tmp").mkdir(parents=True, exist_ok=True)
        argv = node_argv(
            java=self.config.java,
            heap=self.config.opensearch_heap,
            home=self.home,
            libs=self.libs,
            classes=self.classes,
            http_port=self.config.opensearch_port,
            transport_port=self.config.opensearch_transport_port,
        )
        process = spawn(argv, log_path=self.log_path, cwd=self.home)
        write_pid(self._pid_path, process.pid)

    def pid(self) -> int | None:
        """Return the node's pid when it is running."""
        pid = read_pid(self._pid_path)
        return pid if is_running(pid, marker=self._marker) else None

    def port_taken(self) -> bool:
        """Tell whether 127.0.0.1:<opensearch port> accepts connections."""
        return port_open(HOST, self.config.opensearch_port)

    def probe(self) -> bool:
        """Tell whether ``_cluster/health`` reports green or yellow."""
        if not self.port_taken():
            return False
        url = f"{self.config.opensearch_url}/_cluster/health"
        try:
            with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - loopback http
                health = json.load(response)
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return health.get("status") in {"green", "yellow"}

    def stop(self, *, timeout_s: float) -> bool:
        """Stop the node (its shutdown hook closes it cleanly) and remove the pid file."""
        pid = read_pid(self._pid_path)
        gone = pid is None or stop_pid(pid, marker=self._marker, timeout_s=timeout_s)
        if gone:
            with contextlib.suppress(FileNotFoundError):
                self._pid_path.unlink()
        return gone

    def endpoint(self) -> str:
        """Base URL of the HTTP API."""
        return self.config.opensearch_url

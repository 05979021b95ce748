"""Collect runtime jars from Maven Central with the ``mvn`` client (``~/.m2`` is the cache)."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
from pathlib import Path

__all__ = ["MavenError", "copy_dependencies", "is_current", "stamp_for"]

logger = logging.getLogger(__name__)

_STAMP = ".devstack-stamp"
_DOWNLOADED = re.compile(r"Downloaded from \S+: (?P<url>\S+) \((?P<size>[^)]*)\)")


class MavenError(RuntimeError):
    """``mvn`` failed; the message carries the tail of its output."""


def stamp_for(pom: Path) -> str:
    """Return a fingerprint of ``pom``: jars copied from another POM version are stale."""
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def is_current(pom: Path, dest: Path) -> bool:
    """Tell whether ``dest`` holds a complete copy made from this exact ``pom``."""
    try:
        return (dest / _STAMP).read_text(encoding="ascii").strip() == stamp_for(pom)
    except OSError:
        return False


def copy_dependencies(pom: Path, dest: Path, *, label: str) -> None:
    """Copy the runtime dependencies of ``pom`` into ``dest`` unless already there.

    Idempotent: a stamp file records the POM the jars came from; a changed POM or an interrupted
    copy starts over. Logs one progress line per downloaded jar (first runs download ~100 MB).

    Raises:
        MavenError: ``mvn`` is missing or failed (for example, Maven Central is unreachable).
    """
    if is_current(pom, dest):
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise MavenError("`mvn` is not on PATH; install Maven (Debian: apt-get install -y maven)")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    logger.info("%s: collecting jars from Maven Central into %s", label, dest)
    argv = [
        mvn,
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={dest}",
    ]
    recent: list[str] = []
    downloads = 0
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None  # noqa: S101 - stdout=PIPE guarantees it
        for line in proc.stdout:
            recent = [*recent[-39:], line.rstrip()]
            match = _DOWNLOADED.search(line)
            if match and match["url"].endswith(".jar"):
                downloads += 1
                logger.info(
                    "%s: downloaded %s (%s)", label, match["url"].rsplit("/", 1)[-1], match["size"]
                )
        code = proc.wait()
    if code != 0:
        detail = "\n".join(recent)
        raise MavenError(f"{label}: `mvn dependency:copy-dependencies` failed ({code}):\n{detail}")
    jars = len(list(dest.glob("*.jar")))
    logger.info("%s: %d jars ready (%d downloaded this run)", label, jars, downloads)
    (dest / _STAMP).write_text(stamp_for(pom) + "\n", encoding="ascii")

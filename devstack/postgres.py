"""PostgreSQL for the local stack: a project-owned cluster from the Debian packages.

The cluster lives in ``.local/postgres`` (data, socket and log), listens on 127.0.0.1:15432 and is
started and stopped with ``pg_ctl``; the machine's own clusters (``pg_ctlcluster``) are not
touched. PostgreSQL refuses to run as root, so as root every server tool runs as the ``postgres``
OS user (``runuser``), which owns the folder. Local socket connections are trusted (the socket
directory is private to the server's user); TCP clients authenticate with a password
(scram-sha-256) as the project role, which owns the ``clickstream`` database and may create more
(the test fixtures create one database per test).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from devstack.config import HOST, StackConfig
from devstack.process import as_user, is_running, port_open, read_pid, stop_pid
from devstack.readiness import StartupError

__all__ = [
    "PostgresService",
    "find_bindir",
    "render_hba",
    "render_server_conf",
]

logger = logging.getLogger(__name__)

_SERVER_USER = "postgres"
_SUPERUSER = "postgres"


def render_server_conf(*, port: int, socket_dir: Path) -> str:
    """Render the settings devstack owns (included from ``postgresql.conf``; pure)."""
    return "\n".join(
        [
            "# Rendered by devstack on every start; edits are overwritten.",
            f"listen_addresses = '{HOST}'",
            f"port = {port}",
            f"unix_socket_directories = '{socket_dir}'",
            "max_connections = 200",
            "shared_buffers = 128MB",
            "password_encryption = 'scram-sha-256'",
            "timezone = 'UTC'",
            "log_timezone = 'UTC'",
            # A throwaway development cluster: trade crash safety for fast test setup.
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "",
        ]
    )


def render_hba() -> str:
    """Render ``pg_hba.conf``: trusted local socket, password over TCP on loopback (pure)."""
    return "\n".join(
        [
            "# Rendered by devstack on every start; edits are overwritten.",
            "# TYPE  DATABASE  USER  ADDRESS        METHOD",
            "local   all       all                  trust",
            f"host    all       all   {HOST}/32   scram-sha-256",
            "",
        ]
    )


def _version_key(path: Path) -> tuple[int, ...]:
    digits = re.findall(r"\d+", path.parent.parent.name)
    return tuple(int(d) for d in digits)


def find_bindir(candidates: Iterable[Path], on_path: str | None) -> Path | None:
    """Pick the newest PostgreSQL bin folder among ``candidates`` (``.../<ver>/bin/pg_ctl``).

    Falls back to the folder of ``on_path`` (a ``pg_ctl`` found on PATH). Pure.
    """
    found = sorted(candidates, key=_version_key, reverse=True)
    if found:
        return found[0].parent
    if on_path:
        return Path(on_path).resolve().parent
    return None


def _installed_bindir() -> Path | None:
    return find_bindir(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), shutil.which("pg_ctl"))


def _apt_install() -> None:
    logger.info("postgres: not installed; running apt-get update && apt-get install -y postgresql")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "postgresql"]):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StartupError(
                f"`{' '.join(argv)}` failed:\n{result.stdout[-2000:]}{result.stderr}"
            )
        logger.info("postgres: `%s` done", " ".join(argv))


class PostgresService:
    """The stack's PostgreSQL cluster in ``.local/postgres``."""

    name = "postgres"
    startup_timeout_s = 60.0

    def __init__(self, config: StackConfig) -> None:
        """Describe the cluster of ``config`` (nothing is started)."""
        self.config = config
        self.root = config.home / "postgres"
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "run"
        self.log_path = self.root / "postgres.log"
        self._bindir: Path | None = None
        self._user = _SERVER_USER if os.geteuid() == 0 else None

    def _bin(self, tool: str) -> str:
        if self._bindir is None:
            self._bindir = _installed_bindir()
        if self._bindir is None:
            raise StartupError(
                "PostgreSQL is not installed (Debian: apt-get install -y postgresql); "
                "run `python -m devstack up` as root to install it"
            )
        return str(self._bindir / tool)

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            as_user(self._user, argv), capture_output=True, text=True, check=False, cwd="/"
        )

    def _give_to_server_user(self, *paths: Path) -> None:
        if self._user is None:
            return
        entry = pwd.getpwnam(self._user)
        for path in paths:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def install(self) -> None:
        """Install the Debian packages if missing (as root) and create the cluster once."""
        if _installed_bindir() is None:
            if os.geteuid() != 0:
                self._bin("pg_ctl")  # raises the "not installed" error
            _apt_install()
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self._give_to_server_user(self.root, self.socket_dir)
        # The server user must be able to reach the folder through every parent.
        if self._user is not None and self._run(["test", "-w", str(self.root)]).returncode != 0:
            raise StartupError(
                f"the {self._user!r} OS user cannot write {self.root}; make its parent folders "
                "traversable (chmod o+x) or set CLICKSTREAM_DEVSTACK_HOME elsewhere"
            )
        if not (self.data_dir / "PG_VERSION").exists():
            logger.info("postgres: creating a cluster in %s", self.data_dir)
            result = self._run(
                [
                    self._bin("initdb"),
                    "--pgdata",
                    str(self.data_dir),
                    "--username",
                    _SUPERUSER,
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C",
                ]
            )
            if result.returncode != 0:
                raise StartupError(f"initdb failed:\n{result.stdout}{result.stderr}")
            with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
                conf.write("\ninclude_if_exists = 'devstack.conf'\n")

    def _write_config(self) -> None:
        conf = self.data_dir / "devstack.conf"
        hba = self.data_dir / "pg_hba.conf"
        conf.write_text(
            render_server_conf(port=self.config.postgres_port, socket_dir=self.socket_dir),
            encoding="utf-8",
        )
        hba.write_text(render_hba(), encoding="utf-8")
        self._give_to_server_user(conf, hba)

    def start(self) -> None:
        """Render the config and start the server with ``pg_ctl`` (without waiting)."""
        self._write_config()
        if self.log_path.exists():
            self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        argv = [self._bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path), "-W"]
        result = self._run([*argv, "start"])
        if result.returncode != 0:
            raise StartupError(
                f"pg_ctl start failed; see {self.log_path}:\n{result.stdout}{result.stderr}"
            )

    def pid(self) -> int | None:
        """Return the postmaster pid when this cluster's server is running."""
        pid = read_pid(self.data_dir / "postmaster.pid")
        return pid if is_running(pid, marker=str(self.data_dir)) else None

    def port_taken(self) -> bool:
        """Tell whether 127.0.0.1:<postgres port> accepts connections."""
        return port_open(HOST, self.config.postgres_port)

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        # The superuser over the private socket: the project role may not exist yet.
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.config.postgres_port,
            user=_SUPERUSER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=3,
        )

    def probe(self) -> bool:
        """Tell whether the server accepts connections on its socket and on TCP."""
        if not self.port_taken():
            return False
        try:
            with self._connect() as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def prepare(self) -> None:
        """Create (or reset the password of) the project role and create its database.

        Idempotent; runs after every ``up``. The role may create databases (test fixtures do)
        and signal other backends, so ``DROP DATABASE ... WITH (FORCE)`` can end an autovacuum
        worker that happens to be in a test database.
        """
        user = self.config.postgres_user
        database = self.config.postgres_database
        with self._connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
            verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
            conn.execute(
                sql.SQL("{} ROLE {} WITH LOGIN CREATEDB PASSWORD {}").format(
                    verb, sql.Identifier(user), sql.Literal(self.config.postgres_password)
                )
            )
            conn.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(user)))
            has_db = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if not has_db:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(user)
                    )
                )
                logger.info("postgres: created database %s owned by %s", database, user)

    def stop(self, *, timeout_s: float) -> bool:
        """Stop with ``pg_ctl stop -m fast``; kill the postmaster if that does not work."""
        pid = self.pid()
        if pid is None:
            return True
        timeout = str(max(1, int(timeout_s)))
        self._run(
            [self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-t", timeout, "stop"]
        )
        gone = stop_pid(pid, marker=str(self.data_dir), timeout_s=5.0)
        if gone:
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / "postmaster.pid").unlink()
        return gone

    def endpoint(self) -> str:
        """SQLAlchemy URL of the project database."""
        return self.config.database_url()

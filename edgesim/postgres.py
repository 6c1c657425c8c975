"""A throwaway PostgreSQL server on loopback, from Debian's ``postgresql`` package, for a hub's store.

Used by the tests (``tests/conftest.py``) the way ``edgesim.fleet.Mosquitto``
is: the real server binaries, a data directory of its own, a free port on
127.0.0.1, trust authentication (nothing but this machine can reach it).
PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` system user the package creates, on a directory that user owns.

Synchronous and blocking: it drives another process and is never imported by
the product.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from .net import free_port

logger = logging.getLogger(__name__)

NOT_INSTALLED = "PostgreSQL not installed (Debian package postgresql)"
# Bounds on the server's own steps: initdb writes a few MB, start and stop take about a second.
INITDB_TIMEOUT_SECONDS = 120.0
START_TIMEOUT_SECONDS = 30
# The account the server runs as when we are root (PostgreSQL refuses root).
SERVER_USER = "postgres"
# Superuser of the throwaway cluster.
SUPERUSER = "postgres"


class PostgresNotInstalled(RuntimeError):
    pass


def find_bin_dir() -> Path | None:
    """The newest installed ``/usr/lib/postgresql/VERSION/bin`` with initdb, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) if x.isdigit() else x for x in Path(p).parts[-3].split(".")])
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """``initdb`` and ``pg_ctl start`` in a fresh directory; ``stop`` removes it all again."""

    def __init__(self) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise PostgresNotInstalled(NOT_INSTALLED)
        self.bin_dir = bin_dir
        self.port = 0
        self.root: Path | None = None
        self._as_user: list[str] = []

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
        command = [*self._as_user, *argv]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            log = self.log_tail()
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{log}")
        return done

    def log_tail(self, lines: int = 30) -> str:
        if self.root is None or not (self.root / "server.log").is_file():
            return ""
        return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> PostgresServer:
        # Not under pytest's tmp dirs: those are 0700 and root's, and the server's user must reach its files.
        self.root = Path(tempfile.mkdtemp(prefix="edgecollab-postgres-"))
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", SERVER_USER, "--"]
        data = self.root / "data"
        self._run(str(self.bin_dir / "initdb"), "-D", str(data), "--auth=trust", f"--username={SUPERUSER}",
                  "--encoding=UTF8", "--no-sync", timeout=INITDB_TIMEOUT_SECONDS)
        # A free port can be taken between asking and binding: try a few.
        for attempt in range(3):
            self.port = free_port()
            # fsync off: the server's data is thrown away after the tests, and syncing makes them slow.
            options = f"-k {self.root} -h 127.0.0.1 -p {self.port} -c fsync=off -c full_page_writes=off"
            try:
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(data), "-l", str(self.root / "server.log"),
                          "-w", "-t", str(START_TIMEOUT_SECONDS), "-o", options, "start",
                          timeout=START_TIMEOUT_SECONDS + 10)
                logger.info("PostgreSQL %s on 127.0.0.1:%d (data in %s)", self.bin_dir.parent.name, self.port, data)
                return self
            except RuntimeError:
                if attempt == 2:
                    self.stop()
                    raise
                logger.warning("PostgreSQL did not start on port %d (attempt #%d/3); trying another port",
                               self.port, attempt + 1)
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.root is None:
            return
        data = self.root / "data"
        if (data / "postmaster.pid").exists():
            try:
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                          "-t", str(START_TIMEOUT_SECONDS), "stop", timeout=START_TIMEOUT_SECONDS + 10)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                logger.warning("PostgreSQL did not stop cleanly: %s", exc)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def create_database(self) -> str:
        """A new empty database with a unique name; returns its URL."""
        import psycopg

        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

"""A real, throw-away PostgreSQL cluster for tests (the Debian ``postgresql`` package; no mocks).

Usage::

    with PgServer(tmp_dir) as pg:           # initdb + pg_ctl start on a free loopback port
        url = pg.create_database()          # postgresql://edge@127.0.0.1:PORT/t_<random>, fresh and empty
        ...
        pg.stop(); pg.start()               # same port and data (e.g. "Postgres gone mid-run")

Fixtures (imported into ``tests/conftest.py``): ``pg_server`` (one cluster per session) and
``pg_url`` (a fresh database per test). They skip when PostgreSQL is not installed (``make install``
adds it). As root the cluster runs as the ``postgres`` user (``runuser``) in a directory it owns.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from edge_seg.demo.broker import free_port

PG_BIN = next((Path(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
               if (Path(p) / "initdb").exists()), None) if Path("/usr/lib/postgresql").is_dir() else None
USER = "edge"


def _as_owner(cmd: list[str]) -> list[str]:
    """Run ``cmd`` as ``postgres`` when we are root (initdb refuses root)."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PgServer:
    """One PostgreSQL cluster in a temporary directory, listening on 127.0.0.1:``port``."""

    def __init__(self, directory: str | os.PathLike | None = None):
        if PG_BIN is None:
            pytest.skip("PostgreSQL not installed (make install adds the postgresql Debian package)")
        self.directory = Path(directory or tempfile.mkdtemp(prefix="edge-seg-pg-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self.data = self.directory / "data"
        self.port = free_port()
        self.host = "127.0.0.1"
        self.running = False
        subprocess.run(_as_owner([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", USER,
                                  "--no-sync"]), check=True, capture_output=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@{self.host}:{self.port}/{database}"

    def start(self, attempts: int = 3) -> PgServer:
        """Start on ``port``; when another process took that port meanwhile, on a new free one."""
        for attempt in range(attempts):
            try:
                return self._start()
            except subprocess.CalledProcessError:
                if attempt == attempts - 1 or "could not create" not in self.log()[-2000:]:
                    raise RuntimeError(f"PostgreSQL did not start: {self.log()[-1500:]}") from None
                self.port = free_port()
        return self

    def _start(self) -> PgServer:
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses={self.host} -c fsync=off "
                   "-c full_page_writes=off -c max_connections=200")  # synchronous_commit stays on: acks follow commits
        subprocess.run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                                  str(self.directory / "server.log"), "-w", "-t", "30", "start"]),
                       check=True, capture_output=True)
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate`` is a crash: no shutdown checkpoint)."""
        if self.running:
            subprocess.run(_as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]),
                           capture_output=True)
            self.running = False

    def create_database(self, name: str | None = None) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL cluster for the whole session (stopped at the end)."""
    with PgServer() as server:
        yield server


@pytest.fixture
def pg_url(pg_server):
    """A fresh empty database on the session's cluster (restarted first if a test stopped it)."""
    if not pg_server.running:
        pg_server.start()
    return pg_server.create_database()

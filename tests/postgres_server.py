"""A throwaway PostgreSQL cluster on 127.0.0.1 for the store tests, and their fixtures.

CDS_TEST_POSTGRES_URL points at a running server (.ci/run starts one); else the
first test that needs PostgreSQL starts a cluster of its own with the binaries on
this machine (initdb into a temp dir; as the `postgres` user when run as root,
since PostgreSQL refuses to run as root), and it is stopped by pid when the test
session ends. Without the binaries the PostgreSQL tests skip, naming what is
missing; under CI=true they fail instead.

Each test gets a schema of its own (search_path set in the URL's options),
dropped after it.

    python tests/postgres_server.py PORT [--dir EMPTY_DIR]   # a cluster in the foreground (.ci/run)
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from cds_service.hooks.store import DatabaseUrl, close_databases

from netutil import free_port  # tests/ is on sys.path: as a script and under pytest

RUN_AS = "postgres"  # the user the cluster runs as when we are root


def binaries() -> Path | None:
    """The folder holding initdb and postgres: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found:
        folder = Path(os.path.realpath(found)).parent
        if (folder / "postgres").exists():
            return folder
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def missing_reason() -> str | None:
    if binaries() is None:
        return "PostgreSQL server binaries (initdb, postgres) not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"running as root and there is no '{RUN_AS}' user to run PostgreSQL as"
    return None


def _user() -> pwd.struct_passwd | None:
    return pwd.getpwnam(RUN_AS) if os.geteuid() == 0 else None


class PostgresServer:
    """initdb into a fresh temp dir, postgres on 127.0.0.1:port (trust auth, loopback
    only, its socket in the temp dir); stop() ends it by pid and removes the dir."""

    def __init__(self, port: int | None = None, folder: Path | None = None):
        self.port = port or free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.dir = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="cds-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.proc: subprocess.Popen | None = None
        self.start_seconds = 0.0

    def _as_user(self) -> dict:
        user = _user()
        return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def init(self) -> None:
        user = _user()
        if user is not None:
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        result = subprocess.run([str(binaries() / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                                 "-E", "UTF8", "--no-instructions"], capture_output=True, text=True,
                                cwd=self.dir, **self._as_user())
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr[-2000:]}")

    def command(self) -> list[str]:
        return [str(binaries() / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                "-c", "max_connections=200"]

    def start(self, timeout: float = 120.0) -> "PostgresServer":
        import psycopg

        started = time.monotonic()
        self.init()
        log = open(self.log, "wb")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                                     start_new_session=True, **self._as_user())
        log.close()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                self.start_seconds = time.monotonic() - started
                return self
            except psycopg.OperationalError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"postgres did not accept connections within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: sessions are ended, the cluster is dropped anyway
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- fixtures

_server: list[str] = []  # the session's base URL, once known


def base_url(config: pytest.Config) -> str:
    """CDS_TEST_POSTGRES_URL, or a cluster started once for the whole test session."""
    if os.environ.get("CDS_TEST_POSTGRES_URL"):
        return os.environ["CDS_TEST_POSTGRES_URL"]
    if not _server:
        reason = missing_reason()
        if reason:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{reason}: .ci/run must install PostgreSQL and set CDS_TEST_POSTGRES_URL")
            pytest.skip(reason)
        server = PostgresServer().start()
        config.add_cleanup(server.stop)
        _server.append(server.url)
    return _server[0]


def with_search_path(url: str, schema: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query) + [("options", f"-c search_path={schema}")]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote)))


@pytest.fixture
def postgres_url(request):
    """A postgresql:// URL whose tables land in a fresh schema, dropped after the test."""
    import psycopg

    base = base_url(request.config)
    schema = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield with_search_path(base, schema)
    close_databases()
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """Where a Store keeps its records, once per back end: a SQLite file, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path / "cds.sqlite3"
    return DatabaseUrl(request.getfixturevalue("postgres_url"), local_dir=tmp_path)


def terminate_sessions(url: str) -> None:
    """The database drops every other session (a restart, a failover, an idle timeout)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                      "AND datname = current_database() AND backend_type = 'client backend'")


@contextmanager
def table_locked(url: str, table: str):
    """Another session holds the table: statements on it wait (a database that does not answer)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as admin, admin.transaction():
        admin.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield


def main() -> None:
    """`python tests/postgres_server.py PORT [--dir EMPTY_DIR]`: a fresh cluster in the foreground, its
    data in EMPTY_DIR (default a new temp dir), for .ci/run, which stops it by this process's pid
    (after exec it is postgres itself) and removes the folder."""
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--dir", type=Path, help="an empty folder for the cluster (default: a new temp dir)")
    args = parser.parse_args()
    if missing_reason():
        raise SystemExit(missing_reason())
    server = PostgresServer(args.port, args.dir)
    server.init()
    user = _user()
    if user is not None:
        os.setgid(user.pw_gid)
        os.setgroups([])
        os.setuid(user.pw_uid)
    command = server.command()
    os.chdir(server.dir)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()

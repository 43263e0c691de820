"""A throwaway PostgreSQL server for benchmarks: ``initdb`` and ``pg_ctl`` in a temporary
folder, on a free loopback port, gone when the block ends.

The same recipe as the test suite's ``postgres_url`` fixture (``tests/conftest.py``): the
server binaries of Debian's ``postgresql`` package (on the PATH or under
``/usr/lib/postgresql/<version>/bin``), password authentication, and, when run as root, the
``postgres`` user (PostgreSQL refuses to run as root).

    with throwaway_postgres(databases=["mlflow"]) as urls:
        urls["postgres"], urls["mlflow"]   # postgresql+psycopg2://plateau:...@127.0.0.1:<port>/<db>
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

PASSWORD = "s3cr3t-Pa55"
USER = "plateau"


def server_binary(name: str) -> str:
    """The path of PostgreSQL's ``name`` (``initdb``, ``pg_ctl``); exits with one line when
    the server is not installed."""
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if found is None:
        raise SystemExit(f"{name} not found: install Debian's postgresql package "
                         "(apt-get install postgresql)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def throwaway_postgres(databases: Sequence[str] = ()) -> Iterator[dict[str, str]]:
    """Start a fresh server; yield the SQLAlchemy URL of each database by name.

    ``postgres`` always exists; each name of ``databases`` is created empty. The server is
    stopped (``-m immediate``) and its folder removed when the block ends, whatever happens.
    """
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="plateau-pg-"))
    (home / "pw").write_text(PASSWORD)
    if as_user:
        shutil.chown(home, "postgres")
        shutil.chown(home / "pw", "postgres")
    data, port = home / "data", free_port()
    try:
        subprocess.run([*as_user, server_binary("initdb"), "-D", str(data), "-U", USER,
                        f"--pwfile={home / 'pw'}", "--auth=scram-sha-256"],
                       check=True, capture_output=True)
        subprocess.run([*as_user, server_binary("pg_ctl"), "-D", str(data), "-l",
                        str(home / "log"), "-w", "-o",
                        f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True)
        base = f"postgresql+psycopg2://{USER}:{PASSWORD}@127.0.0.1:{port}"
        _create_databases(f"{base}/postgres", databases)
        yield {name: f"{base}/{name}" for name in ("postgres", *databases)}
    finally:
        if data.exists():
            subprocess.run([*as_user, server_binary("pg_ctl"), "-D", str(data), "-m",
                            "immediate", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def _create_databases(url: str, names: Sequence[str]) -> None:
    if not names:
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")  # no DDL transaction
    try:
        with engine.connect() as connection:
            for name in names:
                connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()

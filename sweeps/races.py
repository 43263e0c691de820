"""Workers that start together race to create the stores they share.

Several ``python sweep.py -m`` processes started at once against a new sqlite study or MLflow
database all try to create its tables and run its schema migrations; the losers fail with an
integrity, "database is locked" or alembic error, and a migration interrupted that way can
leave the file half-migrated. :func:`creating_sqlite` makes the processes take turns on a
sqlite file's first use; :func:`retrying` runs a first use on a server (PostgreSQL, an MLflow
tracking server) again after a short, jittered pause, when it failed on another worker's
first use or on a server busy a moment (never on a wrong password).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 5

#: Words of the errors worth another try: a store another worker is creating or migrating at
#: the same moment (SQLAlchemy's, psycopg2's, sqlite's, alembic's and MLflow's wording), or a
#: server that refuses connections a moment (restarting, at its connection limit).
TRANSIENT = ("database is locked", "database table is locked", "already exists",
             "duplicate key", "unique constraint", "deadlock detected", "could not serialize",
             "can't locate revision", "connection refused", "server closed the connection",
             "connection reset", "too many connections", "the database system is starting up",
             "temporarily unavailable", "timed out")
#: Words of errors no retry mends, even where a transient word appears too.
PERMANENT = ("authentication failed", "password", "permission denied", "access denied",
             "not authorized", "unauthorized", "forbidden")


def transient(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) is one of :data:`TRANSIENT`, and
    none of :data:`PERMANENT`: a wrong password or a missing grant fails at once."""
    texts: list[str] = []
    seen: BaseException | None = err
    while seen is not None and len(texts) < 10:
        texts.append(f"{type(seen).__name__}: {seen}".lower())
        seen = seen.__cause__ or seen.__context__
    text = " ".join(texts)
    return (any(word in text for word in TRANSIENT)
            and not any(word in text for word in PERMANENT))


def retrying(what: str, action: Callable[[], T], attempts: int = ATTEMPTS) -> T:
    """``action()``, tried up to ``attempts`` times while it fails with a :func:`transient`
    error; any other error, and the last failure, propagates."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as err:
            if attempt == attempts or not transient(err):
                raise
            pause = 0.2 * attempt * (1.0 + random.random())
            log.debug("%s failed (%s: %s); retrying in %.1f s", what, type(err).__name__,
                      err, pause)
            time.sleep(pause)
    raise AssertionError("unreachable")


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (SQLAlchemy's form, used by Optuna and MLflow)."""
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


@contextlib.contextmanager
def creating_sqlite(url: str) -> Iterator[None]:
    """Hold an exclusive lock on the sqlite file of ``url`` (nothing for other URLs).

    Opening a store inside it creates or migrates its tables while other processes wait: the
    first creates them, the next ones find them complete. The lock is ``flock`` on the
    database file itself, which on a local disk does not interfere with sqlite's own
    ``fcntl`` locks, so no lock file is left beside it.

    A new database is made whole or not at all: pysqlite commits each table and migration
    step on its own, so a process killed while creating one (SIGKILL, the OOM killer) would
    leave it half-migrated for good ("duplicate column name"). While the block creates it, a
    ``.<name>.creating`` mark lies beside it; the next process that finds the mark empties
    the file (nobody used it: every opener waits here first) and creates it again.
    """
    path = sqlite_file(url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    mark = path.with_name(f".{path.name}.creating")
    with open(path, "ab") as handle:  # an empty file is a new database to sqlite
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if mark.exists():  # its creator died half-way
                log.warning("%s was left half-created by a killed process: created again",
                            path)
                os.truncate(path, 0)  # in place: the lock stays on this file
                for leftover in (f"{path}-journal", f"{path}-wal", f"{path}-shm"):
                    Path(leftover).unlink(missing_ok=True)
            new = path.stat().st_size == 0
            if new:
                mark.touch()
            yield
            if new:
                mark.unlink()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

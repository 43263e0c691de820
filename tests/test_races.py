"""Which first-use errors are retried: another worker's concurrent creation, a server busy a
moment; never a wrong password or a missing grant."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import IntegrityError, OperationalError

from conftest import ROOT
from sweeps.races import creating_sqlite, retrying, transient


def chained(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as err:
            raise outer from err
    except Exception as err:  # noqa: BLE001 -- the chain is the point
        return err


@pytest.mark.parametrize(("error", "retried"), [
    (OperationalError("x", {}, sqlite3.OperationalError("database is locked")), True),
    (IntegrityError("x", {}, Exception('duplicate key value violates unique constraint '
                                       '"pg_type_typname_nsp_index"')), True),
    (RuntimeError('relation "studies" already exists'), True),
    (OperationalError("x", {}, Exception("connection to server at 127.0.0.1 failed: "
                                         "Connection refused")), True),
    (chained(RuntimeError("MLflow store"), OSError("the database system is starting up")), True),
    (OperationalError("x", {}, Exception('FATAL: password authentication failed for user '
                                         '"plateau"')), False),
    (OperationalError("x", {}, Exception("permission denied for schema public")), False),
    (ValueError("invalid literal for int()"), False),
    (KeyError("no such study"), False),
], ids=["sqlite-locked", "pg-duplicate-type", "table-exists", "refused", "chained-startup",
        "bad-password", "no-grant", "value-error", "key-error"])
def test_transient_errors_are_the_retried_ones(error: Exception, retried: bool) -> None:
    assert transient(error) is retried


def test_retrying_gives_up_at_once_on_an_error_no_retry_mends() -> None:
    calls: list[int] = []

    def connect() -> None:
        calls.append(1)
        raise OperationalError("x", {}, Exception("password authentication failed"))

    with pytest.raises(OperationalError):
        retrying("connecting", connect)
    assert len(calls) == 1


def test_retrying_retries_a_lock_until_it_clears() -> None:
    calls: list[int] = []

    def create() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("x", {}, sqlite3.OperationalError("database is locked"))
        return "created"

    assert retrying("creating", create) == "created"
    assert len(calls) == 3


#: Creates part of a new sqlite store inside ``creating_sqlite``, then is SIGKILLed there.
KILLED_MID_CREATION = """
import os, signal, sqlite3, sys
from sweeps.races import creating_sqlite
with creating_sqlite("sqlite:///" + sys.argv[1]):
    db = sqlite3.connect(sys.argv[1])
    db.execute("CREATE TABLE metrics (key VARCHAR(250), step BIGINT)")
    db.commit()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_store_half_created_by_a_killed_process_is_created_again(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_CREATION, str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    url = f"sqlite:///{path}"
    with creating_sqlite(url):
        client = MlflowClient(url)
    experiment = client.create_experiment("after-the-kill")
    assert client.get_experiment(experiment).name == "after-the-kill"
    assert not (tmp_path / ".mlflow.db.creating").exists()

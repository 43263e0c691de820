"""Workers taking queued trials from one sqlite study never take the same one twice.

Optuna takes a queued trial by reading that it still waits and then marking it running,
under ``SELECT ... FOR UPDATE``, which sqlite ignores. Each taker here widens the gap between
that read and that write (a pause after the read), as a busy machine does: without plateau's
lock two workers take the same trial; with it (what the sweeper does) none do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from conftest import ROOT

TAKER = """
import contextlib, json, sys, time
import optuna
from optuna.storages._rdb import models
from sweeps import ending
from sweeps.storage import open_storage

read = models.TrialModel.find_or_raise_by_id.__func__
def slow_read(cls, *args, **kwargs):
    found = read(cls, *args, **kwargs)
    time.sleep(0.02)  # the gap between Optuna's read and its write, widened
    return found
models.TrialModel.find_or_raise_by_id = classmethod(slow_read)

optuna.logging.set_verbosity(optuna.logging.ERROR)
url, count, locked = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "locked"
study = optuna.load_study(study_name="queue", storage=open_storage(url))
taken = []
for _ in range(count):
    with ending.taking_trial(study) if locked else contextlib.nullcontext():
        trial = study.ask()
    taken.append(trial.suggest_int("x", 0, 10_000))
print(json.dumps(taken))
"""

WORKERS, EACH = 3, 10


def _take(tmp_path: Path, how: str) -> list[int]:
    url = f"sqlite:///{tmp_path / how}.db"
    study = optuna.create_study(study_name="queue", storage=url)
    for x in range(WORKERS * EACH):
        study.enqueue_trial({"x": x})
    workers = [subprocess.Popen([sys.executable, "-c", TAKER, url, str(EACH), how],
                                cwd=ROOT, stdout=subprocess.PIPE, text=True)
               for _ in range(WORKERS)]
    taken = []
    for worker in workers:
        out, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0
        taken += json.loads(out)
    return taken


@pytest.mark.slow
def test_no_queued_trial_is_taken_twice_under_the_lock(tmp_path: Path) -> None:
    taken = _take(tmp_path, "locked")
    assert sorted(taken) == list(range(WORKERS * EACH))


@pytest.mark.slow
def test_without_the_lock_the_race_is_real(tmp_path: Path) -> None:
    """The same takers without the lock: the check above is not vacuous."""
    taken = _take(tmp_path, "unlocked")
    assert len(set(taken)) < len(taken)

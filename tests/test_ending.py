"""Ending a trial exactly once: abandoning, withdrawing, re-launch bounds, and several worker
processes recovering the same stale trials at once on each storage a cluster would use."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from conftest import ROOT
from sweeps import ending, ledger, liveness
from sweeps.storage import open_storage

FREEZE = CategoricalDistribution(["none", "depth", "all"])


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    return optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}",
                               direction="maximize")


def test_abandon_fails_the_trial_uncounted_and_queues_its_params(study: optuna.Study) -> None:
    trial = study.ask()
    ledger.suggest(trial, "freeze", FREEZE)
    assert ending.abandon(study, ledger.trial_id(trial))
    cut, queued = study.get_trials()
    assert cut.state == TrialState.FAIL
    assert cut.user_attrs[ledger.ATTR_INTERRUPTED]
    assert not ledger.is_finished(cut)
    assert queued.state == TrialState.WAITING
    assert ledger.queued_params(queued) == cut.params


def test_withdraw_queues_only_params_taken_from_the_queue(study: optuna.Study) -> None:
    study.enqueue_trial({"freeze": "depth"})
    from_queue, fresh = study.ask(), study.ask()
    assert ending.withdraw(study, ledger.trial_id(from_queue))
    assert ending.withdraw(study, ledger.trial_id(fresh))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]
    assert not any(ledger.claims_budget(t) for t in trials[:2])
    assert ledger.queued_params(trials[2]) == {"freeze": "depth"}


def test_ending_an_ended_trial_writes_nothing_and_queues_nothing(study: optuna.Study) -> None:
    trial = study.ask()
    ledger.suggest(trial, "freeze", FREEZE)
    assert ending.complete(study, ledger.trial_id(trial), 0.5)
    assert not ending.abandon(study, ledger.trial_id(trial), "killed by SIGKILL")
    assert not ending.fail(study, ledger.trial_id(trial), "late error")
    (done,) = study.get_trials()
    assert done.state == TrialState.COMPLETE
    assert ledger.ATTR_INTERRUPTED not in done.user_attrs
    assert ledger.ATTR_ERROR not in done.user_attrs


def test_a_trial_whose_process_keeps_dying_is_a_counted_fail_after_the_relaunches(
        study: optuna.Study) -> None:
    study.enqueue_trial({"freeze": "all"})
    for _ in range(ending.MAX_RELAUNCHES + 1):
        trial = study.ask()
        ledger.suggest(trial, "freeze", FREEZE)
        assert ending.abandon(study, ledger.trial_id(trial), "its process was killed by SIGKILL")
    runs = study.get_trials()
    assert TrialState.WAITING not in {t.state for t in runs}  # no fourth launch queued
    assert [t.params["freeze"] for t in runs] == ["all"] * (ending.MAX_RELAUNCHES + 1)
    assert [ledger.is_finished(t) for t in runs] == [False] * ending.MAX_RELAUNCHES + [True]
    assert runs[-1].state == TrialState.FAIL
    assert runs[-1].user_attrs[ledger.ATTR_ERROR] == (
        f"its process was killed by SIGKILL (launched {ending.MAX_RELAUNCHES + 1} times)")
    assert [t.user_attrs.get(ledger.ATTR_RELAUNCHES, 0) for t in runs] == list(
        range(ending.MAX_RELAUNCHES + 1))


# -- several workers recovering the same stale trials ---------------------------------------

#: One worker at sweep start: loads the study, waits for the go (all workers at once), then
#: runs the sweeper's stale-trial recovery.
RECOVER = """
import pathlib, sys, time
import optuna
from sweeps.report.study_run import StudyRun
from sweeps.storage import open_storage
from sweeps.sweeper.study import recover_stale
url, name, ready, go = sys.argv[1:]
study = optuna.load_study(study_name=name, storage=open_storage(url))
pathlib.Path(ready).touch()
while not pathlib.Path(go).exists():
    time.sleep(0.001)
recover_stale(study, StudyRun(None, None), heartbeat_timeout_s=600.0)
print("recovered")
"""

WORKERS, STALE = 3, 12


def dead_owner() -> str:
    """The owner id of a process that has ended."""
    done = subprocess.run([sys.executable, "-c", "from sweeps import liveness; "
                           "print(liveness.owner_id())"], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    owner = done.stdout.strip()
    assert liveness.owner_alive(owner) is False
    return owner


def stale_study(url: str, name: str) -> optuna.Study:
    """A study holding :data:`STALE` running trials whose job process has died."""
    study = optuna.create_study(study_name=name, storage=open_storage(url),
                                direction="maximize")
    owner = dead_owner()
    for _ in range(STALE):
        trial = study.ask()
        ledger.suggest(trial, "freeze", FREEZE)
        for key in (ledger.ATTR_OWNER, ledger.ATTR_JOB):
            trial.set_user_attr(key, owner)
    return study


def recover_at_once(url: str, name: str, folder: Path) -> list[subprocess.CompletedProcess]:
    """Run :data:`WORKERS` recoveries that start at the same moment."""
    go = folder / "go"
    readies = [folder / f"ready-{i}" for i in range(WORKERS)]
    procs = [subprocess.Popen([sys.executable, "-c", RECOVER, url, name, str(ready), str(go)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
             for ready in readies]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in readies) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    if request.param == "journal":
        return f"journal:///{tmp_path / 'study.log'}"
    return str(request.getfixturevalue("postgres_url"))


def test_three_workers_recovering_the_same_stale_trials_end_each_once_and_queue_it_once(
        storage: str, tmp_path: Path) -> None:
    name = f"stale-{uuid.uuid4().hex[:8]}"
    stale_study(storage, name)
    workers = recover_at_once(storage, name, tmp_path)
    for worker in workers:
        assert worker.returncode == 0, worker.stderr[-3000:]
        assert worker.stdout.strip() == "recovered"
        assert "Traceback" not in worker.stderr
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    trials = study.get_trials()
    cut, queued = trials[:STALE], trials[STALE:]
    assert [t.state for t in cut] == [TrialState.FAIL] * STALE
    assert all(t.user_attrs[ledger.ATTR_INTERRUPTED] for t in cut)
    assert [t.state for t in queued] == [TrialState.WAITING] * STALE  # not once per worker
    assert sorted(ledger.queued_params(t)["freeze"] for t in queued) == sorted(
        t.params["freeze"] for t in cut)
    assert all(t.user_attrs[ledger.ATTR_RELAUNCHES] == 1 for t in queued)

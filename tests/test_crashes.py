"""Trials that die hard or end badly, run through real sweeps: a SIGKILLed joblib job (as the
OOM killer ends it), an epoch longer than the heartbeat's timeout, an MLflow error after the
fit, a fit without a finite objective. Real sqlite study, real MLflow store, no mocks."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from test_resume import TINY, run_sweep, storage_url, study_trials, trial_runs

from conftest import Exited
from sweeps import ending, ledger, liveness
from sweeps.sweeper.asking import FailureRate

pytestmark = pytest.mark.slow

ONE_EPOCH = [*TINY, "trainer.max_epochs=1", "feature_cache=false",
             "hydra.sweeper.default_space.portfolio=null"]
#: Each launch in a joblib worker process of its own (hydra.launcher.n_jobs > 1 so that
#: joblib does not run the one job of a launch in the sweeper's own process).
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=1"]


def no_running(cwd: Path) -> None:
    """Nothing left RUNNING: no Optuna trial, no MLflow run of a trial."""
    assert not [t.number for t in study_trials(cwd) if t.state == TrialState.RUNNING]
    assert not [n for n, run in trial_runs(cwd).items() if run.info.status == "RUNNING"]


# -- a joblib job SIGKILLed, as the OOM killer does ------------------------------------------

@dataclass
class Killed:
    cwd: Path
    sweep: Exited
    trials: list[FrozenTrial]


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Killed:
    """A 3-trial joblib sweep whose first trial's process is SIGKILLed at every launch."""
    cwd = tmp_path_factory.mktemp("killed")
    kills = cwd / "kills"
    kills.write_text(str(ending.MAX_RELAUNCHES + 1))
    sweep = run_sweep(*ONE_EPOCH, *JOBLIB, "data._target_=tests.faulty_parts.KillMidFit",
                      f"+data.kill_file={kills}", "hydra.sweeper.n_trials=3",
                      "hydra.sweeper.max_failure_rate=1.0", cwd=cwd, timeout=400)
    return Killed(cwd, sweep, study_trials(cwd))


def test_sigkilled_job_is_relaunched_then_failed_with_its_signal_and_the_sweep_goes_on(
        killed: Killed) -> None:
    assert killed.sweep.returncode == 0, killed.sweep.stderr[-3000:]
    assert "could not start" not in killed.sweep.output
    assert sum(map(ledger.is_finished, killed.trials)) == 3
    dead = [t for t in killed.trials if "SIGKILL" in t.user_attrs.get(ledger.ATTR_ERROR, "")]
    assert len(dead) == ending.MAX_RELAUNCHES + 1
    *relaunched, failed = dead
    assert all(t.user_attrs.get(ledger.ATTR_INTERRUPTED) for t in relaunched)
    assert failed.state == TrialState.FAIL
    assert ledger.is_finished(failed)
    assert "out of memory" in failed.user_attrs[ledger.ATTR_ERROR]
    assert f"launched {ending.MAX_RELAUNCHES + 1} times" in failed.user_attrs[ledger.ATTR_ERROR]
    assert {str(t.params) for t in dead} == {str(dead[0].params)}  # the same trial each time
    assert [t.state for t in killed.trials if t not in dead] == [TrialState.COMPLETE] * 2


def test_sigkilled_job_counts_against_max_failure_rate(killed: Killed) -> None:
    with pytest.raises(Exception, match="SIGKILL"):
        FailureRate(0.0, 0.0).check(killed.trials)


def test_sigkilled_jobs_leave_nothing_running(killed: Killed) -> None:
    no_running(killed.cwd)
    runs = trial_runs(killed.cwd)
    killed_runs = [runs[t.number] for t in killed.trials
                   if "SIGKILL" in t.user_attrs.get(ledger.ATTR_ERROR, "") and t.number in runs]
    assert killed_runs
    assert {run.info.status for run in killed_runs} <= {"KILLED", "FAILED"}


# -- an epoch far longer than the heartbeat's timeout ----------------------------------------

def test_long_epoch_keeps_a_live_heartbeat_and_is_never_seen_dead(tmp_path: Path) -> None:
    """Seen from another host (only the heartbeat tells), the trial is alive through a
    12-second first batch under a 2-second timeout, and completes."""
    timeout_s, ages = 2.0, []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.25):
            try:
                trials = optuna.load_study(study_name="plateau",
                                           storage=storage_url(tmp_path)).trials
            except Exception:  # noqa: BLE001 -- not created yet
                continue
            for trial in trials:
                if trial.state == TrialState.RUNNING and ledger.ATTR_JOB in trial.user_attrs:
                    beat = float(trial.user_attrs[ledger.ATTR_HEARTBEAT])
                    ages.append(time.time() - beat)
                    assert not liveness.is_dead("", beat, timeout_s)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        sweep = run_sweep(*ONE_EPOCH, "data._target_=tests.faulty_parts.SlowFirstBatch",
                          "+data.sleep_s=12", "hydra.sweeper.n_trials=1",
                          f"hydra.sweeper.heartbeat_timeout_s={timeout_s}", cwd=tmp_path)
    finally:
        stop.set()
        watcher.join()
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert len(ages) > 20  # watched through the long batch
    assert max(ages) < timeout_s
    assert [t.state for t in study_trials(tmp_path)] == [TrialState.COMPLETE]


# -- after the fit: an MLflow error; no finite objective -------------------------------------

def test_mlflow_error_after_fit_fails_the_trial_and_leaves_no_running_run(
        tmp_path: Path) -> None:
    sweep = run_sweep(*ONE_EPOCH, "logger._target_=tests.faulty_parts.MLflowDownAfterFit",
                      "hydra.sweeper.n_trials=1", "hydra.sweeper.max_failure_rate=1.0",
                      cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "Traceback" not in sweep.output
    (trial,) = study_trials(tmp_path)
    assert trial.state == TrialState.FAIL
    assert "planted fault: the tracking store failed" in trial.user_attrs[ledger.ATTR_ERROR]
    no_running(tmp_path)
    assert trial_runs(tmp_path)[0].info.status == "FAILED"


def test_no_finite_objective_is_a_fail_with_its_reason(tmp_path: Path) -> None:
    """NaN images from the first batch on: no epoch gives a finite validation loss (the
    objective); the trial is a FAIL (counted by max_failure_rate) saying why, not PRUNED."""
    sweep = run_sweep(*ONE_EPOCH, "data._target_=tests.faulty_parts.NaNImages",
                      "objective.metric=val/loss", "objective.direction=minimize",
                      "hydra.sweeper.n_trials=1", "hydra.sweeper.max_failure_rate=1.0",
                      cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    (trial,) = study_trials(tmp_path)
    assert trial.state == TrialState.FAIL
    assert ledger.is_finished(trial)
    error = trial.user_attrs[ledger.ATTR_ERROR]
    assert "the trial ended without a finite val/loss: val/loss is nan at epoch 1" in error
    no_running(tmp_path)

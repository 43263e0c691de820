"""Chaos: three workers on one study, SIGKILLed at random, and their trials' processes too.

Three ``python sweep.py -m`` workers share one study, each running its trials in joblib
worker processes. For at least :data:`ROUNDS` rounds, a random running trial's process (its
joblib worker, found by the trial's ``job`` owner) or the worker that launched it (the
sweeper process) is SIGKILLed, and every dead worker is started again; some trials'
processes also SIGKILL themselves mid-fit, as the OOM killer would. Then workers run
undisturbed until the study holds its budget. Afterwards: exactly ``n_trials`` finished,
nothing RUNNING, every trial's MLflow run ended in the trial's final state, no run per
trial beyond one, and no params queued again more often than their trials were cut off (no
trial ended twice).

Once on a real PostgreSQL server, once on Optuna's journal file. Prints the faults injected
and the counts.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from conftest import ROOT, TINY
from sweeps import ledger, liveness
from sweeps.storage import open_storage

pytestmark = pytest.mark.slow

WORKERS, N_TRIALS, ROUNDS = 3, 6, 10
#: Seconds between two faults, drawn uniformly.
PAUSE_S = (5.0, 9.0)
#: The longest the undisturbed workers may take to meet the budget after the faults.
CALM_S = 240.0
#: The longest a round waits for a running trial to kill (or its worker).
TARGET_WAIT_S = 20.0
#: Trial processes that SIGKILL themselves at their second epoch, as the OOM killer would
#: (:class:`tests.faulty_parts.KillMidFit`); each batch takes a quarter second more, so that
#: the random faults find trials running.
SELF_KILLS = 2
TRIAL = [*TINY[:-1], "trainer.max_epochs=2", "feature_cache=false",
         "doctor.preflight.enabled=false",
         "data._target_=tests.faulty_parts.KillMidFit", "+data.at_epoch=1",
         "+data.every_batch_s=0.25",
         "hydra.sweeper.default_space.portfolio=null", "hydra/launcher=joblib",
         "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=1",
         "hydra.sweeper.max_failure_rate=1.0", "hydra.sweeper.heartbeat_timeout_s=8"]
#: PRUNED trials may also end FINISHED: killed between Lightning's end of the fit (which
#: finishes the run) and the run's KILLED mark.
RUN_STATUS = {TrialState.COMPLETE: {"FINISHED"}, TrialState.PRUNED: {"KILLED", "FINISHED"},
              TrialState.FAIL: {"FAILED", "KILLED"}}


@dataclass
class Chaos:
    """Workers of one study in ``cwd`` and the faults injected into them."""

    cwd: Path
    url: str
    study_name: str
    rng: random.Random
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    all_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    starts: int = 0

    storage: BaseStorage | None = None

    def study(self) -> optuna.Study:
        """The study, through one storage for the whole test: a fresh one per poll would
        hold a server connection each until collected (PostgreSQL's 100 run out)."""
        if self.storage is None:
            self.storage = open_storage(self.url)
        return optuna.load_study(study_name=self.study_name, storage=self.storage)

    def start(self, slot: int) -> None:
        log = (self.cwd / f"worker-{self.starts}.out").open("wb")
        command = [sys.executable, str(ROOT / "sweep.py"), "-m", *TRIAL,
                   f"+data.kill_file={self.cwd / 'kills'}",
                   f"hydra.sweeper.n_trials={N_TRIALS}", f"hydra.sweeper.storage={self.url}",
                   f"hydra.sweeper.study_name={self.study_name}"]
        proc = subprocess.Popen(command, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its joblib workers in its group
        self.procs[slot] = proc
        self.all_procs.append(proc)
        self.starts += 1

    def restart_dead(self) -> None:
        for slot, proc in enumerate(self.procs):
            if proc is None or proc.poll() is not None:
                self.start(slot)

    def kill_one(self) -> None:
        """SIGKILL a running trial's job process, or the worker that launched it (its
        parent), at random; waits up to :data:`TARGET_WAIT_S` for a trial to run, then kills
        a random worker instead."""
        deadline = time.monotonic() + TARGET_WAIT_S
        while not (jobs := self.running_jobs()) and time.monotonic() < deadline:
            time.sleep(0.5)
        workers = {p.pid: p for p in self.procs if p is not None and p.poll() is None}
        if jobs:
            job = self.rng.choice(jobs)
            parent = parent_pid(job)
            if parent in workers and self.rng.random() < 0.5:
                workers[parent].kill()
                self.faults["worker SIGKILLed mid-trial"] += 1
            else:
                os.kill(job, signal.SIGKILL)
                self.faults["trial process SIGKILLed"] += 1
        elif workers:
            self.rng.choice(list(workers.values())).kill()
            self.faults["worker SIGKILLed before its trials"] += 1

    def running_jobs(self) -> list[int]:
        """The pids of the live job processes of the study's running trials."""
        try:
            trials = self.study().get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except (KeyError, ValueError):  # not created yet
            return []
        owners = [str(t.user_attrs.get(ledger.ATTR_JOB, "")) for t in trials]
        return [int(owner.split(":")[1]) for owner in owners
                if owner and liveness.owner_alive(owner)]

    def wait_all(self, timeout: float) -> None:
        """Wait for every worker to end, ``timeout`` seconds at most (then the check says
        what is missing)."""
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(1.0, deadline - time.monotonic()))

    def done(self) -> bool:
        trials = self.study().get_trials(deepcopy=False)
        return (sum(map(ledger.is_finished, trials)) >= N_TRIALS
                and not any(t.state == TrialState.RUNNING for t in trials))

    def stop_everything(self) -> None:
        for proc in self.all_procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def parent_pid(pid: int) -> int | None:
    """The parent of process ``pid`` (``/proc/<pid>/stat``, field 4), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2:].split()[1])


def run_chaos(cwd: Path, url: str, seed: int) -> Chaos:
    chaos = Chaos(cwd, url, f"chaos-{uuid.uuid4().hex[:8]}", random.Random(seed))
    chaos.procs = [None] * WORKERS
    (cwd / "kills").write_text(str(SELF_KILLS))
    try:
        for _ in range(ROUNDS):
            chaos.restart_dead()
            time.sleep(chaos.rng.uniform(*PAUSE_S))
            chaos.kill_one()
            chaos.faults["rounds of restarts"] += 1
        calm_until = time.monotonic() + CALM_S
        while time.monotonic() < calm_until:  # then undisturbed until the budget is met
            chaos.restart_dead()
            chaos.wait_all(timeout=calm_until - time.monotonic())
            if chaos.done():
                break
            time.sleep(2)  # a trial whose owner is alive elsewhere (an orphaned job) ends
    finally:
        chaos.stop_everything()
    chaos.faults["trial process SIGKILLed itself (OOM-like)"] = SELF_KILLS - int(
        (cwd / "kills").read_text())
    return chaos


def outputs(cwd: Path) -> str:
    return "\n".join(path.read_text(errors="replace") for path in cwd.glob("worker-*.out"))


def requeue_excess(trials: list[FrozenTrial]) -> list[str]:
    """Params queued more often than trials with them were cut off or withdrawn (a trial
    ended twice queues its params twice)."""
    queued = Counter(str(ledger.queued_params(t)) for t in trials if ledger.queued_params(t))
    cut = Counter(str(t.params) for t in trials if t.params and (
        t.user_attrs.get(ledger.ATTR_INTERRUPTED)
        or (t.user_attrs.get(ledger.ATTR_WITHDRAWN) and ledger.queued_params(t))))
    base = [t for t in trials if t.user_attrs.get(ledger.ATTR_ROLE) == ledger.ROLE_BASE]
    first = str(ledger.queued_params(base[0])) if base else ""
    return [params for params, count in queued.items()
            if count > cut[params] + (params == first)]


def check_and_report(chaos: Chaos, label: str) -> None:
    trials = chaos.study().get_trials(deepcopy=False)
    client = MlflowClient(f"sqlite:///{chaos.cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(chaos.study_name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_trial: dict[int, list] = {}
    for run in runs:
        if "plateau.trial_number" in run.data.tags:
            by_trial.setdefault(int(run.data.tags["plateau.trial_number"]), []).append(run)
    states = Counter("interrupted" if t.user_attrs.get(ledger.ATTR_INTERRUPTED) else
                     "withdrawn" if t.user_attrs.get(ledger.ATTR_WITHDRAWN) else t.state.name
                     for t in trials)
    statuses = Counter(run.info.status for group in by_trial.values() for run in group)
    print(f"\nchaos on {label}: faults {dict(chaos.faults)}, {chaos.starts} worker starts; "
          f"trials {dict(states)}; finished {sum(map(ledger.is_finished, trials))} of "
          f"{N_TRIALS}; trial runs {dict(statuses)}")
    log = outputs(chaos.cwd)
    assert "UpdateFinishedTrialError" not in log
    assert "Cannot tell a" not in log
    assert sum(map(ledger.is_finished, trials)) == N_TRIALS
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    assert not [n for n, group in by_trial.items() if len(group) > 1]
    for trial in trials:
        for run in by_trial.get(trial.number, []):
            assert run.info.status in RUN_STATUS.get(trial.state, set()), (
                trial.number, trial.state, run.info.status, trial.user_attrs)
    for state in (TrialState.COMPLETE, TrialState.PRUNED):
        assert all(t.number in by_trial for t in trials if t.state == state)
    assert not requeue_excess(trials)
    assert chaos.faults["rounds of restarts"] >= ROUNDS


def test_chaos_on_postgresql_loses_no_trial_and_ends_none_twice(
        postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chaos = run_chaos(tmp_path, postgres_url, seed=18)
    with capsys.disabled():
        check_and_report(chaos, "PostgreSQL")


def test_chaos_on_the_journal_file_loses_no_trial_and_ends_none_twice(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chaos = run_chaos(tmp_path, f"journal:///{tmp_path / 'study.log'}", seed=81)
    with capsys.disabled():
        check_and_report(chaos, "the journal file")

"""``hydra/launcher=slurm`` on a real single-node SLURM cluster (``tests/slurm_cluster.py``).

Each trial is an sbatch job submitted by submitit; its job reports to the study from the
compute node (here: this host, as root). Checked: trials run as sbatch jobs and are pruned
against each other through the storage; a job cancelled mid-run (``scancel``), with job
accounting (``sacct``, slurmdbd over MariaDB) and without it, or requeued (``scontrol
requeue``, as a preemption) neither loses its trial's unit of budget nor keeps the sweep
waiting; and the README's job array of workers shares one study's budget.

The cluster needs root and Debian's slurm-wlm, munge, slurmdbd and mariadb-server (``.ci/run``
installs them and sets ``PLATEAU_SLURM_TESTS=required``, so there a cluster that cannot start
fails these tests); elsewhere, without root or the packages, they are skipped with the reason.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import submitit
from optuna.trial import FrozenTrial, TrialState
from slurm_cluster import PARTITION, Cluster, cluster, missing
from slurm_sweeps import HANG_S, fault, finish, slurm_sweep, submitted_jobs
from submitit.slurm.slurm import SlurmInfoWatcher
from test_sweep import FLAT_LR, GOOD_LR, TINY, Sweep, search_config, storage_url, study_trials

from conftest import ROOT
from sweeps import ledger
from sweeps.slurm import GONE, QueueWatcher

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]

#: What ``.ci/run`` sets: a cluster that cannot start is a failure there, not a skip.
REQUIRED = os.environ.get("PLATEAU_SLURM_TESTS") == "required"

ACCOUNTING = pytest.param(True, id="accounting")
NO_ACCOUNTING = pytest.param(False, id="no-accounting")


def on(*clusters: object) -> pytest.MarkDecorator:
    """Run the test on the cluster with and/or without job accounting (``slurm`` fixture)."""
    return pytest.mark.parametrize("slurm", clusters, indirect=True)


@pytest.fixture(scope="module")
def slurm(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The cluster, with job accounting when the test's param says so; one at a time (pytest
    runs the tests of one param together and stops a cluster before the next starts)."""
    accounting = bool(request.param)
    reason = missing(accounting)
    if reason:
        if REQUIRED:
            pytest.fail(f"no SLURM cluster: {reason}")
        pytest.skip(reason)
    with cluster(accounting) as running:
        yield running


def counts(trials: list[FrozenTrial]) -> dict[str, int]:
    states = [t.state.name for t in trials if ledger.is_finished(t)]
    return {state: states.count(state) for state in sorted(set(states))}


# -- the state of a job that ended without a result ------------------------------------------

@on(ACCOUNTING, NO_ACCOUNTING)
def test_a_cancelled_job_is_done_for_plateau_s_watcher(slurm: Cluster, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(slurm_partition=PARTITION, timeout_min=5, cpus_per_task=1,
                               mem_gb=1)
    job = executor.submit(time.sleep, 600)
    deadline = time.monotonic() + 60
    while slurm.job_state(job.job_id) != "RUNNING":
        assert time.monotonic() < deadline, slurm.job_state(job.job_id)
        time.sleep(0.2)
    slurm.run("scancel", job.job_id)
    while slurm.job_state(job.job_id) != "CANCELLED":
        assert time.monotonic() < deadline, slurm.job_state(job.job_id)
        time.sleep(0.2)
    ours, submitits = QueueWatcher(), SlurmInfoWatcher()
    assert ours.get_state(job.job_id, mode="force").startswith("CANCELLED")  # sacct: "by 0"
    assert ours.is_done(job.job_id, mode="cache")
    # submitit's own reads sacct only: without accounting the job never ends for it
    assert submitits.is_done(job.job_id, mode="force") is slurm.accounting
    # a job slurmctld has forgotten (MinJobAge) has ended too
    assert ours.get_state("999999", mode="force") == (
        "UNKNOWN" if slurm.accounting else GONE)


# -- a sweep of sbatch jobs, pruned across them ---------------------------------------------

@pytest.fixture(scope="module")
def pruning_sweep(slurm: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """Three head-only trials on two slots: two improving ones run first, the flat one starts
    when one of them has completed, and is pruned against it."""
    cwd = tmp_path_factory.mktemp("pruned")
    conf = search_config(cwd / "conf", "prune", {"optimizer.lr": f"choice({GOOD_LR}, {FLAT_LR})",
                                                 "freeze": "head_only"})
    study = optuna.create_study(study_name="plateau", storage=storage_url(cwd),
                                direction="maximize")
    for lr in (GOOD_LR, GOOD_LR, FLAT_LR):
        study.enqueue_trial({"optimizer.lr": lr})
    return finish(slurm_sweep(slurm, cwd, f"--config-dir={conf}", "search=prune", "logger=none",
                              "trainer.max_epochs=5", "trainer.deterministic=true",
                              "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
                              "hydra.sweeper.pruner.patience=1",
                              "hydra.sweeper.pruner.n_startup_trials=1"), cwd)


@on(ACCOUNTING)
def test_sweep_runs_each_trial_as_an_sbatch_job(slurm: Cluster, pruning_sweep: Sweep) -> None:
    assert pruning_sweep.returncode == 0, pruning_sweep.output[-3000:]
    trials = study_trials(pruning_sweep.cwd)
    jobs = submitted_jobs(pruning_sweep.cwd)
    assert len(jobs) == len(trials) == 3
    sacct = slurm.run("sacct", "--noheader", "--parsable2", "--format=JobID,JobName,State",
                      f"--jobs={','.join(sorted(jobs))}")
    states = {line.split("|")[0]: line.split("|")[2] for line in sacct.splitlines()
              if "." not in line.split("|")[0]}
    assert states == dict.fromkeys(jobs, "COMPLETED")
    # each trial reported from its job's own process, not from the sweep's
    assert len({t.user_attrs[ledger.ATTR_OWNER] for t in trials}) == 3
    assert all(not t.user_attrs[ledger.ATTR_OWNER].endswith(f":{pruning_sweep.pid}")
               for t in trials)


@on(ACCOUNTING)
def test_flat_trial_is_pruned_against_another_sbatch_job(pruning_sweep: Sweep) -> None:
    assert pruning_sweep.returncode == 0, pruning_sweep.output[-3000:]
    trials = {t.number: t for t in study_trials(pruning_sweep.cwd)}
    assert [trials[n].state for n in (0, 1)] == [TrialState.COMPLETE] * 2
    flat = trials[2]
    assert flat.params["optimizer.lr"] == FLAT_LR
    assert flat.state == TrialState.PRUNED
    assert " vs the median " in flat.user_attrs[ledger.ATTR_PRUNE_REASON]


# -- jobs cancelled and requeued mid-run -----------------------------------------------------

@dataclass
class Faulted:
    """A sweep whose trial 0's job was cancelled mid-run, and with accounting trial 1's
    requeued."""

    first: Sweep     # the sweep that saw the faults
    again: Sweep | None  # the same command once more, when the first stopped early
    jobs: dict[int, str]  # trial number -> the job faulted
    slurm: Cluster

    @property
    def trials(self) -> dict[int, FrozenTrial]:
        return {t.number: t for t in study_trials(self.first.cwd)}

    def ran_again(self, trial: FrozenTrial) -> bool:
        """Whether a later trial ran ``trial``'s params to its end."""
        return any(t.number > trial.number and t.params == trial.params
                   and ledger.is_finished(t) for t in self.trials.values())


FAULT_TRIALS = 2
FAULT_EPOCHS = 40  # long enough to be cut off mid-run: a few seconds of training


@pytest.fixture(scope="module")
def faulted(slurm: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Faulted:
    """A 2-trial sweep on 2 slots: trial 0's job is cancelled and, on the cluster with
    accounting (as real ones run), trial 1's requeued, each once its trial has reported an
    epoch. A sweep that stops instead of going on is run again
    (the same command), which must then complete the budget."""
    cwd = tmp_path_factory.mktemp("faulted")
    args = ["logger=none", f"trainer.max_epochs={FAULT_EPOCHS}", "hydra/sweeper/pruner=none",
            f"hydra.sweeper.n_trials={FAULT_TRIALS}", "hydra.sweeper.n_jobs=2"]
    running = slurm_sweep(slurm, cwd, *args)
    try:
        requeue = {1: ["scontrol", "requeue"]} if slurm.accounting else {}
        jobs = fault(slurm, cwd, {0: ["scancel"], **requeue})
        first = finish(running, cwd)
    finally:
        running.stop()  # when the test failed before the sweep ended
    again = None if first.returncode == 0 else finish(slurm_sweep(slurm, cwd, *args), cwd)
    return Faulted(first, again, jobs, slurm)


@on(ACCOUNTING, NO_ACCOUNTING)
def test_sweep_with_a_cancelled_job_ends_and_completes_its_budget(faulted: Faulted) -> None:
    # it did not wait forever on the cancelled job (finish() fails the test then), and it
    # either went on or stopped with one line that the same command resumes from
    first, again = faulted.first, faulted.again
    assert "Traceback" not in first.output, first.output[-3000:]
    if again is not None:
        assert again.returncode == 0, again.output[-3000:]
        assert "Traceback" not in again.output, again.output[-3000:]
    trials = list(faulted.trials.values())
    assert sum(counts(trials).values()) == FAULT_TRIALS
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]


@on(ACCOUNTING, NO_ACCOUNTING)
def test_cancelled_trial_is_failed_with_its_reason(faulted: Faulted) -> None:
    cancelled = faulted.trials[0]
    assert cancelled.state == TrialState.FAIL
    reason = (cancelled.user_attrs.get(ledger.ATTR_ERROR)
              or ("interrupted" if cancelled.user_attrs.get(ledger.ATTR_INTERRUPTED) else ""))
    assert reason, cancelled.user_attrs
    if cancelled.user_attrs.get(ledger.ATTR_INTERRUPTED):  # not counted: its params ran again
        assert faulted.ran_again(cancelled)


@on(ACCOUNTING)
def test_requeued_job_ran_again_and_its_trial_is_not_lost(faulted: Faulted) -> None:
    job = faulted.jobs[1]
    states = faulted.slurm.run("sacct", "--noheader", "--parsable2", "--duplicates",
                               "--format=JobID,State", f"--jobs={job}")
    assert "REQUEUED" in states, states
    requeued = faulted.trials[1]
    if requeued.state == TrialState.FAIL and requeued.user_attrs.get(ledger.ATTR_INTERRUPTED):
        # cut off by the requeue: uncounted, and its params ran again to the end
        assert faulted.ran_again(requeued)
    else:  # resumed by the requeued job itself
        assert ledger.is_finished(requeued)


# -- the README's job array of workers ------------------------------------------------------

ARRAY_TRIALS = 4


@on(ACCOUNTING)
def test_job_array_of_workers_completes_one_study_budget(slurm: Cluster, tmp_path: Path,
                                                         postgres_url: str) -> None:
    # README, "On a SLURM cluster": N array tasks, each an ordinary sweep on one study
    script = tmp_path / "sweep.sbatch"
    script.write_text("\n".join([
        "#!/bin/bash",
        f"#SBATCH --array=0-1 --cpus-per-task=1 --mem=4G --time=30 --requeue "
        f"--partition={PARTITION} --chdir={tmp_path} --output={tmp_path}/worker-%a.out",
        f"{sys.executable} {ROOT / 'sweep.py'} -m {' '.join(TINY)} trainer.max_epochs=2 "
        f"hydra.sweeper.n_trials={ARRAY_TRIALS} hydra.sweeper.study_name=array "
        f"hydra.sweeper.storage='{postgres_url}' "
        f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", ""]))
    job = slurm.run("sbatch", "--parsable", str(script)).strip()
    deadline = time.monotonic() + HANG_S
    while (states := [slurm.job_state(f"{job}_{task}") for task in (0, 1)]) and any(
            state in ("PENDING", "RUNNING", "COMPLETING", "") for state in states):
        assert time.monotonic() < deadline, states
        time.sleep(1)
    outputs = [(tmp_path / f"worker-{task}.out").read_text() for task in (0, 1)]
    assert states == ["COMPLETED", "COMPLETED"], outputs
    trials = optuna.load_study(study_name="array", storage=postgres_url).trials
    assert sum(counts(trials).values()) == ARRAY_TRIALS
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]

"""plateau sweeps on the test cluster (``tests/slurm_cluster.py``): started, watched, their jobs
faulted.

A sweep prints to a log file in its folder, not to a pipe that nobody reads while the test
polls the study (a full pipe would block the sweep and pass for a hang).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState
from slurm_cluster import PARTITION, Cluster
from test_sweep import TINY, Sweep, study_trials

from conftest import ROOT

#: The issue's command line: one CPU, 4 GB and no GPU per trial, on the test partition.
SLURM = ["hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}",
         "hydra.launcher.gpus_per_task=null", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=4"]
#: A sweep stuck on a job that ended is a hang: no sweep of the SLURM tests takes this long.
HANG_S = 300


@dataclass
class Running:
    """A sweep started by :func:`slurm_sweep`, and the file that takes what it prints (a pipe
    nobody reads while the test polls the study could fill up and block it)."""

    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def slurm_sweep(slurm: Cluster, cwd: Path, *args: str) -> Running:
    """``python sweep.py -m`` with the SLURM launcher, started in ``cwd``."""
    # the jobs unpickle plateau's code: the checkout the sweep runs, whatever is installed
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**slurm.env, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": path}
    options = [arg for arg in args if arg.startswith("--")]  # before the overrides
    overrides = [arg for arg in args if not arg.startswith("--")]
    log = cwd / f"sweep-{len(list(cwd.glob('sweep-*.log')))}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "-m", *options, *TINY,
                                 *SLURM, *overrides],
                                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Running(proc, log)


def finish(sweep: Running, cwd: Path) -> Sweep:
    """Wait for the sweep; one still running after :data:`HANG_S` fails the test."""
    try:
        sweep.proc.wait(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        sweep.stop()
        pytest.fail(f"the sweep still ran after {HANG_S} s: {sweep.log.read_text()[-3000:]}")
    return Sweep(cwd, sweep.proc.pid, sweep.proc.returncode, sweep.log.read_text())


def job_of(cwd: Path, trial: FrozenTrial) -> str:
    """The SLURM job id that runs ``trial`` of the sweep in ``cwd``: Hydra's job folder is
    named for the trial number, and the launcher sets ``hydra.job.id`` to the job's id."""
    (saved,) = cwd.glob(f"multirun/*/*/{trial.number}/.hydra/hydra.yaml")
    return str(OmegaConf.load(saved).hydra.job.id)


def submitted_jobs(cwd: Path) -> set[str]:
    """Ids of the jobs submitit submitted for the sweeps run in ``cwd`` (one folder each)."""
    return {p.name for p in cwd.glob("multirun/*/*/.submitit/*") if p.is_dir()}


def trials_now(cwd: Path) -> list[FrozenTrial]:
    """The trials of the study in ``cwd`` so far; none before the sweep has created it."""
    if not (cwd / "plateau.db").exists():
        return []
    try:
        return study_trials(cwd)
    except KeyError:  # no such study yet
        return []


def fault(slurm: Cluster, cwd: Path, commands: dict[int, list[str]]) -> dict[int, str]:
    """Run ``commands[n] <job id>`` on the job of trial ``n`` once it has reported an epoch;
    the jobs faulted, by trial number."""
    jobs: dict[int, str] = {}
    deadline = time.monotonic() + 180
    while len(jobs) < len(commands):
        assert time.monotonic() < deadline, f"only trials {sorted(jobs)} were faulted"
        for trial in trials_now(cwd):
            if (trial.number not in commands or trial.number in jobs
                    or trial.state == TrialState.WAITING):  # queued, not asked yet
                continue
            assert trial.state == TrialState.RUNNING, (
                f"trial {trial.number} ended before its fault: give it more epochs")
            if trial.intermediate_values:
                jobs[trial.number] = job_of(cwd, trial)
                slurm.run(*commands[trial.number], jobs[trial.number])
        time.sleep(0.2)
    return jobs

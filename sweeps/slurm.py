"""SLURM job states for Hydra's submitit launcher, readable with or without job accounting.

submitit learns a job's state from ``sacct`` alone, and only the job's result file tells it
the job ended otherwise. On a cluster without job accounting ``sacct`` fails ("Slurm
accounting storage is disabled"); submitit logs "Bypassing sacct error ... status may be
inaccurate" and keeps the state ``UNKNOWN``, which it counts as not done. A job that ends
without writing its result (``scancel``, a node failure, an out-of-memory kill) is then
waited on forever: the sweep's slot, and so the sweep, never returns, even after plateau has
failed the trial and run it again.

:class:`QueueWatcher` reads ``sacct`` while it works and otherwise asks slurmctld
(``squeue --states=all``), which keeps a finished job's state for ``MinJobAge`` seconds;
a job slurmctld no longer knows has ended, as ``NOT_IN_QUEUE``. submitit then raises
``UncompletedJobError`` naming that state, and the sweeper settles the trial. Only a failure
to reach slurmctld itself keeps a job waiting.

submitit's watcher is one object shared by all its SLURM jobs (``SlurmJob.watcher``) and
its bookkeeping is private; this module is the one place that touches either.
``hydra/launcher=slurm`` (``hydra_plugins.plateau_sweeper.slurm_launcher``) installs the
watcher with :func:`watch_queue` before it submits anything.
"""

from __future__ import annotations

import logging
import subprocess
import time

from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

log = logging.getLogger(__name__)

#: The state given to a job that neither sacct nor slurmctld knows any more: it has ended.
GONE = "NOT_IN_QUEUE"
#: What sacct prints on a cluster without job accounting: no use asking it again.
NO_ACCOUNTING = "accounting storage is disabled"
_HEADER = "JobID|State|NodeList"
_COMMAND_TIMEOUT_S = 60


class QueueWatcher(SlurmInfoWatcher):
    """submitit's SLURM watcher, with slurmctld's queue where ``sacct`` fails."""

    def __init__(self, delay_s: int = 600) -> None:
        super().__init__(delay_s=delay_s)
        self.sacct = True  # False once sacct said the cluster has no accounting

    def update(self) -> None:
        """Read the state of every registered job not known to be finished (sacct, else
        squeue), then mark the finished ones, as submitit's own ``update`` does."""
        command = self._make_command()
        if command is None:
            return
        self._num_calls += 1
        info = self._from_sacct(command) if self.sacct else None
        if info is None:
            info = self._from_queue()
        if info is not None:
            self._info_dict.update(info)
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)

    def _from_sacct(self, command: list[str]) -> dict[str, dict[str, str]] | None:
        done = _run(command)
        if done is not None and done.returncode == 0:
            return self.read_info(done.stdout)
        error = _error(command, done)
        if NO_ACCOUNTING in error:
            self.sacct = False
            log.debug("%s: job states come from squeue", error)
        else:
            log.warning("%s; job states come from squeue this time", error)
        return None

    def _from_queue(self) -> dict[str, dict[str, str]] | None:
        """States from ``squeue``; a job it does not list has ended (:data:`GONE`). None
        when slurmctld cannot be asked: nothing is concluded then."""
        waiting = self._registered - self._finished
        main_ids = sorted({job_id.split("_")[0] for job_id in waiting})
        command = ["squeue", "--noheader", "--states=all", "--format=%i|%T|%N",
                   f"--jobs={','.join(main_ids)}"]
        done = _run(command)
        if done is None or (done.returncode != 0 and "Invalid job id" not in done.stderr):
            log.warning("%s; waiting on the jobs' states", _error(command, done))
            return None
        listed = done.stdout if done.returncode == 0 else ""
        info = self.read_info(f"{_HEADER}\n{listed}")
        for job_id in waiting:
            if job_id not in info and not _listed_as_array(job_id, info):
                info[job_id] = {"JobID": job_id, "State": GONE, "NodeList": ""}
        return info


def watch_queue() -> QueueWatcher:
    """Make every submitit SLURM job of this process wait through a :class:`QueueWatcher`
    (idempotent); returns it."""
    watcher = SlurmJob.watcher
    if not isinstance(watcher, QueueWatcher):
        watcher = QueueWatcher(delay_s=watcher._delay_s)
        SlurmJob.watcher = watcher
    return watcher


def _listed_as_array(job_id: str, info: dict[str, dict[str, str]]) -> bool:
    """Whether ``job_id`` (``123``) is an array job some of whose tasks (``123_4``) are listed."""
    return "_" not in job_id and any(key.startswith(f"{job_id}_") for key in info)


def _run(command: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(command, capture_output=True, text=True,
                              timeout=_COMMAND_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.debug("%s: %s", command[0], err)
        return None


def _error(command: list[str], done: subprocess.CompletedProcess[str] | None) -> str:
    if done is None:
        return f"{command[0]} did not answer"
    lines = (done.stderr or done.stdout).strip().splitlines()
    return f"{command[0]} failed: {lines[-1] if lines else f'exit {done.returncode}'}"

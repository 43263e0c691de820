"""Slots: trials in flight, each handed to Hydra's launcher as one job as soon as a slot frees.

Each slot asks its next trial as soon as its last one ends (no batches waiting for their
slowest trial). Slots are threads that hand one job at a time to the launcher, which runs it
in another process (joblib, submitit); the in-process basic launcher runs one trial at a time
whatever ``n_jobs`` says.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import optuna
from hydra.plugins.launcher import Launcher
from optuna.trial import FrozenTrial, Trial, TrialState

from errors import PlateauError, error_line, one_line
from sweeps import ending, ledger
from sweeps.sweeper import deaths
from sweeps.sweeper.asking import Asker
from sweeps.sweeper.progress import Progress
from sweeps.sweeper.settings import in_process

log = logging.getLogger(__name__)


class Slots:
    """Runs the asked trials of ``study`` as Hydra jobs, ``n_jobs`` at a time."""

    def __init__(self, study: optuna.Study, asker: Asker, launcher: Launcher,
                 n_jobs: int, progress: Progress | None = None,
                 end_child: Callable[[FrozenTrial], None] | None = None) -> None:
        #: ends the MLflow run of a trial whose job died (:meth:`StudyRun.end_child`)
        self._end_child = end_child
        self._study = study
        self._asker = asker
        self._launcher = launcher
        self._slots = 1 if in_process(launcher) else n_jobs
        self._lock = threading.Lock()
        #: ids of the trials running in this worker now (cut off by Ctrl-C: abandoned)
        self.in_flight: set[int] = set()
        #: numbers of the trials this worker ran
        self.launched: set[int] = set()
        #: numbers of the trials running in this worker now (for the progress display)
        self.running: set[int] = set()
        self._progress = progress

    def run(self) -> None:
        """Run trials until the budget is claimed; the first error of a slot stops all."""
        if self._progress is None:
            self._run()
            return
        with self._progress.live(self.running):
            self._run()

    def _run(self) -> None:
        if self._slots == 1:
            while self._run_next() or self._asker.waits():
                pass
            return
        stop = threading.Event()
        errors: list[BaseException] = []

        def slot() -> None:
            try:
                while not stop.is_set() and (self._run_next() or self._asker.waits()):
                    pass
            except BaseException as err:  # handed to the main thread
                errors.append(err)
                stop.set()

        threads = [threading.Thread(target=slot, name=f"plateau-slot-{i}", daemon=True)
                   for i in range(self._slots)]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # short joins keep the main thread responsive to Ctrl-C
                thread.join(0.5)
        if errors:
            raise errors[0]

    def _run_next(self) -> bool:
        """Run one more trial of the budget as a Hydra job; False when there is none to run."""
        with self._lock, ledger.uninterrupted():  # a trial asked is a trial in flight
            asked = self._asker.next_trial()
            if asked is None:
                return False
            trial, overrides = asked
            trial_id = ledger.trial_id(trial)
            self.in_flight.add(trial_id)
            self.launched.add(trial.number)
            self.running.add(trial.number)
        try:
            try:
                # job number = trial number: unique among workers sharing the sweep folder
                (result,) = self._launcher.launch([(*overrides, f"trial={trial.number}")],
                                                  initial_job_idx=trial.number)
            except Exception as err:  # the job died, or the launcher could not start it
                with ledger.uninterrupted():
                    self._died(trial, err)
            else:
                with ledger.uninterrupted():
                    self._settle(trial, result)
        finally:
            with self._lock:
                self.in_flight.discard(trial_id)
                self.running.discard(trial.number)
        if self._progress is not None:
            self._progress.finished(trial.number)
        return True

    def _settle(self, trial: Trial, result: Any) -> None:
        """Fail a trial whose job died before telling the study how it ended; stop the sweep
        when the job says every further trial would fail too (a full disk)."""
        trial_id = ledger.trial_id(trial)
        frozen = ledger.frozen_trial(self._study, trial_id)
        halt = frozen.user_attrs.get(ledger.ATTR_HALT)
        if halt:
            raise PlateauError(f"{halt} to continue the study (trial {trial.number} runs "
                               "again)")
        if frozen.state != TrialState.RUNNING:
            return
        error = getattr(result, "_return_value", None)
        message = one_line(error) or "the job ended without a result"
        if ending.fail(self._study, trial_id, message):
            self._end_run(ledger.frozen_trial(self._study, trial_id))

    def _died(self, trial: Trial, err: Exception) -> None:
        """The launcher raised ``err`` instead of a result.

        A job that had started died hard (a signal, the scheduler's time-out), or its worker
        process was lost (joblib loses every job of a killed worker's pool): it is launched
        again, up to :data:`sweeps.ending.MAX_RELAUNCHES` times, then a FAIL with the cause,
        and the sweep goes on. Otherwise the launcher cannot start jobs: the trial is queued
        again uncounted and the sweep stops.
        """
        trial_id = ledger.trial_id(trial)
        started = ledger.ATTR_JOB in ledger.frozen_trial(self._study, trial_id).user_attrs
        if started or deaths.lost_worker(err):
            died = deaths.cause(err)
            if ending.abandon(self._study, trial_id, died):
                ended = ledger.frozen_trial(self._study, trial_id)
                self._end_run(ended)
                log.warning("trial %d: %s; %s", trial.number, died,
                            "queued again" if ended.user_attrs.get(ledger.ATTR_INTERRUPTED)
                            else "failed")
            return
        ending.abandon(self._study, trial_id)
        raise PlateauError(
            f"hydra/launcher could not start trial {trial.number} "
            f"({error_line(err)}); check the hydra.launcher.* "
            "settings (python sweep.py -m --cfg hydra prints them)") from err

    def _end_run(self, trial: FrozenTrial) -> None:
        if self._end_child is not None:
            self._end_child(trial)

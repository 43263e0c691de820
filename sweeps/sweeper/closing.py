"""The end of a sweep: which worker closes the study, and its report.

Of several workers sharing a study, exactly one writes the study report and ends the
study's MLflow run: the one that ran the trial finished last.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from errors import console, error_line
from sweeps import ledger
from sweeps.report import files, publish
from sweeps.report.diagnoses import thresholds_of
from sweeps.report.model import StudyReport
from sweeps.report.study_run import StudyRun

log = logging.getLogger(__name__)


def ends_study(trials: Sequence[FrozenTrial], status: str, started: float, n_trials: int,
               launched: Collection[int]) -> bool:
    """Whether this worker writes the study report and ends the study's MLflow run.

    A worker that sees trials of the budget still running leaves that to their worker;
    every worker that sees none running sees the same last trial, so they agree without
    talking. A worker that stops on an error or Ctrl-C (``status`` other than FINISHED) ends
    the run itself when nothing else runs.

    Args:
        trials: the study's trials now.
        status: how this worker's sweep ended: FINISHED, FAILED or KILLED.
        started: when this worker's sweep started (``time.time()``).
        n_trials: the study's budget.
        launched: numbers of the trials this worker ran.
    """
    running = [t for t in trials if t.state == TrialState.RUNNING
               and (ledger.is_rerun(t) or ledger.within_budget(trials, t.number, n_trials))]
    if running:
        console.print(f"plateau: this worker is done; {len(running)} trials still run in "
                      "other workers, the last of them writes the study report")
        return False
    if status != "FINISHED":
        return True
    recent = [t for t in trials if ledger.is_finished(t) and t.datetime_complete is not None
              and t.datetime_complete.timestamp() >= started]
    if not recent:  # nothing ran in this round: the study was already complete
        return True
    last = max(recent, key=lambda t: t.datetime_complete or 0)
    if last.number in launched:
        return True
    console.print(f"plateau: this worker is done; the worker that ran trial {last.number}, "
                  "the last to finish, writes the study report")
    return False


def write_report(study: optuna.Study, run: StudyRun, sweep_dir: str, config: DictConfig,
                 monitor: str) -> StudyReport | None:
    """The post-sweep report in ``<sweep dir>/report``; a failure only warns."""
    try:
        return publish.publish(study, Path(sweep_dir) / files.REPORT_DIR, run.client,
                               run.run_id, publish.objective_label(config), monitor,
                               thresholds_of(config))
    except Exception as err:  # the study ran fine: the sweep must not fail for its report
        log.warning("study report not written: %s", error_line(err))
        return None

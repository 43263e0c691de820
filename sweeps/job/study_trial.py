"""A job of a sweep: one Hydra job = one Optuna trial, possibly in another process.

The sweeper asks the study for a trial and passes its number as ``trial=N``. The job rebuilds
the live trial from the shared storage (:func:`sweeps.ledger.live_trial`), reports its
validation loss each epoch (:class:`~sweeps.job.reporter.TrialReporter`), stops when the
pruner says so, and tells the study how the trial ended. Launchers that run jobs elsewhere
(joblib, submitit, SLURM) therefore prune exactly like the in-process basic launcher.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import optuna
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from doctor.diagnosis import Context, in_top_quarter
from errors import error_line
from lightning_modules.classifier import ImageClassifier
from lightning_modules.cost import serving_cost
from sweeps import devices, ending, ledger, liveness, tracking
from sweeps.job import ddp
from sweeps.job import logger as trial_logger
from sweeps.job.build import best_objective, first_device
from sweeps.job.disk import full_disk_line
from sweeps.job.prepare import PreparedTrial, prepare_trial
from sweeps.job.reporter import TrialReporter
from sweeps.objectives import Objectives, first_objective
from sweeps.storage import DEFAULT_STUDY_NAME, job_storage_url, load_study

log = logging.getLogger(__name__)

#: The confusion matrix is not stored above this many classes (see :func:`_store_confusion`).
MAX_CONFUSION_CLASSES = 100


class _JobTrial:
    """The live trial of this job, with what its failure paths need."""

    def __init__(self, number: int, objectives: Objectives) -> None:
        sweeper = HydraConfig.get().sweeper
        self.study = load_study(job_storage_url(sweeper.storage),
                                sweeper.study_name or DEFAULT_STUDY_NAME,
                                pruner=instantiate(sweeper.pruner))
        self.objectives = objectives
        #: what the pruner and the doctor judge: the first objective (:mod:`sweeps.objectives`)
        self.judged = first_objective(self.study)
        self.id = ledger.trial_id_of(self.study, number)
        self.trial = ledger.live_trial(self.judged, self.id)
        self.sweeper = sweeper
        self.logger: MLFlowLogger | None = None
        self.tags = {"plateau.trial_number": str(self.trial.number),
                     "plateau.study": self.study.study_name}
        role = self.trial.user_attrs.get(ledger.ATTR_ROLE)
        if role:
            self.tags["plateau.role"] = role
        for key in ledger.CARRIED:  # a rerun's original trial and seed
            if key in self.trial.user_attrs:
                self.tags[f"plateau.{key}"] = str(self.trial.user_attrs[key])
        parent = self.study.user_attrs.get(tracking.STUDY_RUN_ATTR)
        if parent:
            self.tags["mlflow.parentRunId"] = parent

    def beat(self, now: float | None = None) -> None:
        """Write the trial's heartbeat (storage only: safe from the heartbeat's thread)."""
        ledger.set_trial_attr(self.study, self.id, ledger.ATTR_HEARTBEAT,
                              time.time() if now is None else now)

    def heartbeat(self) -> liveness.Heartbeat:
        """The trial's heartbeat thread, four beats per ``heartbeat_timeout_s``."""
        timeout = float(self.sweeper.get("heartbeat_timeout_s", 600.0))
        return liveness.Heartbeat(self.beat, liveness.period_for(timeout),
                                  stop_on=(UpdateFinishedTrialError,))


def run_study_trial(cfg: DictConfig) -> float:
    """Run the job of trial number ``cfg.trial`` and tell the study its outcome.

    On a machine with GPUs the trial first takes a seat on its own GPU
    (:func:`sweeps.devices.trial_gpus`), waiting while parallel trials hold every seat.
    A thread writes the trial's heartbeat meanwhile, however long an epoch lasts. A trial
    that raises, in its fit or after it (its diagnosis, its MLflow run, its tell), is told
    FAIL with its error as the ``error`` user attribute (and MLflow tag), and so is a trial
    without a finite objective; the job itself returns NaN instead of raising, so the sweep
    goes on. An interrupt (Ctrl-C) marks the trial FAIL with ``interrupted`` and propagates.
    """
    with ledger.uninterrupted():
        job = _JobTrial(int(cfg.trial), Objectives.of(cfg))
        me = liveness.owner_id()
        ledger.set_trial_attr(job.study, job.id, ledger.ATTR_OWNER, me)
        ledger.set_trial_attr(job.study, job.id, ledger.ATTR_JOB, me)
    reporter = TrialReporter(job.judged, job.trial, job.sweeper.monitor)
    try:
        with job.heartbeat():
            with contextlib.ExitStack() as seats:  # the fit over, its seat goes to the next
                seats.enter_context(devices.trial_gpus(
                    cfg.trainer, job.sweeper.get("trials_per_gpu", 1), beat=job.beat))
                prepared = _fit(cfg, job, reporter)
            with ledger.uninterrupted():  # the outcome is written whole, or Ctrl-C came first
                return _finish(job, reporter, prepared, first_device(cfg.trainer))
    except (KeyboardInterrupt, SystemExit):
        with ledger.uninterrupted():
            if ending.abandon(job.study, job.id):
                trial_logger.end_trial_run(job.logger, "FAIL",
                                           {"plateau.interrupted": "true"}, "KILLED")
        raise KeyboardInterrupt from None
    except Exception as err:  # a failing trial must not end the sweep
        with ledger.uninterrupted():
            _fail(cfg, job, err)
        return float("nan")


def _finish(job: _JobTrial, reporter: TrialReporter, prepared: PreparedTrial,
            device: torch.device) -> float:
    """Diagnose the fit and tell its outcome; a fit without a finite objective raises."""
    model = prepared.model
    value = best_objective(model) if model.best_objective.update_count else float("nan")
    _diagnose(job, reporter, prepared, value)
    if not math.isfinite(value):
        raise RuntimeError(f"the trial ended without a finite {model.objective}: "
                           f"{reporter.reason or 'no validated epoch'}")
    return _tell_outcome(job, reporter, model, trial_values(job.objectives, prepared, value,
                                                                 device))


def trial_values(objectives: Objectives, prepared: PreparedTrial, value: float,
                 device: torch.device) -> list[float]:
    """The trial's value of each objective: ``value`` (the first's best epoch), the other
    ``val/*`` metrics at that epoch, and the serving cost when an objective is one (measured
    here, on the trial's device, and logged to the trial's MLflow run)."""
    if not objectives.multi:
        return [value]
    cost: dict[str, float] = {}
    if objectives.needs_cost:
        model = prepared.model
        channels, height, width = prepared.datamodule.data_config["input_size"]  # type: ignore[attr-defined]
        cost = serving_cost(model, (channels, height, width), device).metrics()
        if prepared.logger is not None:
            prepared.logger.log_metrics(cost)
    return objectives.values({**prepared.model.at_best, objectives.first: value}, cost)


def _diagnose(job: _JobTrial, reporter: TrialReporter, prepared: PreparedTrial,
              value: float) -> None:
    """The doctor's label for the fit (best objective ``value``), with how it ended and where
    it stands in the study now (the study report reads it again against the final field),
    and the curves it read."""
    completes = not reporter.pruned and math.isfinite(value)
    complete = [t.value for t in job.judged.get_trials(deepcopy=False,
                                                       states=(TrialState.COMPLETE,))
                if t.value is not None]
    maximize = job.judged.direction == optuna.study.StudyDirection.MAXIMIZE
    context = Context(reporter.ending, completes and in_top_quarter(value, complete, maximize))
    diagnosis = prepared.diagnose(context)
    job.trial.set_user_attr(ledger.ATTR_DIAGNOSIS, diagnosis.label)
    job.trial.set_user_attr(ledger.ATTR_DIAGNOSIS_REASON, diagnosis.explained())
    curves = prepared.curves.curves
    job.trial.set_user_attr(ledger.ATTR_CURVES, curves.series())
    _store_confusion(job.trial, curves.confusion, getattr(prepared.datamodule, "classes", []))


def _fit(cfg: DictConfig, job: _JobTrial, reporter: TrialReporter) -> PreparedTrial:
    """Build the trial, create its MLflow run and fit; an interrupted fit raises."""
    prepared = prepare_trial(cfg, callbacks=[reporter], tags=job.tags,
                             searched=job.trial.params)
    job.logger = prepared.logger
    if job.logger is not None:
        job.trial.set_user_attr(ledger.ATTR_RUN_ID, job.logger.run_id)
    fit_started = time.perf_counter()
    with ddp.ranks_rerun_this_job(cfg.trainer):
        prepared.trainer.fit(prepared.model, datamodule=prepared.datamodule)
    job.trial.set_user_attr(ledger.ATTR_FIT_SECONDS,
                            round(time.perf_counter() - fit_started, 4))
    if prepared.trainer.interrupted:
        raise KeyboardInterrupt
    return prepared


def _fail(cfg: DictConfig, job: _JobTrial, err: Exception) -> None:
    """Tell the study the trial failed with ``err``; a full disk halts the sweep instead
    (it is not the trial's fault, and every later trial would fail the same way). An
    error after the trial's end was told (its MLflow run's end) leaves that end as told."""
    number = job.trial.number
    full_disk = full_disk_line(err, f"trial {number}")
    if full_disk is not None:
        _halt(job, full_disk)
        return
    message = error_line(err)
    if not ending.fail(job.study, job.id, message):
        log.warning("trial %d: %s, after the trial had ended", number, message)
        _end_run_as_told(job)
        return
    log.error("trial %d failed: %s", number, message)
    if not trial_logger.has_run(job.logger):  # failed before its run existed
        _record_failed_run(job, cfg, message)
        return
    try:
        trial_logger.end_trial_run(job.logger, "FAIL", {"plateau.error": message}, "FAILED")
    except Exception as mlflow_err:  # noqa: BLE001 -- the study has the FAIL either way
        log.warning("trial %d: its MLflow run not ended (%s)", number, error_line(mlflow_err))


def _end_run_as_told(job: _JobTrial) -> None:
    """End the trial's MLflow run as the study holds the trial (already ended)."""
    state = ledger.frozen_trial(job.study, job.id).state
    status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}.get(state, "FAILED")
    try:
        trial_logger.end_trial_run(job.logger, state.name, {}, status)
    except Exception as mlflow_err:  # noqa: BLE001 -- the study has the outcome either way
        log.warning("trial %d: its MLflow run not ended (%s)", job.trial.number,
                    error_line(mlflow_err))


def _halt(job: _JobTrial, message: str) -> None:
    """Abandon the trial (queued again, not counted) and tell the sweeper to stop the sweep
    with ``message`` (:data:`sweeps.ledger.ATTR_HALT`; read back by the sweeper after the
    job, wherever the launcher ran it)."""
    log.error("trial %d stopped: %s", job.trial.number, message)
    ending.abandon(job.study, job.id, attrs={ledger.ATTR_HALT: message})
    try:
        trial_logger.end_trial_run(job.logger, "FAIL", {"plateau.error": message,
                                                        "plateau.interrupted": "true"},
                                   "KILLED")
    except Exception as err:  # noqa: BLE001 -- the MLflow store may sit on the full disk
        log.warning("trial %d: its MLflow run not ended (%s)", job.trial.number,
                    error_line(err))


def _store_confusion(trial: optuna.trial.Trial, confusion: list[list[int]],
                     classes: list[str]) -> None:
    """Keep the last validation confusion matrix and class names on the trial.

    Skipped above :data:`MAX_CONFUSION_CLASSES` classes: the matrix grows with their square,
    and a user attribute is one JSON text column in the study's database.
    """
    if not confusion or len(confusion) > MAX_CONFUSION_CLASSES:
        return
    trial.set_user_attr(ledger.ATTR_CONFUSION, confusion)
    trial.set_user_attr(ledger.ATTR_CLASSES, [str(name) for name in classes])


def _record_failed_run(job: _JobTrial, cfg: DictConfig, message: str) -> None:
    try:
        run_id = tracking.record_failed_run(cfg, job.tags, message)
    except Exception as err:  # the trial's FAIL is recorded in the study either way
        log.warning("trial %d: no MLflow run recorded for its failure (%s)", job.trial.number,
                    error_line(err))
        return
    if run_id:
        ledger.set_trial_attr(job.study, job.id, ledger.ATTR_RUN_ID, run_id)


def _tell_outcome(job: _JobTrial, reporter: TrialReporter, model: ImageClassifier,
                  values: list[float]) -> float:
    """Tell the finite objective ``values`` (one per objective): their MLflow metrics first,
    so that an MLflow error fails the trial before the study holds its end; then the study;
    then the run's end."""
    logger = job.logger
    value = values[0]
    attrs: dict[str, object] = {ledger.ATTR_OBJECTIVE: value}
    tags: dict[str, str] = {}
    if reporter.reason:
        attrs |= {ledger.ATTR_PRUNE_REASON: reporter.reason,
                  ledger.ATTR_STOPPED_EPOCH: reporter.stopped_epoch}
        tags = {"plateau.stop_reason": reporter.reason,
                "plateau.stopped_epoch": str(reporter.stopped_epoch)}
    if logger is not None:
        trial_logger.log_objective(logger, value)
        if job.objectives.multi:
            logger.log_metrics({f"objective/{name}": v for name, v
                                in zip(job.objectives.metrics, values, strict=True)})
    state = "PRUNED" if reporter.pruned else "COMPLETE"
    # a pruned trial's value is its best objective so far, not the last (monitored) report
    told = (ending.prune(job.study, job.id, values, attrs) if reporter.pruned
            else ending.complete(job.study, job.id, values, attrs))
    if not told:  # declared dead while it ran (its heartbeat could not be written)
        log.warning("trial %d ended after another worker had ended it: its %s %s is not "
                    "recorded", job.trial.number, state, value)
        _end_run_as_told(job)
        return float("nan")
    # a pruned trial's run ends KILLED: the runs table shows it apart from complete ones
    trial_logger.end_trial_run(logger, state, tags, "KILLED" if state == "PRUNED" else None)
    log.info("trial %d %s, %s_best = %.4f", job.trial.number, state, model.objective, value)
    return value

"""The job side of a sweep: one Hydra job = one Optuna trial, possibly in another process.

The sweeper asks the study for a trial and passes its id as ``trial_id=N``. The job rebuilds
the live trial from the shared storage (``optuna.trial.Trial(study, N)``), reports its
validation loss each epoch, stops when the pruner says so, and tells the study how the trial
ended. Launchers that run jobs elsewhere (joblib, submitit, SLURM) therefore prune exactly
like the in-process basic launcher.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Sequence

import lightning.pytorch as pl
import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from lightning_modules.classifier import ImageClassifier
from sweeps import ddp, devices, tracking
from sweeps.errors import full_disk_line, one_line
from sweeps.pruning import StagnationPruner, aligned, monitor_direction
from sweeps.storage import DEFAULT_STUDY_NAME, job_storage_url, load_study
from sweeps.trial import best_objective, prepare_trial

log = logging.getLogger(__name__)

#: Trial user attributes written by plateau (also read by the sweeper and reports).
ATTR_ERROR = "error"
ATTR_PRUNE_REASON = "prune_reason"
ATTR_STOPPED_EPOCH = "stopped_epoch"
ATTR_INTERRUPTED = "interrupted"
#: Why the whole sweep must stop after this trial (a fault of the machine, not of the trial,
#: e.g. a full disk): the trial is abandoned like an interrupted one, the sweeper stops.
ATTR_HALT = "halts_sweep"
#: Asked by one worker while others had already claimed the rest of the budget: never run.
ATTR_WITHDRAWN = "withdrawn"
ATTR_HEARTBEAT = "heartbeat"
ATTR_OWNER = "owner"
ATTR_RUN_ID = "mlflow_run_id"
ATTR_OVERRIDES = "overrides"
ATTR_OBJECTIVE = "best_objective"
#: Seconds the trial spent in ``trainer.fit``: the rest of its time is plateau's and MLflow's.
ATTR_FIT_SECONDS = "fit_seconds"
ATTR_DIAGNOSIS = "diagnosis"
ATTR_DIAGNOSIS_REASON = "diagnosis_reason"
#: The last validation confusion matrix (rows: true class) and the class names, for the
#: study report's per-class recall; not stored above :data:`MAX_CONFUSION_CLASSES` classes.
ATTR_CONFUSION = "val_confusion"
ATTR_CLASSES = "classes"
MAX_CONFUSION_CLASSES = 100


def owner_id() -> str:
    """``host:pid`` of this process, to tell live trials from those of a killed sweep."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str) -> bool | None:
    """Whether the :func:`owner_id` process still runs; None when it is on another host."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


class RankZeroStop(pl.Callback):
    """Stop a fit on every rank at once when rank zero decides to (:meth:`decide`).

    In a DDP trial only rank zero talks to the study; the other ranks run this callback's
    plain form, which never decides to stop but joins the vote, so all ranks end the fit at
    the same epoch. Outside DDP the vote is the decision itself.
    """

    def decide(self, trainer: pl.Trainer) -> bool:
        """Whether the fit should end after this validation (called on rank zero only)."""
        return False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        stop = self.decide(trainer) if trainer.is_global_zero else False
        if trainer.strategy.reduce_boolean_decision(stop, all=False):
            trainer.should_stop = True


class TrialReporter(RankZeroStop):
    """Report ``monitor`` to the Optuna trial each epoch and stop the fit when told.

    Ends the fit (``trainer.should_stop``) when the value is NaN/inf (pruned at once), when
    the pruner prunes, or when a :class:`StagnationPruner` sees a stagnating but competitive
    trial (stopped early, later told COMPLETE). Under DDP it reports once, from rank zero.
    """

    def __init__(self, study: optuna.Study, trial: optuna.trial.Trial, monitor: str) -> None:
        self.study = study
        self.trial = trial
        self.monitor = monitor
        self.pruned = False
        self.reason: str | None = None
        self.stopped_epoch: int | None = None
        self._values: dict[int, float] = {}

    def _stop(self, trainer: pl.Trainer, pruned: bool, reason: str) -> bool:
        self.pruned, self.reason = pruned, reason
        self.stopped_epoch = trainer.current_epoch
        return True

    def decide(self, trainer: pl.Trainer) -> bool:
        self.trial.set_user_attr(ATTR_HEARTBEAT, time.time())
        metric = trainer.callback_metrics.get(self.monitor)
        if metric is None:
            return False
        epoch, value = trainer.current_epoch, float(metric)
        if not math.isfinite(value):
            return self._stop(trainer, True, f"{self.monitor} is {value} at epoch {epoch}: "
                                             "diverged")
        reported = aligned(value, self.study.direction, monitor_direction(self.monitor))
        self._values[epoch] = reported
        self.trial.report(reported, epoch)
        if self.trial.should_prune():
            return self._stop(trainer, True, f"pruned by {type(self.study.pruner).__name__} at "
                                             f"epoch {epoch}: {self.monitor} stalled or below "
                                             "the median")
        pruner = self.study.pruner
        if isinstance(pruner, StagnationPruner) and pruner.stagnates(
                [self._values[e] for e in sorted(self._values)], self.study.direction):
            return self._stop(trainer, False, f"{self.monitor} stopped improving at epoch "
                                              f"{epoch} (competitive: completed early)")
        return False


def is_finished(trial: FrozenTrial) -> bool:
    """Counts toward ``n_trials`` (and in the study report): COMPLETE, PRUNED, or FAIL not
    caused by an interruption (see :func:`abandon`) nor a withdrawal (see :func:`withdraw`)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not (
        trial.user_attrs.get(ATTR_INTERRUPTED, False)
        or trial.user_attrs.get(ATTR_WITHDRAWN, False))


def claims_budget(trial: FrozenTrial) -> bool:
    """Holds one unit of ``n_trials``: finished (:func:`is_finished`) or running."""
    return trial.state == TrialState.RUNNING or is_finished(trial)


def within_budget(trials: Sequence[FrozenTrial], trial_number: int, n_trials: int) -> bool:
    """Whether trial ``trial_number`` of the study's ``trials`` fits in ``n_trials``.

    Workers sharing a study check the budget, then ask; two of them can ask for the last
    unit at once. Trial numbers are handed out in order by the storage, so the earlier
    number keeps the unit and the later one must be withdrawn.
    """
    before = [t for t in trials if t.number < trial_number and claims_budget(t)]
    return len(before) < n_trials


def withdraw(study: optuna.Study, trial_id: int) -> None:
    """End an asked trial that will never run (the budget went to another worker).

    It is told FAIL marked ``withdrawn``, which does not count toward ``n_trials``; params it
    took from the queue (a re-run of an interrupted trial) are queued again.
    """
    frozen = study._storage.get_trial(trial_id)
    study._storage.set_trial_user_attr(trial_id, ATTR_WITHDRAWN, True)
    study.tell(frozen.number, state=TrialState.FAIL)
    fixed = frozen.system_attrs.get("fixed_params")
    if fixed:
        study.enqueue_trial(fixed, skip_if_exists=False)


def abandon(study: optuna.Study, trial: FrozenTrial) -> None:
    """Fail a trial cut off by an interrupted or killed sweep and queue its params again.

    Marked ``interrupted``, it does not count toward ``n_trials``; the re-queued trial does.
    """
    study._storage.set_trial_user_attr(trial._trial_id, ATTR_INTERRUPTED, True)
    study.tell(trial.number, state=TrialState.FAIL)
    study.enqueue_trial(trial.params, skip_if_exists=False)


def _sweeper_study(trial_id: int) -> tuple[optuna.Study, optuna.trial.Trial, DictConfig]:
    sweeper = HydraConfig.get().sweeper
    study = load_study(job_storage_url(sweeper.storage),
                       sweeper.study_name or DEFAULT_STUDY_NAME, pruner=instantiate(sweeper.pruner))
    return study, optuna.trial.Trial(study, trial_id), sweeper


def _error_line(err: BaseException) -> str:
    return one_line(f"{type(err).__name__}: {err}")


def run_study_trial(cfg: DictConfig) -> float:
    """Run the job of trial ``cfg.trial_id`` and tell the study its outcome.

    On a machine with GPUs the trial first takes a seat on its own GPU
    (:func:`sweeps.devices.trial_gpus`), waiting while parallel trials hold every seat.
    A trial that raises is told FAIL with its error as the ``error`` user attribute (and
    MLflow tag); the job itself returns NaN instead of raising, so the sweep goes on. An
    interrupt (Ctrl-C) marks the trial FAIL with ``interrupted`` and propagates.
    """
    study, trial, sweeper = _sweeper_study(int(cfg.trial_id))
    trial.set_user_attr(ATTR_OWNER, owner_id())
    trial.set_user_attr(ATTR_HEARTBEAT, time.time())
    reporter = TrialReporter(study, trial, sweeper.monitor)
    tags = {"plateau.trial_number": str(trial.number), "plateau.study": study.study_name}
    parent = study.user_attrs.get(tracking.STUDY_RUN_ATTR)
    if parent:
        tags["mlflow.parentRunId"] = parent
    logger = None
    seats = contextlib.ExitStack()
    try:
        seats.enter_context(devices.trial_gpus(
            cfg.trainer, sweeper.get("trials_per_gpu", 1),
            beat=lambda: trial.set_user_attr(ATTR_HEARTBEAT, time.time())))
        prepared = prepare_trial(cfg, callbacks=[reporter], tags=tags)
        logger = prepared.logger
        if logger is not None:
            trial.set_user_attr(ATTR_RUN_ID, logger.run_id)
        fit_started = time.perf_counter()
        with ddp.ranks_rerun_this_job(cfg.trainer):
            prepared.trainer.fit(prepared.model, datamodule=prepared.datamodule)
        trial.set_user_attr(ATTR_FIT_SECONDS, round(time.perf_counter() - fit_started, 4))
        if prepared.trainer.interrupted:
            raise KeyboardInterrupt
    except (KeyboardInterrupt, SystemExit):
        abandon(study, study._storage.get_trial(trial._trial_id))
        tracking.end_trial_run(logger, "FAIL", {"plateau.interrupted": "true"}, "KILLED")
        raise KeyboardInterrupt from None
    except Exception as err:  # a failing trial must not end the sweep
        full_disk = full_disk_line(err, f"trial {trial.number}")
        if full_disk is not None:  # nor count: every later trial would fail the same way
            _halt(study, trial, logger, full_disk)
            return float("nan")
        message = _error_line(err)
        log.error("trial %d failed: %s", trial.number, message)
        trial.set_user_attr(ATTR_ERROR, message)
        study.tell(trial, state=TrialState.FAIL)
        if logger is None or logger._run_id is None:  # failed before its run existed
            _record_failed_run(study, trial, cfg, tags, message)
        else:
            tracking.end_trial_run(logger, "FAIL", {"plateau.error": message}, "FAILED")
        return float("nan")
    finally:
        seats.close()  # the fit is over: its GPU seat goes to the next trial
    diagnosis = prepared.diagnose()
    trial.set_user_attr(ATTR_DIAGNOSIS, diagnosis.label)
    trial.set_user_attr(ATTR_DIAGNOSIS_REASON, diagnosis.reason)
    _store_confusion(trial, prepared.curves.curves.confusion,
                     getattr(prepared.datamodule, "classes", []))
    return _tell_outcome(study, trial, reporter, prepared.model, logger)


def _halt(study: optuna.Study, trial: optuna.trial.Trial, logger: MLFlowLogger | None,
          message: str) -> None:
    """Abandon ``trial`` (queued again, not counted) and tell the sweeper to stop the sweep
    with ``message`` (:data:`ATTR_HALT`; read back by the sweeper after the job, wherever the
    launcher ran it)."""
    log.error("trial %d stopped: %s", trial.number, message)
    study._storage.set_trial_user_attr(trial._trial_id, ATTR_HALT, message)
    abandon(study, study._storage.get_trial(trial._trial_id))
    try:
        tracking.end_trial_run(logger, "FAIL", {"plateau.error": message,
                                                "plateau.interrupted": "true"}, "KILLED")
    except Exception as err:  # the MLflow store may sit on the full disk: the study knows
        log.warning("trial %d: its MLflow run not ended (%s)", trial.number, _error_line(err))


def _store_confusion(trial: optuna.trial.Trial, confusion: list[list[int]],
                     classes: list[str]) -> None:
    """Keep the last validation confusion matrix and class names on the trial.

    Skipped above :data:`MAX_CONFUSION_CLASSES` classes: the matrix grows with their square,
    and a user attribute is one JSON text column in the study's database.
    """
    if not confusion or len(confusion) > MAX_CONFUSION_CLASSES:
        return
    trial.set_user_attr(ATTR_CONFUSION, confusion)
    trial.set_user_attr(ATTR_CLASSES, [str(name) for name in classes])


def _record_failed_run(study: optuna.Study, trial: optuna.trial.Trial, cfg: DictConfig,
                       tags: dict[str, str], message: str) -> None:
    try:
        run_id = tracking.record_failed_run(cfg, tags, message)
    except Exception as err:  # the trial's FAIL is recorded in the study either way
        log.warning("trial %d: no MLflow run recorded for its failure (%s)", trial.number,
                    _error_line(err))
        return
    if run_id:
        study._storage.set_trial_user_attr(trial._trial_id, ATTR_RUN_ID, run_id)


def _tell_outcome(study: optuna.Study, trial: optuna.trial.Trial, reporter: TrialReporter,
                  model: ImageClassifier, logger: MLFlowLogger | None) -> float:
    value = best_objective(model) if model.best_objective.update_count else float("nan")
    if math.isfinite(value):
        trial.set_user_attr(ATTR_OBJECTIVE, value)
    tags: dict[str, str] = {}
    if reporter.reason:
        trial.set_user_attr(ATTR_PRUNE_REASON, reporter.reason)
        trial.set_user_attr(ATTR_STOPPED_EPOCH, reporter.stopped_epoch)
        tags = {"plateau.stop_reason": reporter.reason,
                "plateau.stopped_epoch": str(reporter.stopped_epoch)}
    if reporter.pruned or not math.isfinite(value):
        study.tell(trial, state=TrialState.PRUNED)
        state = "PRUNED"
    else:
        study.tell(trial, value)
        state = "COMPLETE"
    if logger is not None and math.isfinite(value):
        tracking.log_objective(logger, value)
    tracking.end_trial_run(logger, state, tags, None)
    log.info("trial %d %s, %s_best = %.4f", trial.number, state, model.objective, value)
    return value

"""plateau's per-trial work around a fit, without the fit, each part timed: what
``benchmarks/orchestration_growth.py`` measures at each size of a study.

Each part runs plateau's own code where it has one: the job loads the study and rebuilds its
trial (:mod:`sweeps.storage`, :mod:`sweeps.ledger`), reports each epoch through
:class:`~sweeps.job.reporter.TrialReporter`, writes its MLflow run through
:mod:`sweeps.job.logger`, and the sweeper prints its :class:`~sweeps.sweeper.progress.Progress`
line. What a fit would produce (the monitored loss, the best objective) is drawn at random,
so trials end complete, completed early or pruned by the default pruner's own decisions.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, Trial, TrialState
from synthetic_study import OWNER

from doctor.curves import in_top_quarter
from errors import console
from sweeps import ledger
from sweeps.job import logger as trial_logger
from sweeps.job.reporter import TrialReporter
from sweeps.storage import DEFAULT_STUDY_NAME, job_storage_url, load_study
from sweeps.sweeper.progress import Progress

CLASSES = [str(i) for i in range(10)]


class TimedSampler(BaseSampler):
    """``inner`` with the seconds spent in its sampling calls added up in :attr:`seconds`."""

    def __init__(self, inner: BaseSampler) -> None:
        self.inner = inner
        self.seconds = 0.0

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        started = time.perf_counter()
        try:
            return self.inner.infer_relative_search_space(study, trial)
        finally:
            self.seconds += time.perf_counter() - started

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            return self.inner.sample_relative(study, trial, search_space)
        finally:
            self.seconds += time.perf_counter() - started

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        started = time.perf_counter()
        try:
            return self.inner.sample_independent(study, trial, param_name, param_distribution)
        finally:
            self.seconds += time.perf_counter() - started

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


class ReadClock:
    """Milliseconds ``study`` spends reading its trials.

    Every read (``get_trials``, ``trials``, the pruners' own) passes through Optuna's
    ``Study._get_trials``; it is timed on this one study object only.
    """

    def __init__(self, study: optuna.Study) -> None:
        self.ms = 0.0
        read = study._get_trials

        def timed(*args: Any, **kwargs: Any) -> list[FrozenTrial]:
            started = time.perf_counter()
            try:
                return read(*args, **kwargs)
            finally:
                self.ms += _ms(started)

        study._get_trials = timed  # type: ignore[method-assign]

    def take(self) -> float:
        """The milliseconds since the last take."""
        ms, self.ms = self.ms, 0.0
        return ms


@dataclass
class JobOutcome:
    """How a measured trial ended, and the milliseconds of its parts: the job's opening and
    reads of the study, its per-epoch reports and decisions, its outcome and the sweeper's
    look at it (each without the reads)."""

    reads_ms: float
    reports_ms: float
    tell_ms: float
    state: str
    value: float
    epochs: int
    reason: str = ""
    losses: list[float] = field(default_factory=list)


def _ms(started: float) -> float:
    return 1000 * (time.perf_counter() - started)


def job_trial(cfg: DictConfig, study: optuna.Study, trial: Trial, progress: Progress,
              epochs: int) -> JobOutcome:
    """The job of ``trial`` (asked by the sweeper on ``study``) without its fit, then the
    sweeper's look at how it ended."""
    sweeper = cfg.hydra.sweeper
    started = time.perf_counter()
    job_study = load_study(job_storage_url(sweeper.storage),
                           sweeper.study_name or DEFAULT_STUDY_NAME,
                           pruner=instantiate(sweeper.pruner))
    trial_id = ledger.trial_id_of(job_study, trial.number)
    live = ledger.live_trial(job_study, trial_id)
    opened_ms, reads = _ms(started), ReadClock(job_study)
    rng = random.Random(trial.number)

    started = time.perf_counter()
    live.set_user_attr(ledger.ATTR_OWNER, OWNER)
    live.set_user_attr(ledger.ATTR_HEARTBEAT, time.time())
    reporter = TrialReporter(job_study, live, str(sweeper.monitor))
    best, losses = _epochs(reporter, str(cfg.objective.metric), epochs, rng)
    epoch_reads_ms = reads.take()
    reports_ms = _ms(started) - epoch_reads_ms

    started = time.perf_counter()
    _outcome(job_study, live, reporter, best, len(losses), rng)
    ledger.frozen_trial(study, ledger.trial_id(trial))  # the sweeper: did the job tell?
    with console.capture():  # rendered, not shown
        progress.finished(trial.number)
    outcome_reads_ms = reads.take()
    return JobOutcome(opened_ms + epoch_reads_ms + outcome_reads_ms, reports_ms,
                      _ms(started) - outcome_reads_ms,
                      "PRUNED" if reporter.pruned else "COMPLETE", best, len(losses),
                      reporter.reason or "", losses)


def _epochs(reporter: TrialReporter, objective: str, epochs: int, rng: random.Random
            ) -> tuple[float, list[float]]:
    """Each epoch's report and decision, on a fit's random numbers; the best objective and
    the monitored losses of the epochs run."""
    best, losses = 0.0, []
    for epoch in range(epochs):
        best = max(best, rng.uniform(0.1, 1.0))
        losses.append(rng.uniform(0.2, 1.5))
        trainer = SimpleNamespace(
            current_epoch=epoch, max_epochs=epochs,
            callback_metrics={reporter.monitor: losses[-1], f"{objective}_best": best},
            lightning_module=SimpleNamespace(objective=objective))
        if reporter.decide(trainer):  # type: ignore[arg-type]
            break
    return best, losses


def _outcome(study: optuna.Study, live: Trial, reporter: TrialReporter, best: float,
             epochs: int, rng: random.Random) -> None:
    """What the job writes once the fit is over: the diagnosis (after reading the complete
    trials), the curves and confusion matrix, the stop reason, the tell."""
    complete = [t.value for t in study.get_trials(deepcopy=False,
                                                  states=(TrialState.COMPLETE,))
                if t.value is not None]
    in_top_quarter(best, complete, study.direction == StudyDirection.MAXIMIZE)
    series = {name: [round(rng.random(), 4) for _ in range(epochs)]
              for name in ("train_loss", "val_loss", "train_acc", "val_acc")}
    for key, value in {ledger.ATTR_DIAGNOSIS: "healthy",
                       ledger.ATTR_DIAGNOSIS_REASON: "val loss still falling at the end",
                       ledger.ATTR_CURVES: series,
                       ledger.ATTR_CONFUSION: [[rng.randrange(40) for _ in CLASSES]
                                               for _ in CLASSES],
                       ledger.ATTR_CLASSES: CLASSES, ledger.ATTR_OBJECTIVE: best}.items():
        live.set_user_attr(key, value)
    if reporter.reason:
        live.set_user_attr(ledger.ATTR_PRUNE_REASON, reporter.reason)
        live.set_user_attr(ledger.ATTR_STOPPED_EPOCH, reporter.stopped_epoch)
    if reporter.pruned:
        ledger.tell_pruned(study, ledger.trial_id(live), best)
    else:
        study.tell(live, best)


def mlflow_run(job_cfg: DictConfig, study_name: str, trial: Trial, job: JobOutcome) -> float:
    """Milliseconds to write ``trial``'s MLflow run as its job does (Lightning's calls
    included: the run's creation on first use, per-epoch metrics, ``finalize``)."""
    rng = random.Random(trial.number)
    started = time.perf_counter()
    tags = {"plateau.trial_number": str(trial.number), "plateau.study": study_name}
    logger = trial_logger.create_logger(job_cfg, tags)
    assert logger is not None
    trial_logger.log_trial_config(logger, job_cfg, trial.params)
    logger.log_hyperparams({"model.total_params": 3_400_000, "data.num_classes": len(CLASSES)})
    for epoch, loss in enumerate(job.losses):
        logger.log_metrics({"train/loss": rng.random(), "train/acc": rng.random(),
                            "lr-AdamW/pg1": 1e-3, "lr-AdamW/pg2": 1e-4, "epoch": epoch})
        logger.log_metrics({"val/loss": loss, "val/acc": rng.random(),
                            "val/f1_macro": rng.random(), "val/balanced_acc": rng.random(),
                            "val/f1_macro_best": job.value,
                            "model/trainable_params": 3_400_000.0, "epoch": epoch})
    logger.finalize("success")  # Lightning, at the end of the fit
    trial_logger.tag_run(logger, {"plateau.diagnosis": "healthy",
                                  "plateau.diagnosis_reason": "val loss still falling"})
    if math.isfinite(job.value):
        trial_logger.log_objective(logger, job.value)
    tags = {"plateau.stop_reason": job.reason} if job.reason else {}
    trial_logger.end_trial_run(logger, job.state, tags,
                               "KILLED" if job.state == "PRUNED" else None)
    return _ms(started)

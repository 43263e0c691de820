"""Run one transfer-learning trial from a composed config and return its objective.

A job is one of three things: an extra rank of a DDP trial (:func:`run_extra_rank`), a trial
of a sweep reporting into its live Optuna trial (:func:`sweeps.job.study_trial.run_study_trial`,
when the sweeper set ``trial``), or a single run (:func:`run_single`).
"""

from __future__ import annotations

import lightning.pytorch as pl
from omegaconf import DictConfig

from errors import PlateauError, console
from sweeps.job import ddp
from sweeps.job import logger as trial_logger
from sweeps.job.allocator import keep_freed_memory
from sweeps.job.build import best_objective, first_device
from sweeps.job.disk import full_disk_line
from sweeps.job.prepare import prepare_trial
from sweeps.job.reporter import RankZeroStop
from sweeps.job.study_trial import run_study_trial, trial_values
from sweeps.metrics import apply_optimized_metric
from sweeps.objectives import Objectives
from sweeps.schema.checks import check_config
from sweeps.verbosity import is_quiet, quiet_libraries


def run_trial(cfg: DictConfig) -> float:
    """Fine-tune ``cfg.backbone`` on ``cfg.data`` with every knob of ``cfg``; log to MLflow.

    Under ``python sweep.py -m`` (``cfg.trial`` set by plateau's sweeper) the trial reports
    to its Optuna trial and may be pruned; see :mod:`sweeps.job.study_trial`.

    Returns:
        The best value over epochs of ``cfg.objective.metric`` (``<metric>_best``).
    """
    keep_freed_memory()  # every process that trains: sweep, launcher's, DDP rank, single run
    apply_optimized_metric(cfg)
    check_config(cfg)  # before anything is created: a wrong value is one line
    if is_quiet(cfg, sweep=cfg.get("trial") is not None):
        quiet_libraries()  # again in each job: Hydra configures logging anew for every job
    if ddp.ddp_rank() > 0:
        return run_extra_rank(cfg)
    if cfg.get("trial") is not None:
        return run_study_trial(cfg)
    return run_single(cfg)


def run_extra_rank(cfg: DictConfig) -> float:
    """Rank 1..n-1 of a DDP trial: the same fit on its shard, quietly (see
    :mod:`sweeps.job.ddp`).

    In a sweep it joins the trial reporter's stop vote, so it ends the fit with rank zero.
    """
    callbacks: list[pl.Callback] = []
    if cfg.get("trial") is not None:
        callbacks.append(RankZeroStop())
    ddp.as_extra_rank(cfg)
    prepared = prepare_trial(cfg, callbacks)
    prepared.trainer.fit(prepared.model, datamodule=prepared.datamodule)
    return float("nan")


def run_single(cfg: DictConfig) -> float:
    """``python sweep.py``: fit, print the objective and the diagnosis."""
    prepared = prepare_trial(cfg)
    try:
        prepared.trainer.fit(prepared.model, datamodule=prepared.datamodule)
    except Exception as err:
        line = full_disk_line(err, "the run")
        if line is None:
            raise
        raise PlateauError(line) from err
    value = best_objective(prepared.model)
    if prepared.logger is not None:
        trial_logger.log_objective(prepared.logger, value)
    diagnosis = prepared.diagnose()
    objectives = Objectives.of(cfg)
    console.print(f"objective {prepared.model.objective}_best = {value:.4f} "
                  f"({objectives.directions[0]})")
    if objectives.multi:
        values = trial_values(objectives, prepared, value, first_device(cfg.trainer))
        console.print("at that epoch: " + ", ".join(
            f"{name} = {v:.4g}" for name, v in zip(objectives.metrics[1:], values[1:],
                                                     strict=True)))
    console.print(f"diagnosis: {diagnosis.label} ({diagnosis.explained()})", soft_wrap=True)
    return value

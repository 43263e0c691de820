"""The MLflow run of one trial, through Lightning's MLflow logger: created, tagged, ended."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from sweeps.tracking import (
    absolute_tracking_uri,
    experiment_name,
    knob_choices,
    knob_tags,
    mlflow_config,
    run_name,
    run_params,
)


class EpochMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger with the epoch as every metric's step (plateau logs only
    per-epoch metrics), so MLflow's charts and Optuna's intermediate values share an x axis:
    step 0 is the first epoch."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        super().log_metrics(metrics, step=int(epoch) if epoch is not None else step)


def create_logger(cfg: DictConfig, extra_tags: dict[str, str] | None = None
                  ) -> MLFlowLogger | None:
    """The MLflow logger of ``cfg.logger`` (None for ``logger=none``), run not yet created.

    ``extra_tags`` may hold ``mlflow.parentRunId`` to nest the run under a study's run.
    Lightning's own MLflow logger becomes :class:`EpochMLFlowLogger`; another ``_target_``
    is built as given.
    """
    logger_cfg = mlflow_config(cfg)
    if logger_cfg is None:
        return None
    choices = knob_choices(cfg)
    tags = knob_tags(choices) | (extra_tags or {})
    settings = {"tracking_uri": absolute_tracking_uri(logger_cfg.tracking_uri),
                "experiment_name": experiment_name(cfg),
                "run_name": run_name(choices, tags), "tags": tags}
    if logger_cfg._target_ in ("lightning.pytorch.loggers.MLFlowLogger",
                               "lightning.pytorch.loggers.mlflow.MLFlowLogger"):
        given = {str(k): v for k, v in logger_cfg.items() if k != "_target_"}
        return EpochMLFlowLogger(**(given | settings))
    return instantiate(logger_cfg, **settings)


def has_run(logger: MLFlowLogger | None) -> bool:
    """Whether ``logger``'s MLflow run exists (Lightning creates it on first use)."""
    return logger is not None and logger._run_id is not None


def log_trial_config(logger: MLFlowLogger, cfg: DictConfig,
                     searched: dict[str, Any] | None = None) -> None:
    """Log the run's params (:func:`sweeps.tracking.run_params`) and the whole resolved
    config as ``config/config.yaml``."""
    logger.log_hyperparams(run_params(cfg, searched))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="config")


def log_objective(logger: MLFlowLogger, value: float) -> None:
    logger.experiment.log_metric(logger.run_id, "objective", value)


def tag_run(logger: MLFlowLogger, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        logger.experiment.set_tag(logger.run_id, key, value)


def end_trial_run(logger: MLFlowLogger | None, state: str, tags: dict[str, str],
                  status: str | None) -> None:
    """Tag a trial's run with its study state; ``status`` terminates it (e.g. FAILED, KILLED)."""
    if not has_run(logger):
        return
    assert logger is not None
    tag_run(logger, {"plateau.state": state, **tags})
    if status is not None:
        logger.experiment.set_terminated(logger.run_id, status=status)

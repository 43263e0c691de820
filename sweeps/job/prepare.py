"""Prepare a trial to fit: its parts built and checked by the doctor, then its MLflow run,
curve recorder and trainer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from data_modules.cache_dir import cache_root
from data_modules.feature_cache import FeatureCache, attach_features
from data_modules.transforms import random_transforms
from doctor.diagnosis import Context, Diagnosis
from doctor.preflight import PreflightReport, run_preflight
from doctor.recorder import CurveRecorder
from doctor.settings import PreflightSettings, Thresholds
from lightning_modules.classifier import ImageClassifier
from lightning_modules.freezing import StageFreezing
from sweeps import tracking
from sweeps.job import logger as trial_logger
from sweeps.job.build import TrialParts, build, build_parts, first_device, resolve_precision
from sweeps.objectives import Objectives
from sweeps.schema.checks import check_config, doctor_settings
from sweeps.verbosity import is_quiet


@dataclass
class PreparedTrial:
    """Everything a fit needs, built and checked before the MLflow run exists."""

    model: ImageClassifier
    datamodule: pl.LightningDataModule
    trainer: pl.Trainer
    logger: MLFlowLogger | None
    curves: CurveRecorder

    def diagnose(self, context: Context | None = None) -> Diagnosis:
        """Diagnose the fit from its curves; tags the MLflow run with the result."""
        diagnosis = self.curves.diagnosis(context)
        if self.logger is not None:
            trial_logger.tag_run(self.logger, {"plateau.diagnosis": diagnosis.label,
                                               "plateau.diagnosis_reason":
                                                   diagnosis.explained()})
        return diagnosis


def preflight_settings(cfg: DictConfig) -> PreflightSettings:
    """The preflight's settings from ``cfg.doctor.preflight``."""
    return doctor_settings(cfg, "preflight", PreflightSettings)


def preflight(cfg: DictConfig, parts: TrialParts) -> PreflightReport:
    """Run the doctor's preflight checks on a built trial (see :mod:`doctor.preflight`)."""
    return run_preflight(
        parts.model, parts.freezing, parts.datamodule, backbone_name=cfg.backbone.name,
        weighted=parts.weighting.method != "none", objective=Objectives.of(cfg).first,
        settings=preflight_settings(cfg), cache_dir=cache_root(cfg.get("cache_dir")))


def preflight_config(cfg: DictConfig) -> PreflightReport:
    """Build the trial ``cfg`` describes (a ``hydra`` node is ignored) and run the preflight."""
    job = OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"])
    with open_dict(job):
        job["trial"] = None
    check_config(job)  # python -m doctor preflight reads the same values as a trial
    return preflight(job, build_parts(job))


def prepare_trial(cfg: DictConfig, callbacks: Sequence[pl.Callback] = (),
                  tags: dict[str, str] | None = None,
                  searched: dict[str, Any] | None = None) -> PreparedTrial:
    """Build backbone, data, model, logger and trainer from ``cfg``.

    Everything that can be wrong with the config or the data is checked before the MLflow
    run is created (including the doctor's preflight, unless ``doctor.preflight.enabled`` is
    false), so a mistake leaves no half-written run behind.
    """
    tracking.check_store(cfg)
    parts = build_parts(cfg)
    tags = dict(tags or {})
    if preflight_settings(cfg).enabled:
        report = preflight(cfg, parts)
        report.show(once=cfg.get("trial") is not None)  # a sweep's trials: new findings only
        report.raise_for_errors()
        tags.update(report.tags())
    tags["plateau.feature_cache"] = _use_feature_cache(cfg, parts)
    model, datamodule = parts.model, parts.datamodule
    curves = CurveRecorder(build_thresholds(cfg))
    logger = trial_logger.create_logger(cfg, tags)
    quiet = {"enable_progress_bar": False} if is_quiet(cfg, cfg.get("trial") is not None) else {}
    trainer = build(cfg, "trainer", precision=resolve_precision(cfg.trainer),
                    callbacks=[parts.freezing, curves, *callbacks],
                    logger=logger if logger is not None else False,
                    **_job_root_dir(cfg.trainer), **quiet)
    if logger is not None:
        trial_logger.log_trial_config(logger, cfg, searched)
        # trainable parameters change during a fit (gradual unfreezing): the metric
        # model/trainable_params follows them per epoch
        logger.log_hyperparams({"model.total_params": model.parameter_counts()[1],
                                "data.num_classes": datamodule.num_classes,
                                **_preprocessing_params(datamodule.data_config)})
    return PreparedTrial(model, datamodule, trainer, logger, curves)


def _preprocessing_params(data_config: dict[str, Any]) -> dict[str, str]:
    """What the network is fed, as resolved from the backbone (``data.mean: null`` in the
    config means the backbone's own): input side in pixels, normalization mean and std."""
    return {"input.size": str(data_config["input_size"][-1]),
            "input.mean": json.dumps([float(v) for v in data_config["mean"]]),
            "input.std": json.dumps([float(v) for v in data_config["std"]])}


def _job_root_dir(trainer_cfg: DictConfig) -> dict[str, str]:
    """Lightning writes checkpoints under ``default_root_dir``, by default the directory the
    command was started from: unless set, point it at the Hydra job's own output folder
    (``<sweep dir>/<trial number>`` in a sweep), beside the job's config and log."""
    if trainer_cfg.get("default_root_dir") is not None or not HydraConfig.initialized():
        return {}
    runtime = HydraConfig.get().runtime
    if OmegaConf.is_missing(runtime, "output_dir"):  # composed without a run (compose API)
        return {}
    return {"default_root_dir": str(runtime.output_dir)}


def _use_feature_cache(cfg: DictConfig, parts: TrialParts) -> str:
    """Train on cached backbone features when nothing of the backbone can change during the
    fit and training images are transformed deterministically (``feature_cache``).

    Returns how: ``hit`` (both splits cached), ``computed``, or ``off``.
    """
    backbone = parts.model.backbone
    if not (cfg.get("feature_cache", False) and isinstance(parts.freezing, StageFreezing)
            and parts.freezing.freezes_whole_backbone(backbone)
            and not random_transforms(parts.datamodule.train_transform)):
        return "off"
    cache = FeatureCache(cache_root(cfg.get("cache_dir")) / "features")
    hit = attach_features(parts.datamodule, backbone, cache, first_device(cfg.trainer))
    return "hit" if hit else "computed"


def build_thresholds(cfg: DictConfig) -> Thresholds:
    """The doctor's diagnosis thresholds from ``cfg.doctor.thresholds``."""
    return doctor_settings(cfg, "thresholds", Thresholds)



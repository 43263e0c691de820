"""Run one transfer-learning trial from a composed config and return its objective."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import lightning.pytorch as pl
import timm.data
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from data_modules.cache_dir import cache_root
from data_modules.class_balance import ClassWeighting
from data_modules.datamodules import ClassificationDataModule
from data_modules.feature_cache import FeatureCache, attach_features
from data_modules.transforms import random_transforms
from doctor.diagnosis import Diagnosis, Thresholds
from doctor.preflight import PreflightReport, PreflightSettings, run_preflight
from doctor.recorder import CurveRecorder
from lightning_modules.classifier import ImageClassifier
from lightning_modules.freezing import StageFreezing
from sweeps import ddp, devices, tracking
from sweeps.errors import PlateauError, console, full_disk_line
from sweeps.pruning import METRICS

log = logging.getLogger(__name__)

SettingsT = TypeVar("SettingsT")

DIRECTIONS = ("maximize", "minimize")


def build(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """``instantiate(cfg[key])``, with config mistakes turned into one-line errors."""
    try:
        return instantiate(cfg[key], **kwargs)
    except MissingMandatoryValue as err:
        raise PlateauError(f"{err.full_key} is not set: add {err.full_key}=VALUE") from err
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, PlateauError):
            raise cause from None
        reason = str(cause or err).strip().splitlines()[-1]
        raise PlateauError(
            f"cannot build '{key}' from the config ({reason}): check the {key}.* values "
            "(python sweep.py --cfg job prints them)"
        ) from err


def resolve_precision(trainer_cfg: DictConfig) -> str | int:
    """``precision: auto`` -> bf16-mixed on a GPU that supports it, 32-true otherwise."""
    precision = trainer_cfg.get("precision", "auto")
    if precision != "auto":
        return precision
    return "bf16-mixed" if _on_gpu(trainer_cfg) and torch.cuda.is_bf16_supported() else "32-true"


def _on_gpu(trainer_cfg: DictConfig) -> bool:
    """The trainer will run on a CUDA GPU (``accelerator`` auto/gpu/cuda, and one is visible)."""
    return trainer_cfg.get("accelerator", "auto") in devices.GPU_ACCELERATORS \
        and torch.cuda.is_available()


def _first_device(trainer_cfg: DictConfig) -> torch.device:
    """Where the trial's own work outside the fit runs: its (first) assigned GPU, or the CPU."""
    if not _on_gpu(trainer_cfg):
        return torch.device("cpu")
    devices = trainer_cfg.get("devices")
    pinned = isinstance(devices, Sequence) and not isinstance(devices, str) and devices
    return torch.device(f"cuda:{devices[0]}" if pinned else "cuda")


def check_objective(cfg: DictConfig) -> tuple[str, str]:
    metric, direction = cfg.objective.metric, cfg.objective.direction
    if metric not in METRICS:
        raise PlateauError(f"objective.metric={metric} is not a logged metric: use one of "
                           f"{', '.join(METRICS)}")
    if direction not in DIRECTIONS:
        raise PlateauError(f"objective.direction={direction} must be maximize or minimize")
    return metric, direction


#: Trainer settings Lightning takes as whole numbers without checking: text or a fraction
#: there would fail only inside the fit, after the MLflow run exists.
WHOLE_TRAINER_SETTINGS = ("max_epochs", "min_epochs", "max_steps", "accumulate_grad_batches",
                          "check_val_every_n_epoch", "log_every_n_steps", "num_sanity_val_steps")


def check_trainer(trainer_cfg: DictConfig) -> None:
    """Each of :data:`WHOLE_TRAINER_SETTINGS` that is set must be an int."""
    for key in WHOLE_TRAINER_SETTINGS:
        value = trainer_cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise PlateauError(f"trainer.{key}={value} is not a whole number; give one, e.g. "
                               f"trainer.{key}=5")


def _single_log_stream() -> None:
    """Lightning adds a stderr handler to its ``lightning`` logger on import; where Hydra has
    configured the root logger, that prints every Lightning line twice. Keep Hydra's."""
    # Frozen BatchNorm layers are in eval mode on purpose (lightning_modules.freezing).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    if logging.getLogger().handlers:
        lightning_logger = logging.getLogger("lightning")
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)


@dataclass
class PreparedTrial:
    """Everything a fit needs, built and checked before the MLflow run exists."""

    model: ImageClassifier
    datamodule: pl.LightningDataModule
    trainer: pl.Trainer
    logger: MLFlowLogger | None
    curves: CurveRecorder

    def diagnose(self) -> Diagnosis:
        """Diagnose the fit from its curves; tags the MLflow run with the result."""
        diagnosis = self.curves.diagnosis()
        if self.logger is not None:
            tracking.tag_run(self.logger, {"plateau.diagnosis": diagnosis.label,
                                           "plateau.diagnosis_reason": diagnosis.reason})
        return diagnosis


@dataclass
class TrialParts:
    """The model and data of a trial, built from the config but not yet trained."""

    model: ImageClassifier
    freezing: pl.Callback
    datamodule: ClassificationDataModule
    weighting: ClassWeighting


def build_parts(cfg: DictConfig) -> TrialParts:
    """Seed, then build backbone, freezing, class weighting, data (set up) and the module."""
    _single_log_stream()
    metric, direction = check_objective(cfg)
    check_trainer(cfg.trainer)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    backbone = build(cfg, "backbone")
    freezing = build(cfg, "freeze")
    if isinstance(freezing, StageFreezing):
        freezing.check(backbone)
    weighting = build(cfg, "class_weight")
    datamodule = build(
        cfg, "data",
        pretrained_config=timm.data.resolve_model_data_config(backbone),
        augmentation=build(cfg, "augment"),
        balanced_sampling=weighting.resamples,
    )
    datamodule.setup("fit")
    if datamodule.num_classes < 2:
        raise PlateauError(f"the data holds {datamodule.num_classes} class "
                           f"({', '.join(datamodule.classes) or 'none'}): a classifier needs at "
                           "least two; give each class its own folder of images")
    datamodule.check_batch_size()
    model = ImageClassifier(
        backbone,
        num_classes=datamodule.num_classes,
        optimizer=build(cfg, "optimizer"),
        lr_schedule=instantiate(cfg.lr_schedule.scheduler),
        dropout=cfg.regularization.dropout,
        label_smoothing=cfg.regularization.label_smoothing,
        class_weights=weighting.loss_weights(datamodule.class_counts),
        backbone_lr_mult=cfg.lr_schedule.backbone_lr_mult,
        objective=metric,
        direction=direction,
    )
    return TrialParts(model, freezing, datamodule, weighting)


def _doctor_settings(cfg: DictConfig, key: str, schema: type[SettingsT]) -> SettingsT:
    """``schema(**cfg.doctor.<key>)``, a bad key or value as a one-line error."""
    values = OmegaConf.select(cfg, f"doctor.{key}") or {}
    try:
        return schema(**values)
    except (TypeError, ValueError) as err:
        raise PlateauError(f"doctor.{key}: {err}") from err


def preflight_settings(cfg: DictConfig) -> PreflightSettings:
    """The preflight's settings from ``cfg.doctor.preflight``."""
    return _doctor_settings(cfg, "preflight", PreflightSettings)


def preflight(cfg: DictConfig, parts: TrialParts) -> PreflightReport:
    """Run the doctor's preflight checks on a built trial (see :mod:`doctor.preflight`)."""
    return run_preflight(
        parts.model, parts.freezing, parts.datamodule, backbone_name=cfg.backbone.name,
        weighted=parts.weighting.method != "none", objective=cfg.objective.metric,
        settings=preflight_settings(cfg), cache_dir=cache_root(cfg.get("cache_dir")))


def preflight_config(cfg: DictConfig) -> PreflightReport:
    """Build the trial ``cfg`` describes (a ``hydra`` node is ignored) and run the preflight."""
    job = OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"])
    with open_dict(job):
        job["trial_id"] = None
    return preflight(job, build_parts(job))


def prepare_trial(cfg: DictConfig, callbacks: Sequence[pl.Callback] = (),
                  tags: dict[str, str] | None = None) -> PreparedTrial:
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
        report.show()
        report.raise_for_errors()
        tags.update(report.tags())
    tags["plateau.feature_cache"] = _use_feature_cache(cfg, parts)
    model, datamodule = parts.model, parts.datamodule
    curves = CurveRecorder(build_thresholds(cfg))
    logger = tracking.create_logger(cfg, tags)
    trainer = build(cfg, "trainer", precision=resolve_precision(cfg.trainer),
                    callbacks=[parts.freezing, curves, *callbacks],
                    logger=logger if logger is not None else False,
                    **_job_root_dir(cfg.trainer))
    if logger is not None:
        tracking.log_trial_config(logger, cfg)
        trainable, total = model.parameter_counts()
        logger.log_hyperparams({"model.trainable_params": trainable, "model.total_params": total,
                                "data.num_classes": datamodule.num_classes})
    return PreparedTrial(model, datamodule, trainer, logger, curves)


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
    hit = attach_features(parts.datamodule, backbone, cache, _first_device(cfg.trainer))
    return "hit" if hit else "computed"


def build_thresholds(cfg: DictConfig) -> Thresholds:
    """The doctor's diagnosis thresholds from ``cfg.doctor.thresholds``."""
    return _doctor_settings(cfg, "thresholds", Thresholds)


def best_objective(model: ImageClassifier) -> float:
    """The best epoch value of the objective metric; an error if no epoch gave a finite one."""
    if not model.best_objective.update_count:
        raise RuntimeError(f"the trial ended without a finite {model.objective}: "
                           "no validated epoch")
    return float(model.best_objective.compute())


def run_extra_rank(cfg: DictConfig) -> float:
    """Rank 1..n-1 of a DDP trial: the same fit on its shard, quietly (see :mod:`sweeps.ddp`).

    In a sweep it joins the trial reporter's stop vote, so it ends the fit with rank zero.
    """
    callbacks: list[pl.Callback] = []
    if cfg.get("trial_id") is not None:
        from sweeps.study_trial import RankZeroStop

        callbacks.append(RankZeroStop())
    ddp.as_extra_rank(cfg)
    prepared = prepare_trial(cfg, callbacks)
    prepared.trainer.fit(prepared.model, datamodule=prepared.datamodule)
    return float("nan")


def run_trial(cfg: DictConfig) -> float:
    """Fine-tune ``cfg.backbone`` on ``cfg.data`` with every knob of ``cfg``; log to MLflow.

    Under ``python sweep.py -m`` (``cfg.trial_id`` set by plateau's sweeper) the trial reports
    to its Optuna trial and may be pruned; see :mod:`sweeps.study_trial`.

    Returns:
        The best value over epochs of ``cfg.objective.metric`` (``<metric>_best``).
    """
    if ddp.ddp_rank() > 0:
        return run_extra_rank(cfg)
    if cfg.get("trial_id") is not None:
        from sweeps.study_trial import run_study_trial

        return run_study_trial(cfg)
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
        tracking.log_objective(prepared.logger, value)
    diagnosis = prepared.diagnose()
    console.print(f"objective {prepared.model.objective}_best = {value:.4f} "
                  f"({cfg.objective.direction})")
    console.print(f"diagnosis: {diagnosis.label} ({diagnosis.reason})")
    return value

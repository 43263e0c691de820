"""Build a trial's parts from its composed config: backbone, freezing, data, the module.

Config mistakes become one-line errors here (:func:`build`), before anything trains or any
MLflow run exists.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import timm.data
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from data_modules.class_balance import ClassWeighting
from data_modules.datamodules import ClassificationDataModule
from errors import PlateauError
from lightning_modules.backbones import check_input_size
from lightning_modules.classifier import ImageClassifier
from lightning_modules.freezing import StageFreezing
from sweeps import devices
from sweeps.objectives import Objectives

log = logging.getLogger(__name__)


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


def first_device(trainer_cfg: DictConfig) -> torch.device:
    """Where the trial's own work outside the fit runs: its (first) assigned GPU, or the CPU."""
    if not _on_gpu(trainer_cfg):
        return torch.device("cpu")
    devices = trainer_cfg.get("devices")
    pinned = isinstance(devices, Sequence) and not isinstance(devices, str) and devices
    return torch.device(f"cuda:{devices[0]}" if pinned else "cuda")


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
class TrialParts:
    """The model and data of a trial, built from the config but not yet trained."""

    model: ImageClassifier
    freezing: pl.Callback
    datamodule: ClassificationDataModule
    weighting: ClassWeighting


def build_parts(cfg: DictConfig) -> TrialParts:
    """Seed, then build backbone, freezing, class weighting, data (set up) and the module."""
    _single_log_stream()
    objectives = Objectives.of(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    backbone = build(cfg, "backbone")
    pretrained = timm.data.resolve_model_data_config(backbone)
    check_input_size(backbone, str(cfg.backbone.name),
                     int(cfg.data.image_size or pretrained["input_size"][-1]))
    freezing = build(cfg, "freeze")
    if isinstance(freezing, StageFreezing):
        freezing.check(backbone)
    weighting = build(cfg, "class_weight")
    datamodule = build(
        cfg, "data",
        pretrained_config=pretrained,
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
        objective=objectives.first,
        direction=objectives.directions[0],
    )
    return TrialParts(model, freezing, datamodule, weighting)


def best_objective(model: ImageClassifier) -> float:
    """The best epoch value of the objective metric; an error if no epoch gave a finite one."""
    if not model.best_objective.update_count:
        raise RuntimeError(f"the trial ended without a finite {model.objective}: "
                           "no validated epoch")
    return float(model.best_objective.compute())

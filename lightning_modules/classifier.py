"""Single-label image classifier: a pretrained backbone plus a linear head."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim import Optimizer
from torchmetrics import MaxMetric, MetricCollection, MinMetric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., Optimizer]
ScheduleFactory = Callable[..., dict[str, Any]]


def _feature_width(backbone: nn.Module) -> int:
    width = getattr(backbone, "num_features", None)
    if not isinstance(width, int):
        raise TypeError(f"{type(backbone).__name__} has no integer num_features (feature width)")
    return width


def _has_depthwise_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
               for m in module.modules())


def _metrics(num_classes: int) -> MetricCollection:
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "balanced_acc": MulticlassAccuracy(num_classes, average="macro"),
        "f1_macro": MulticlassF1Score(num_classes, average="macro"),
    })


class ImageClassifier(pl.LightningModule):
    """Backbone features -> dropout -> linear head, trained with (weighted) cross-entropy.

    Logs ``train/{loss,acc,balanced_acc,f1_macro}`` and the same under ``val/`` once per epoch,
    plus ``<objective>_best``, the best value of the objective metric so far. ``train/loss`` is
    the training criterion (class weights, label smoothing); ``val/loss`` is plain
    cross-entropy, comparable across trials.

    Args:
        backbone: a feature extractor with ``num_features`` (a headless timm model).
        num_classes: size of the head's output.
        optimizer: a partial optimizer, completed with the trainable parameters: the head's
            group first, the backbone's trainable parameters second with ``lr * backbone_lr_mult``.
        lr_schedule: a partial schedule builder from :mod:`lightning_modules.schedules`, or None.
        dropout: dropout probability before the head.
        label_smoothing: cross-entropy label smoothing.
        class_weights: per-class loss weights, or None for unweighted loss.
        backbone_lr_mult: backbone learning rate relative to the head's (discriminative LR).
        objective: the ``val/*`` metric whose best-so-far is tracked.
        direction: ``maximize`` or ``minimize``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        lr_schedule: ScheduleFactory | None = None,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
        backbone_lr_mult: float = 1.0,
        objective: str = "val/f1_macro",
        direction: str = "maximize",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout),
                                  nn.Linear(_feature_width(backbone), num_classes))
        self.criterion = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
        self.optimizer_factory = optimizer
        self.schedule_factory = lr_schedule
        self.backbone_lr_mult = backbone_lr_mult
        self.objective = objective
        self.train_metrics = _metrics(num_classes).clone(prefix="train/")
        self.val_metrics = _metrics(num_classes).clone(prefix="val/")
        self.best_objective = MaxMetric() if direction == "maximize" else MinMetric()
        self.val_confusion = MulticlassConfusionMatrix(num_classes)
        #: Whether fit runs in channels-last (NHWC) layout, decided when it starts.
        self.channels_last = False
        #: The last validation epoch's confusion matrix (rows: true class), for diagnosis.
        self.last_val_confusion: list[list[int]] = []
        #: Every ``val/*`` metric of the epoch where the objective was last at its best: the
        #: values a multi-objective trial returns beside it.
        self.at_best: dict[str, float] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of images (N x C x H x W), or of cached backbone features (N x D,
        see :mod:`data_modules.feature_cache`), which skip the backbone."""
        features = images if images.ndim == 2 else self.backbone(images)
        return self.head(features)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection,
              stage: str) -> torch.Tensor:
        images, targets = batch
        if images.ndim == 4 and self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = self(images)
        # Validation loss is plain cross-entropy: label smoothing and class weights would give
        # every trial its own loss scale, and the pruner compares trials by this value.
        loss = (self.criterion(logits, targets) if stage == "train"
                else F.cross_entropy(logits, targets))
        metrics.update(logits, targets)
        if stage == "val":
            self.val_confusion.update(logits, targets)
        # sync_dist: under DDP each rank sees its shard; the epoch value averages them all
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage == "val",
                 batch_size=targets.shape[0], sync_dist=True)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor],
                      batch_idx: int) -> torch.Tensor:
        return self._step(batch, self.train_metrics, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, self.val_metrics, "val")

    def on_fit_start(self) -> None:
        # Convolutions run faster on NHWC (channels-last) tensors: on a GPU above all under
        # bf16 autocast (tensor cores); on the CPU where the backbone has depthwise
        # convolutions (EfficientNet-Lite0 1.5-1.7x per training step, MobileNetV3 1.3x) but
        # not plain ones (ResNet-18 0.8x at 64 px; benchmarks/memory_format.py).
        self.channels_last = self.device.type == "cuda" or _has_depthwise_conv(self.backbone)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def on_train_epoch_start(self) -> None:
        trainable, total = self.parameter_counts()
        self.log("model/trainable_params", float(trainable), on_step=False, on_epoch=True,
                 sync_dist=True)
        if self.current_epoch == 0:
            log.info("trainable parameters: %d of %d (%.1f%%)", trainable, total,
                     100.0 * trainable / max(total, 1))

    def on_validation_epoch_end(self) -> None:
        if self.val_confusion.update_count:
            self.last_val_confusion = self.val_confusion.compute().int().tolist()
            self.val_confusion.reset()
        if self.trainer.sanity_checking:
            return
        value = self.trainer.callback_metrics.get(self.objective)
        if value is not None and math.isfinite(float(value)):
            before = self.best_objective.compute() if self.best_objective.update_count else None
            self.best_objective.update(value)
            if before is None or self.best_objective.compute() != before:
                self.at_best = {name: float(metric) for name, metric
                                in self.trainer.callback_metrics.items()
                                if name.startswith("val/") and not name.endswith("_best")}
        if self.best_objective.update_count:
            self.log(f"{self.objective}_best", self.best_objective.compute(), prog_bar=True,
                     sync_dist=True)

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts of the whole model."""
        params = list(self.parameters())
        return (sum(p.numel() for p in params if p.requires_grad),
                sum(p.numel() for p in params))

    def configure_optimizers(self) -> Any:
        groups: list[dict[str, Any]] = [
            {"params": [p for p in self.head.parameters() if p.requires_grad]},
        ]
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        if backbone:
            groups.append({"params": backbone, "lr_mult": self.backbone_lr_mult})
        optimizer = self.optimizer_factory(params=groups)
        for group in optimizer.param_groups:
            group["lr"] *= group.pop("lr_mult", 1.0)
        if self.schedule_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(self.trainer.max_epochs or 1, 1)
        schedule = self.schedule_factory(optimizer, total_steps=total,
                                         steps_per_epoch=max(math.ceil(total / epochs), 1))
        return {"optimizer": optimizer, "lr_scheduler": schedule}

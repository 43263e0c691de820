"""Trial parts with a planted fault, for the preflight and fault tests.

Hydra builds them from the config like the real ones, e.g.
``freeze._target_=tests.faulty_parts.FreezeEverything`` (the repository root is on the path
under pytest and for ``python -m doctor`` run from it).
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch

from data_modules.synthetic import SyntheticDataModule
from lightning_modules.freezing import StageFreezing


class FreezeEverything(StageFreezing):
    """Freezes every parameter, the head's included: nothing can train."""

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        for param in pl_module.parameters():
            param.requires_grad = False


class FreezeHead(StageFreezing):
    """Freezes the classification head and leaves the backbone training."""

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        for param in pl_module.head.parameters():  # type: ignore[union-attr]
            param.requires_grad = False


class RandomValidationData(SyntheticDataModule):
    """Synthetic stripes validated through the training transform, augmentation included."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.val_transform = self.train_transform


class FaultMidFit(SyntheticDataModule):
    """Stripes whose training batches go bad at epoch ``at_epoch`` of one trial of a sweep.

    The first trial to train at that epoch while ``fault_file`` exists deletes the file
    (only one can) and takes the fault for the rest of its fit: ``fault=raise`` raises,
    ``fault=nan_loss`` feeds it NaN images, so its loss and weights turn NaN. The other trials, and
    every trial once the file is gone (a re-run of the sweep), train normally.
    """

    FAULTS = ("raise", "nan_loss")

    def __init__(self, fault: str, fault_file: str, at_epoch: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if fault not in self.FAULTS:
            raise ValueError(f"fault={fault}: one of {self.FAULTS}")
        self.fault, self.fault_file, self.at_epoch = fault, fault_file, at_epoch
        self.struck = False

    def _strikes(self) -> bool:
        trainer = self.trainer
        if trainer is None or not trainer.training:  # validation batches stay clean
            return False
        if self.struck or trainer.current_epoch < self.at_epoch:
            return self.struck
        try:
            os.remove(self.fault_file)
        except FileNotFoundError:  # another trial took it, or none was planted
            return False
        self.struck = True
        return True

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not self._strikes():
            return batch
        if self.fault == "raise":
            raise RuntimeError(f"planted fault at epoch {self.trainer.current_epoch}")
        images, targets = batch
        return torch.full_like(images, float("nan")), targets

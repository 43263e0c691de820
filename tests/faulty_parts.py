"""Trial parts with a planted fault, for the preflight and fault tests.

Hydra builds them from the config like the real ones, e.g.
``freeze._target_=tests.faulty_parts.FreezeEverything`` (the repository root is on the path
under pytest and for ``python -m doctor`` run from it).
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from typing import Any

import lightning.pytorch as pl
import torch
from mlflow.exceptions import MlflowException

from data_modules.synthetic import SyntheticDataModule
from lightning_modules.freezing import StageFreezing
from sweeps.job.logger import EpochMLFlowLogger


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


class KillMidFit(SyntheticDataModule):
    """Stripes whose trial's process SIGKILLs itself at epoch ``at_epoch``, as the kernel's
    OOM killer would, while ``kill_file`` holds a count above zero (each kill takes one, under
    a lock: workers in parallel share it). ``every_batch_s`` slows each training batch."""

    def __init__(self, kill_file: str, at_epoch: int = 0, every_batch_s: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kill_file, self.at_epoch, self.every_batch_s = kill_file, at_epoch, every_batch_s

    def _take_a_kill(self) -> bool:
        try:
            with open(self.kill_file, "r+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                left = int(handle.read().strip() or 0)
                if left <= 0:
                    return False
                handle.seek(0)
                handle.truncate()
                handle.write(str(left - 1))
                return True
        except FileNotFoundError:
            return False

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if trainer is not None and trainer.training:
            time.sleep(self.every_batch_s)
            if trainer.current_epoch >= self.at_epoch and self._take_a_kill():
                os.kill(os.getpid(), signal.SIGKILL)
        return batch


class SlowFirstBatch(SyntheticDataModule):
    """Stripes whose first training batch takes ``sleep_s`` seconds: one epoch far longer
    than the heartbeat's timeout."""

    def __init__(self, sleep_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sleep_s, self.slept = sleep_s, False

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if trainer is not None and trainer.training and not self.slept:
            self.slept = True
            time.sleep(self.sleep_s)
        return batch


class MLflowDownAfterFit(EpochMLFlowLogger):
    """Lightning's MLflow logger whose tracking store fails once, at the first write after the
    fit has ended (the doctor's tags), then works again."""

    def finalize(self, status: str = "success") -> None:
        super().finalize(status)
        self.down_once = True

    @property
    def experiment(self) -> Any:
        client = super().experiment
        if getattr(self, "down_once", False):
            self.down_once = False
            raise MlflowException("planted fault: the tracking store failed after the fit")
        return client


class NaNImages(SyntheticDataModule):
    """Stripes turned NaN in every batch, training and validation: no epoch yields a finite
    validation loss."""

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, targets = batch
        return torch.full_like(images, float("nan")), targets

"""Trial parts with a planted fault, for the preflight tests.

Hydra builds them from the config like the real ones, e.g.
``freeze._target_=tests.faulty_parts.FreezeEverything`` (the repository root is on the path
under pytest and for ``python -m doctor`` run from it).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

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

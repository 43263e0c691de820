"""scikit-learn's bundled handwritten digits: real images, no download, optionally long-tailed."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.datasets import load_digits

from data_modules.datamodules import ClassificationDataModule, Item, Split
from errors import PlateauError


def long_tail_counts(counts: np.ndarray, imbalance: float) -> np.ndarray:
    """Per-class counts decaying exponentially from class 0 to the last class.

    Class ``c`` of ``C`` keeps ``min(counts) * imbalance ** (-c / (C - 1))`` images (at least
    2), so the largest class is ``imbalance`` times the smallest (Cao et al. 2019's long tail).
    """
    if imbalance < 1.0:
        raise PlateauError(
            f"data.imbalance={imbalance} must be >= 1 (the ratio of the largest class to the "
            "smallest): use 1 for the balanced dataset, e.g. 10 for a long tail"
        )
    ranks = np.arange(len(counts)) / max(len(counts) - 1, 1)
    kept = np.floor(counts.min() * imbalance ** (-ranks)).astype(np.int64)
    return np.maximum(kept, 2)


class DigitsDataModule(ClassificationDataModule):
    """1797 8x8 grayscale digits (10 classes), upscaled to the network input like any image.

    Args:
        imbalance: ratio of the largest to the smallest class after subsampling; 1 keeps the
            balanced dataset. The long tail applies before the split, so validation has the
            same profile (and plain accuracy hides the rare classes, as on real data).
        **kwargs: see :class:`~data_modules.datamodules.ClassificationDataModule`.
    """

    def __init__(self, imbalance: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.imbalance = imbalance

    def load_splits(self) -> tuple[list[str], Split, Split]:
        digits = load_digits()
        # Pixel values are 0..16 (ink density); map to the usual 0..255 of an 8-bit image.
        images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
        targets = digits.target.astype(np.int64)
        if self.imbalance != 1.0:
            keep = long_tail_counts(np.bincount(targets), self.imbalance)
            rng = np.random.default_rng(self.seed)
            chosen = np.concatenate([
                rng.choice(np.flatnonzero(targets == c), size=keep[c], replace=False)
                for c in range(len(keep))
            ])
            chosen.sort()
            images, targets = images[chosen], targets[chosen]
        items: list[Item] = list(images)
        train, val = self.split(items, targets)
        return [str(name) for name in digits.target_names], train, val

"""Tiny generated images for tests: one oriented stripe pattern per class, with noise."""

from __future__ import annotations

from typing import Any

import numpy as np

from data_modules.datamodules import ClassificationDataModule, Item, Split


def stripe_images(num_classes: int, per_class: int, size: int,
                  seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """RGB uint8 images of a sinusoidal grating whose orientation and tint encode the class.

    Phase and pixel noise vary per image, so the classes are learnable but not trivially
    identical copies.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images, targets = [], []
    for label in range(num_classes):
        angle = np.pi * label / num_classes
        tint = 0.5 + 0.5 * np.cos(2 * np.pi * (label / num_classes + np.array([0, 1, 2]) / 3))
        for _ in range(per_class):
            phase = rng.uniform(0, 2 * np.pi)
            wave = 0.5 + 0.5 * np.sin(8 * (np.cos(angle) * xx + np.sin(angle) * yy) * np.pi + phase)
            pixels = wave[..., None] * tint + rng.normal(0, 0.08, (size, size, 3))
            images.append(np.clip(pixels * 255, 0, 255).astype(np.uint8))
            targets.append(label)
    return images, np.asarray(targets, dtype=np.int64)


class SyntheticDataModule(ClassificationDataModule):
    """Generated stripes: ``num_classes`` x ``images_per_class`` images of ``size`` pixels.

    Args:
        num_classes: number of classes.
        images_per_class: images generated per class (before the split).
        size: side of the generated images in pixels.
        **kwargs: see :class:`~data_modules.datamodules.ClassificationDataModule`.
    """

    def __init__(self, num_classes: int = 3, images_per_class: int = 16, size: int = 32,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_generated_classes = num_classes
        self.images_per_class = images_per_class
        self.size = size

    def load_splits(self) -> tuple[list[str], Split, Split]:
        images, targets = stripe_images(self.num_generated_classes, self.images_per_class,
                                        self.size, self.seed)
        items: list[Item] = list(images)
        train, val = self.split(items, targets)
        return [f"stripes_{c}" for c in range(self.num_generated_classes)], train, val

"""Lightning datamodules: the embedded digits, generated synthetic images, the user's folders.

All of them hold images in memory (arrays) or on disk (paths), decode to RGB PIL images, and
apply transforms built from the backbone's pretrained data config (:mod:`data_modules.transforms`).
Splits are stratified and seeded; ``setup`` is idempotent so the trial runner can inspect
classes and counts before Lightning calls it again inside ``fit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from data_modules.bad_files import read_image
from data_modules.class_balance import ClassWeighting
from data_modules.images import decode
from data_modules.transforms import Augmentation, build_transforms, resolve_data_config
from errors import PlateauError

Item = np.ndarray | Path
#: Items and their integer targets.
Split = tuple[list[Item], np.ndarray]


class ImageDataset(Dataset):
    """Images given as uint8 arrays (H x W or H x W x 3) or file paths, with integer targets."""

    def __init__(self, items: Sequence[Item], targets: Sequence[int] | np.ndarray,
                 transform: Any) -> None:
        self.items = list(items)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def image(self, index: int) -> Image.Image:
        """The decoded RGB image, before any transform; a file that no longer decodes raises
        an :class:`~data_modules.bad_files.UnreadableImageError` naming it."""
        item = self.items[index]
        return read_image(item, decode) if isinstance(item, Path) else decode(item)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.image(index)), int(self.targets[index])


class FeatureDataset(Dataset):
    """Cached backbone features (N x D, memory-mapped) with their integer targets."""

    def __init__(self, features: np.ndarray, targets: torch.Tensor) -> None:
        if len(features) != len(targets):
            raise ValueError(f"{len(features)} feature rows for {len(targets)} targets")
        self.features = features
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.features[index])), int(self.targets[index])


def stratified_split(targets: np.ndarray, val_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split into (train, val) indices.

    Each class with at least two images puts ``round(n * val_fraction)`` of them, and at least
    one, into validation; a class with a single image stays in training.
    """
    if not 0.0 < val_fraction < 1.0:
        raise PlateauError(f"data.val_fraction={val_fraction} must be between 0 and 1, e.g. 0.2")
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for label in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == label))
        n_val = 0 if len(members) < 2 else min(max(round(len(members) * val_fraction), 1),
                                                  len(members) - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


class ClassificationDataModule(pl.LightningDataModule):
    """Shared loading logic; subclasses implement :meth:`load_splits`.

    Args:
        batch_size: images per training and validation batch.
        num_workers: DataLoader worker processes (0 loads in the training process).
        seed: seed of the train/val split and of the balanced sampler.
        val_fraction: share of each class held out when the data has no validation split.
        image_size: network input side in pixels; None uses the backbone's pretrained size.
        mean: normalization mean replacing the backbone's (None keeps it; see
            :func:`~data_modules.transforms.resolve_data_config`).
        std: normalization std replacing the backbone's (None keeps it).
        pretrained_config: the backbone's ``timm.data.resolve_model_data_config``.
        augmentation: training augmentation policy from :mod:`data_modules.transforms`.
        balanced_sampling: draw training batches class-balanced with replacement.
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.2,
        image_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        pretrained_config: dict[str, Any] | None = None,
        augmentation: Augmentation | None = None,
        balanced_sampling: bool = False,
    ) -> None:
        super().__init__()
        if pretrained_config is None:
            raise ValueError("pretrained_config is required: the backbone's timm data config")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise PlateauError(f"data.batch_size={batch_size} is not a number of images; give "
                               "a whole number of 1 or more, e.g. data.batch_size=32")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.val_fraction = val_fraction
        self.data_config = resolve_data_config(pretrained_config, image_size, mean, std)
        self.train_transform, self.val_transform = build_transforms(self.data_config, augmentation)
        self.balanced_sampling = balanced_sampling
        self.classes: list[str] = []
        # Image datasets; a linear probe may swap them for cached backbone features
        # (data_modules.feature_cache.attach_features).
        self.train_set: ImageDataset | FeatureDataset | None = None
        self.val_set: ImageDataset | FeatureDataset | None = None

    def load_splits(self) -> tuple[list[str], Split, Split]:
        """(class names, (train items, targets), (val items, targets))."""
        raise NotImplementedError

    def split(self, items: Sequence[Item], targets: np.ndarray) -> tuple[Split, Split]:
        """Stratified, seeded train/val split with ``val_fraction``."""
        train, val = stratified_split(targets, self.val_fraction, self.seed)
        return ([items[i] for i in train], targets[train]), ([items[i] for i in val], targets[val])

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.classes, (train_items, train_y), (val_items, val_y) = self.load_splits()
        self.train_set = ImageDataset(train_items, train_y, self.train_transform)
        self.val_set = ImageDataset(val_items, val_y, self.val_transform)

    def check_batch_size(self) -> None:
        """A batch larger than the training set is a mistake for a trial (each epoch would be
        one smaller batch); at most the training set trains on all of it in one batch."""
        assert self.train_set is not None, "call setup() first"
        images = len(self.train_set)
        if self.batch_size > images:
            raise PlateauError(f"data.batch_size={self.batch_size} is larger than the {images} "
                               f"training images; set data.batch_size={images} or less ({images} "
                               "trains on all of them in one batch)")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_counts(self) -> torch.Tensor:
        """Training images per class."""
        assert self.train_set is not None, "call setup() first"
        return torch.bincount(self.train_set.targets, minlength=self.num_classes)

    def _loader(self, dataset: ImageDataset | FeatureDataset, train: bool) -> DataLoader:
        sampler = None
        if train and self.balanced_sampling:
            weights = ClassWeighting.sample_weights(dataset.targets, self.num_classes)
            sampler = WeightedRandomSampler(
                weights.tolist(), num_samples=len(dataset), replacement=True,
                generator=torch.Generator().manual_seed(self.seed),
            )
        # A last training batch of one image breaks BatchNorm in train mode; drop only that.
        drop_last = train and len(dataset) % self.batch_size == 1
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=train and sampler is None,
            sampler=sampler, drop_last=drop_last, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        return self._loader(self.val_set, train=False)

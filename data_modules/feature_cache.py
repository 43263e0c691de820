"""Frozen-feature cache: a linear probe trains its head on backbone features computed once.

When the backbone is a fixed function for the whole fit (every stage frozen, BatchNorm in
eval mode, nothing unfrozen later) and training images go through a deterministic transform,
each image's features never change: they are computed once per (backbone, weights, images,
split, transform) and stored under ``<cache_dir>/features/<key>/`` as ``.npy`` files, which
later trials and sweeps memory-map. The key hashes:

* the backbone's class and every parameter and buffer (name, shape, bytes): another model or
  other weights, even one changed value, is another key;
* each image's identity in split order (a file's path, size and mtime; an array's pixels);
* the transform's ``repr`` (sizes, interpolation, crop, mean and std).

Features are computed in eval mode without a DataLoader (no draw from the global RNG, so a
trial with and without the cache sees the same shuffles and dropout masks).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from data_modules.cache_dir import discard_entry, publish_entry
from data_modules.datamodules import ClassificationDataModule, FeatureDataset, ImageDataset
from data_modules.images import image_identity

log = logging.getLogger(__name__)

FEATURES = "features.npy"


def weights_digest(module: nn.Module) -> str:
    """SHA-1 of a module's class and state (every parameter and buffer)."""
    digest = hashlib.sha1(type(module).__qualname__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(backbone_digest: str, items: list, transform: object) -> str:
    """The cache key of one split's features (see the module docstring)."""
    digest = hashlib.sha1(backbone_digest.encode())
    digest.update(repr(transform).encode())
    for item in items:
        digest.update(image_identity(item).encode())
    return digest.hexdigest()


@torch.no_grad()
def compute_features(backbone: nn.Module, dataset: ImageDataset, batch_size: int,
                     device: torch.device) -> np.ndarray:
    """Backbone features of every image of ``dataset`` (in order), in eval mode, float32."""
    was_training = backbone.training
    backbone.eval().to(device)
    rows = []
    try:
        for start in range(0, len(dataset), batch_size):
            stop = min(start + batch_size, len(dataset))
            images = torch.stack([dataset[i][0] for i in range(start, stop)]).to(device)
            rows.append(backbone(images).float().cpu().numpy())
    finally:
        backbone.train(was_training)
    return np.concatenate(rows)


class FeatureCache:
    """Backbone features on disk, one folder per key.

    Args:
        root: ``<cache_dir>/features``; None computes the features every time.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def load_or_compute(self, key: str,
                        compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
        """(features, came from the cache); ``compute()`` returns an N x D float32 array."""
        folder = None if self.root is None else self.root / key
        if folder is not None and folder.exists():
            try:
                return np.load(folder / FEATURES, mmap_mode="r"), True
            except (OSError, ValueError) as err:  # a damaged entry is rebuilt
                log.warning("rebuilding unreadable feature cache %s (%s)", folder, err)
                discard_entry(folder)
        started = time.perf_counter()
        features = compute()
        log.info("computed %d backbone features in %.1f s", len(features),
                 time.perf_counter() - started)
        if folder is not None:
            self._save(folder, features)
        return features, False

    @staticmethod
    def _save(folder: Path, features: np.ndarray) -> None:
        try:
            with publish_entry(folder) as staging:
                np.save(staging / FEATURES, features)
        except OSError as err:
            log.warning("feature cache not written to %s (%s)", folder, err)


def attach_features(datamodule: ClassificationDataModule, backbone: nn.Module,
                    cache: FeatureCache, device: torch.device) -> bool:
    """Replace the datamodule's image datasets by cached features of ``backbone``.

    The caller has checked that the backbone is frozen for the whole fit and the training
    transform is deterministic. Returns True when both splits came from the cache.
    """
    train, val = datamodule.train_set, datamodule.val_set
    if not isinstance(train, ImageDataset) or not isinstance(val, ImageDataset):
        raise ValueError("attach_features needs a set-up datamodule of images")
    digest = weights_digest(backbone)
    hits = []
    for name, dataset in (("train_set", train), ("val_set", val)):
        key = cache_key(digest, dataset.items, dataset.transform)
        features, hit = cache.load_or_compute(
            key, functools.partial(compute_features, backbone, dataset, datamodule.batch_size,
                                   device))
        setattr(datamodule, name, FeatureDataset(features, dataset.targets))
        hits.append(hit)
    return all(hits)

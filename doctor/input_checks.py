"""What the network is fed: normalization, input size, tensor statistics, deterministic val.

The transforms checked are the ones the datamodule actually built, not the config that asked
for them, so a custom datamodule or transform is judged by what it does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as v1
from torchvision.transforms import v2

from data_modules.transforms import leaves, random_transforms
from doctor.findings import Finding

_TOLERANCE = 1e-3


def _normalization(transform: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    for leaf in leaves(transform):
        if isinstance(leaf, v1.Normalize | v2.Normalize):
            return tuple(map(float, leaf.mean)), tuple(map(float, leaf.std))
    return None


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def check_normalization(pretrained: dict[str, Any], transforms: dict[str, Any],
                        backbone_name: str) -> list[Finding]:
    """The Normalize of each split's transform against the backbone's pretraining statistics.

    Args:
        pretrained: the backbone's ``timm.data.resolve_model_data_config``.
        transforms: split name -> its transform pipeline.
        backbone_name: for the message.
    """
    expected = tuple(map(float, pretrained["mean"])), tuple(map(float, pretrained["std"]))
    findings = []
    for split, transform in transforms.items():
        found = _normalization(transform)
        if found is None:
            findings.append(Finding(
                "normalization", "warning",
                f"the {split} transform has no Normalize: {backbone_name} was pretrained on "
                f"inputs normalized with mean {_fmt(expected[0])} and std {_fmt(expected[1])}",
                "build the transforms from the backbone's data config (the default datamodules "
                "do), or add that Normalize"))
        elif not (np.allclose(found[0], expected[0], atol=_TOLERANCE)
                  and np.allclose(found[1], expected[1], atol=_TOLERANCE)):
            findings.append(Finding(
                "normalization", "warning",
                f"the {split} transform normalizes with mean {_fmt(found[0])} std "
                f"{_fmt(found[1])}, but {backbone_name} was pretrained with mean "
                f"{_fmt(expected[0])} std {_fmt(expected[1])}",
                "drop data.mean/data.std overrides (null uses the backbone's own values)"))
    return findings


def check_input_size(pretrained: dict[str, Any], sample: torch.Tensor,
                     backbone_name: str) -> list[Finding]:
    """The tensor size the validation transform produces against the pretrained input size."""
    size = tuple(sample.shape[-2:])
    expected = tuple(pretrained["input_size"][-2:])
    if size == expected:
        return []
    return [Finding(
        "input_size", "info",
        f"inputs are {size[0]}x{size[1]} px; {backbone_name} was pretrained at "
        f"{expected[0]}x{expected[1]}",
        "fine-tuning adapts to the size; for a frozen backbone prefer data.image_size=null")]


def check_statistics(batch: torch.Tensor, max_abs_mean: float, min_std: float,
                     max_std: float) -> list[Finding]:
    """Per-channel mean/std of normalized inputs: far from 0/1 means double or missing scaling.

    Args:
        batch: validation-transformed images, (N, C, H, W).
    """
    flat = batch.transpose(0, 1).reshape(batch.shape[1], -1).double()
    mean, std = flat.mean(dim=1).tolist(), flat.std(dim=1).tolist()
    if not all(np.isfinite(mean + std)):
        return [Finding("input_statistics", "error",
                        "normalized inputs hold NaN or inf values",
                        "check the images and data.std (no zero entries)")]
    if max(map(abs, mean)) <= max_abs_mean and min_std <= min(std) and max(std) <= max_std:
        return []
    return [Finding(
        "input_statistics", "warning",
        f"normalized inputs have channel means {_fmt(mean)} and stds {_fmt(std)}, far from 0 "
        "and 1: pixels are probably scaled to [0, 1] twice, or not at all, before Normalize",
        "give the transforms uint8 images (or floats in [0, 1]) and let them scale once; "
        "check data.mean/data.std")]


def check_determinism(transform: Callable[[Image.Image], torch.Tensor],
                      images: Sequence[Image.Image], repeats: int = 3) -> list[Finding]:
    """The validation transform must give the same tensor for the same image every time."""
    randomness = random_transforms(transform)
    varies = any(
        not torch.equal(first, transform(image))
        for image in images
        for first in [transform(image)]
        for _ in range(repeats - 1)
    )
    if not varies and not randomness:
        return []
    named = f" ({', '.join(randomness)})" if randomness else ""
    return [Finding(
        "val_determinism", "error",
        f"the validation transform is random{named}: the same image gives different tensors, "
        "so validation metrics move with the augmentation, not the model",
        "validate with resize, center crop and normalize only; keep augmentation in training")]

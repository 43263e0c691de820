"""Train and validation transforms derived from the backbone's pretrained data config.

Mean, std, input size, interpolation and crop come from the backbone's
``timm.data.resolve_model_data_config``; no normalization constant is written here.
Validation is deterministic by construction: resize + center crop + normalize, the
protocol the backbone was evaluated with.
Training adds the augmentation policy (``conf/augment``) on top of the same geometry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from errors import PlateauError


@dataclass(frozen=True)
class Geometry:
    """Input geometry of the backbone: output side, interpolation, center-crop fraction."""

    size: int
    interpolation: InterpolationMode
    crop_pct: float

    def resize_and_crop(self) -> list[nn.Module]:
        """The deterministic evaluation geometry: resize the short side, crop the center."""
        return [T.Resize(math.floor(self.size / self.crop_pct), interpolation=self.interpolation,
                         antialias=True),
                T.CenterCrop(self.size)]


#: An augmentation policy: geometry -> training transforms on images (before normalization).
Augmentation = Callable[[Geometry], list[nn.Module]]


def resolve_data_config(pretrained: dict[str, Any], image_size: int | None = None,
                        mean: Sequence[float] | None = None,
                        std: Sequence[float] | None = None) -> dict[str, Any]:
    """The backbone's pretrained preprocessing, optionally at another square input size.

    Args:
        pretrained: ``timm.data.resolve_model_data_config(backbone)``.
        image_size: side of the network input in pixels; None keeps the pretrained size.
        mean: per-channel normalization mean replacing the pretrained one (``data.mean``);
            the doctor's preflight flags a value that differs from the backbone's.
        std: per-channel normalization std replacing the pretrained one (``data.std``).
    """
    config = dict(pretrained)
    if image_size is not None:
        if image_size < 16:
            raise PlateauError(f"data.image_size={image_size} is too small: use 16 or more")
        config["input_size"] = (config["input_size"][0], image_size, image_size)
    for key, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        values = tuple(float(v) for v in values)
        if len(values) != len(config[key]) or (key == "std" and min(values) <= 0):
            raise PlateauError(
                f"data.{key}={list(values)} must hold {len(config[key])} numbers"
                f"{', all positive' if key == 'std' else ''}: one per input channel, or null "
                "for the backbone's own"
            )
        config[key] = values
    return config


def _interpolation(name: str) -> InterpolationMode:
    return InterpolationMode(name if name in {m.value for m in InterpolationMode} else "bilinear")


def _to_normalized_tensor(config: dict[str, Any]) -> list[nn.Module]:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean=list(config["mean"]), std=list(config["std"]))]


def build_transforms(config: dict[str, Any],
                     augmentation: Augmentation | None) -> tuple[T.Compose, T.Compose]:
    """(train, val) transforms from PIL images to normalized float tensors.

    Args:
        config: from :func:`resolve_data_config`.
        augmentation: a policy from this module (``conf/augment``); None trains on the
            validation geometry without randomness.
    """
    geometry = Geometry(config["input_size"][-1], _interpolation(config["interpolation"]),
                        config["crop_pct"])
    train = augmentation(geometry) if augmentation else geometry.resize_and_crop()
    return (T.Compose([*train, *_to_normalized_tensor(config)]),
            T.Compose([*geometry.resize_and_crop(), *_to_normalized_tensor(config)]))


#: Transform classes whose output is random by design (besides the ``Random*`` ones).
_RANDOM_NAMES = ("AutoAugment", "AugMix", "RandAugment", "TrivialAugmentWide")


def leaves(transform: Any) -> list[Any]:
    """The individual transforms inside (nested) Compose/Sequential pipelines."""
    inner = getattr(transform, "transforms", None)
    if isinstance(transform, nn.Sequential):
        inner = list(transform)
    if inner is None:
        return [transform]
    return [leaf for part in inner for leaf in leaves(part)]


def random_transforms(transform: Any) -> list[str]:
    """Names of the random operations in a transform pipeline."""
    names = [type(leaf).__name__ for leaf in leaves(transform)]
    return [n for n in names if n.startswith("Random") or n in _RANDOM_NAMES]


# Augmentation policies; each YAML in conf/augment is a partial of one of these.

def none(geometry: Geometry) -> list[nn.Module]:
    """No augmentation: training sees exactly the validation geometry."""
    return geometry.resize_and_crop()


def light(geometry: Geometry, scale: Sequence[float] = (0.5, 1.0),
          hflip: float = 0.5) -> list[nn.Module]:
    """Random resized crop and horizontal flip."""
    return [_random_resized_crop(geometry, scale), T.RandomHorizontalFlip(hflip)]


def heavy(geometry: Geometry, rotation: float = 20.0, shift: float = 0.1, shear: float = 10.0,
          zoom: Sequence[float] = (0.8, 1.2), hflip: float = 0.5) -> list[nn.Module]:
    """Keras ``ImageDataGenerator``-style affine jitter: rotation, shift, shear, zoom, flip."""
    return [*geometry.resize_and_crop(),
            T.RandomAffine(degrees=rotation, translate=(shift, shift), scale=tuple(zoom),
                           shear=shear, interpolation=geometry.interpolation),
            T.RandomHorizontalFlip(hflip)]


def randaugment(geometry: Geometry, num_ops: int = 2, magnitude: int = 9,
                scale: Sequence[float] = (0.5, 1.0)) -> list[nn.Module]:
    """RandAugment (Cubuk et al. 2020) after a random resized crop."""
    return [_random_resized_crop(geometry, scale),
            T.RandAugment(num_ops=num_ops, magnitude=magnitude,
                          interpolation=geometry.interpolation)]


def trivialaugment(geometry: Geometry, scale: Sequence[float] = (0.5, 1.0)) -> list[nn.Module]:
    """TrivialAugment-Wide (Müller & Hutter 2021) after a random resized crop."""
    return [_random_resized_crop(geometry, scale),
            T.TrivialAugmentWide(interpolation=geometry.interpolation)]


def _random_resized_crop(geometry: Geometry, scale: Sequence[float]) -> nn.Module:
    return T.RandomResizedCrop(geometry.size, scale=(float(scale[0]), float(scale[1])),
                               interpolation=geometry.interpolation, antialias=True)

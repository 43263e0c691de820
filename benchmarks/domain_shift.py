"""Does the doctor's domain-shift score separate photos from far data? (sets its threshold)

Builds the default trial's pretrained EfficientNet-Lite0 and data the way a trial does
(``build_parts`` on the composed config; generated images through a data module of the same
base class, so the same validation transform), then scores batches of 64 training images
with :func:`doctor.domain_shift.measure_domain_shift`, three seeds per domain:

- near: tiles of six bundled photos (scikit-image's astronaut, coffee, chelsea, rocket and
  scikit-learn's china and flower) at 224 and 64 px, and of the four scikit-image ones alone;
- in between: the same tiles in grayscale, microscopy (immunohistochemistry) and telescope
  (Hubble deep field) tiles;
- far: digits and stripes as ``data=digits`` / ``data=synthetic`` serve them, and at 224 px;
  generated line art (lines and circles on white).

Prints mean and min-max per domain, the margin (lowest far score / highest near score) for
1 to 4 compared layers, and the check's cost against a full forward pass.

    python benchmarks/domain_shift.py            # 2-3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import timm.data
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image, ImageDraw
from skimage import data as skimage_data
from sklearn.datasets import load_sample_images

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from data_modules.datamodules import (  # noqa: E402
    ClassificationDataModule,
    ImageDataset,
    Item,
    Split,
)
from doctor.domain_shift import measure_domain_shift  # noqa: E402
from sweeps.job.build import build_parts  # noqa: E402

BATCH = 64
#: A batch of images and the validation transform that normalizes them.
Sample = tuple[list[Image.Image], Callable[[Image.Image], torch.Tensor]]


class Arrays(ClassificationDataModule):
    """Generated images served like any data module's (one class: the split is not used)."""

    def __init__(self, images: list[np.ndarray], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.images = images

    def load_splits(self) -> tuple[list[str], Split, Split]:
        items: list[Item] = list(self.images)
        targets = np.zeros(len(items), dtype=np.int64)
        return ["all"], (items, targets), (items[:1], targets[:1])


def tiles(pictures: list[np.ndarray], seed: int, gray: bool = False) -> list[np.ndarray]:
    """Random square crops (96 px to the picture's short side) of the given pictures."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(BATCH):
        picture = pictures[rng.integers(len(pictures))]
        side = int(rng.integers(96, min(picture.shape[:2]) + 1))
        y, x = (int(rng.integers(0, n - side + 1)) for n in picture.shape[:2])
        tile = picture[y:y + side, x:x + side, :3]
        out.append(tile.mean(axis=2).astype(np.uint8) if gray else tile)
    return out


def line_art(seed: int, size: int = 224) -> list[np.ndarray]:
    """Black lines and circles, 1-4 px wide, on white."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(BATCH):
        image = Image.new("L", (size, size), 255)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 10))):
            x, y, x2, y2 = rng.integers(0, size, 4).tolist()
            width = int(rng.integers(1, 5))
            if rng.random() < 0.5:
                draw.line((x, y, x2, y2), fill=0, width=width)
            else:
                r = int(rng.integers(5, 60))
                draw.ellipse((x - r, y - r, x + r, y + r), outline=0, width=width)
        out.append(np.asarray(image))
    return out


def config(*overrides: str) -> Any:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["logger=none", *overrides])


def served(*overrides: str) -> Callable[[int], Sample]:
    """A project data module as a trial builds it; each seed draws other training images."""
    def sample(seed: int) -> Sample:
        datamodule = build_parts(config(f"seed={seed}", *overrides)).datamodule
        train = datamodule.train_set
        assert isinstance(train, ImageDataset)
        picked = np.random.default_rng(seed).choice(len(train), BATCH, replace=False)
        return [train.image(int(i)) for i in picked], datamodule.val_transform
    return sample


def generated(make: Callable[[int], list[np.ndarray]], pretrained: dict[str, Any],
              image_size: int | None = None) -> Callable[[int], Sample]:
    def sample(seed: int) -> Sample:
        datamodule = Arrays(make(seed), pretrained_config=pretrained, image_size=image_size)
        datamodule.setup("fit")
        train = datamodule.train_set
        assert isinstance(train, ImageDataset)
        return [train.image(i) for i in range(len(train))], datamodule.val_transform
    return sample


def domains(pretrained: dict[str, Any]) -> dict[str, tuple[str, Callable[[int], Sample]]]:
    """Name -> (group, sampler)."""
    scikit_image = [skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea(),
                    skimage_data.rocket()]
    photos = [*scikit_image, *load_sample_images().images]
    return {
        "photo tiles": ("near", generated(lambda s: tiles(photos, s), pretrained)),
        "photo tiles, 64 px": ("near", generated(lambda s: tiles(photos, s), pretrained, 64)),
        "photo tiles, skimage 4": ("near", generated(lambda s: tiles(scikit_image, s),
                                                     pretrained)),
        "grayscale photo tiles": ("between", generated(lambda s: tiles(photos, s, gray=True),
                                                       pretrained)),
        "microscopy (IHC)": ("between", generated(
            lambda s: tiles([skimage_data.immunohistochemistry()], s), pretrained)),
        "telescope (Hubble)": ("between", generated(
            lambda s: tiles([skimage_data.hubble_deep_field()], s), pretrained)),
        "digits (data=digits, 64 px)": ("far", served()),
        "digits, 224 px": ("far", served("data.image_size=null")),
        "line art": ("far", generated(line_art, pretrained)),
        "stripes (data=synthetic, 32 px)": ("far", served("data=synthetic",
                                                          "data.images_per_class=40")),
        "stripes, 224 px": ("far", served("data=synthetic", "data.images_per_class=40",
                                          "data.image_size=null")),
    }


def layer_scores(backbone: torch.nn.Module, sample: Sample, layers: int) -> list[float]:
    images, transform = sample
    batch = torch.stack([transform(image) for image in images])
    shift = measure_domain_shift(backbone, batch, layers)
    assert shift is not None, "the backbone has no pretraining statistics"
    return list(shift.layers.values())


def cost(backbone: torch.nn.Module, sample: Sample, layers: int) -> tuple[float, float]:
    """Median seconds of the check and of a full forward pass on one batch."""
    images, transform = sample
    batch = torch.stack([transform(image) for image in images])
    check, full = [], []
    for _ in range(3):
        started = time.perf_counter()
        measure_domain_shift(backbone, batch, layers)
        check.append(time.perf_counter() - started)
        started = time.perf_counter()
        with torch.no_grad():
            backbone.eval()(batch)
        full.append(time.perf_counter() - started)
    return statistics.median(check), statistics.median(full)


def report(scores: dict[str, tuple[str, list[list[float]]]], layers: int) -> None:
    """Per domain: mean and min-max over seeds of the score with ``layers`` layers; then the
    margin for each number of layers up to the measured ones."""
    print(f"score with the first {layers} BatchNorm layers ({BATCH} images, 3 seeds):")
    for name, (group, per_seed) in scores.items():
        values = [float(np.mean(s[:layers])) for s in per_seed]
        print(f"  {group:8s} {name:33s} mean {np.mean(values):7.2f}  "
              f"min-max {min(values):7.2f} - {max(values):7.2f}")
    for k in range(1, len(next(iter(scores.values()))[1][0]) + 1):
        def extreme(group: str, pick: Callable[..., float], k: int = k) -> float:
            return pick(float(np.mean(s[:k])) for g, per_seed in scores.values()
                        if g == group for s in per_seed)
        near, far = extreme("near", max), extreme("far", min)
        print(f"layers={k}: highest near {near:.2f}, lowest far {far:.2f}, "
              f"margin {far / near:.1f}x, geometric middle {np.sqrt(near * far):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="BatchNorm layers in the table")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = build_parts(config()).model.backbone
    pretrained = timm.data.resolve_model_data_config(backbone)
    samplers = domains(pretrained)
    scores = {name: (group, [layer_scores(backbone, sample(seed), 4) for seed in range(3)])
              for name, (group, sample) in samplers.items()}
    report(scores, args.layers)
    for name in ("photo tiles", "digits (data=digits, 64 px)"):
        check, full = cost(backbone, samplers[name][1](0), args.layers)
        print(f"cost on {BATCH} images of {name}: check {check:.3f} s, "
              f"full forward {full:.3f} s")


if __name__ == "__main__":
    main()

"""One epoch of image loading with and without the decoded-image cache (issue 5).

Writes ``--images`` generated 1024 x 768 JPEGs in two class folders, builds the
``data=image_folder`` datamodule for ``--backbone`` (no weights needed) with
``data.decoded_cache=false`` and ``true``, and iterates each one's training DataLoader once
per repeat, alternating. Prints the cache's one-time build, the median epoch of each, their
ratio, and after how many epochs the build has paid for itself.

    python benchmarks/decoded_cache.py                     # about 30 s on 2 CPU cores
    python benchmarks/decoded_cache.py --workers 2 --augment light
    python benchmarks/decoded_cache.py --torch-threads 0   # torch's default intra-op threads
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_modules.image_folder import ImageFolderDataModule  # noqa: E402
from sweeps.job.build import build  # noqa: E402


def write_jpegs(root: Path, count: int) -> None:
    """Photo-like 1024 x 768 JPEGs (ramps plus noise, quality 90), half per class."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:768, 0:1024]
    for i in range(count):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        ramps = np.stack([x * 0.25 + i, y * 0.33, (x + y) * 0.14], -1) % 256
        pixels = np.clip(ramps + rng.normal(0, 12, ramps.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


def datamodule(root: Path, cached: bool, args: argparse.Namespace) -> ImageFolderDataModule:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            "data=image_folder", f"data.root={root}", f"data.decoded_cache={str(cached).lower()}",
            f"data.num_workers={args.workers}", f"data.batch_size={args.batch_size}",
            f"augment={args.augment}", f"backbone={args.backbone}"])
    model = timm.create_model(args.backbone, pretrained=False, num_classes=0)
    return build(cfg, "data", pretrained_config=timm.data.resolve_model_data_config(model),
                 augmentation=build(cfg, "augment"))


def timed_setup(module: ImageFolderDataModule) -> float:
    started = time.perf_counter()
    module.setup("fit")
    return time.perf_counter() - started


def timed_epoch(module: ImageFolderDataModule) -> float:
    started = time.perf_counter()
    for _ in module.train_dataloader():
        pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="epochs per setting")
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--augment", default="none", help="conf/augment choice")
    parser.add_argument("--backbone", default="resnet18", help="conf/backbone choice")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="intra-op threads of this process (DataLoader workers use 1); "
                             "0 keeps torch's default")
    args = parser.parse_args()
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory() as work:
        os.environ["PLATEAU_CACHE_DIR"] = str(Path(work) / "cache")
        root = Path(work) / "images"
        write_jpegs(root, args.images)
        plain, cached = datamodule(root, False, args), datamodule(root, True, args)
        timed_setup(plain)
        build_s = timed_setup(cached)
        reopen_s = timed_setup(datamodule(root, True, args))
        off, on = [], []
        for _ in range(args.repeats):
            off.append(timed_epoch(plain))
            on.append(timed_epoch(cached))
    t_off, t_on = statistics.median(off), statistics.median(on)
    print(f"{args.images} JPEGs 1024x768, {args.backbone}, augment={args.augment}, "
          f"{args.workers} workers, {torch.get_num_threads()} torch threads, "
          f"median of {args.repeats} epochs")
    print(f"cache build (first setup): {build_s:.2f} s; reopening it: {reopen_s:.3f} s")
    print(f"train epoch: decoding {t_off:.2f} s, cached {t_on:.2f} s "
          f"({args.images / t_off:.0f} vs {args.images / t_on:.0f} images/s)")
    print(f"ratio decoding/cached: {t_off / t_on:.1f}x; the build pays for itself after "
          f"{build_s / max(t_off - t_on, 1e-9):.1f} epochs")


if __name__ == "__main__":
    main()

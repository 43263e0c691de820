"""Decoded-image cache: image folders decoded and resized once, served memory-mapped.

Real JPEG and PNG files (600 x 400, large enough that the resize to the pre-crop size matters)
in ``tmp_path``, the composed ``data=image_folder`` config with timm's ``test_resnet``
(160 px, crop_pct 0.95: pre-crop short side 168). Decodes are counted by wrapping the real
``load_rgb`` that both the cache and the uncached dataset call.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from omegaconf import DictConfig
from PIL import Image

from data_modules import images
from data_modules.cache_dir import CACHE_ENV
from data_modules.datamodules import ImageDataset
from data_modules.decoded_cache import PIXELS, CachedImageDataset, DecodedCache, validation_resize
from data_modules.image_folder import ImageFolderDataModule
from errors import PlateauError
from sweeps.job.build import build
from sweeps.job.prepare import prepare_trial

PRE_CROP = 168  # floor(160 / 0.95), test_resnet's validation resize
#: (name, width, height): landscape JPEGs, a portrait PNG, one JPEG below the pre-crop size.
FILES = [("a.jpg", 600, 400), ("b.jpg", 600, 400), ("c.jpg", 600, 400), ("d.png", 400, 600),
         ("small.jpg", 120, 90)]


def picture(width: int, height: int, seed: int) -> Image.Image:
    """Smooth color ramps plus noise: resizing it changes pixels in every interpolation."""
    y, x = np.mgrid[0:height, 0:width]
    ramps = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    noise = np.random.default_rng(seed).normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(ramps + noise, 0, 255).astype(np.uint8))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Two classes of five images each, in ``tmp_path/images``."""
    for label_seed, label in enumerate(("cat", "dog")):
        (tmp_path / "images" / label).mkdir(parents=True)
        for seed, (name, width, height) in enumerate(FILES):
            picture(width, height, 10 * label_seed + seed).save(tmp_path / "images" / label / name)
    return tmp_path / "images"


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files decoded from now on (the real decoder still runs)."""
    seen: list[Path] = []
    real = images.load_rgb

    def counting(path: Path) -> Image.Image:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(images, "load_rgb", counting)
    return seen


@functools.cache
def pretrained(backbone: str) -> dict[str, Any]:
    model = timm.create_model(backbone, pretrained=False, num_classes=0)
    return timm.data.resolve_model_data_config(model)


def folder_config(make_cfg: Callable[..., DictConfig], root: Path, *overrides: str) -> DictConfig:
    return make_cfg("logger=none", "data=image_folder", f"data.root={root}", "augment=none",
                    "data.num_workers=0", "data.val_fraction=0.4", "data.batch_size=4",
                    f"cache_dir={root.parent / 'cache'}", *overrides)


def folder_data(make_cfg: Callable[..., DictConfig], root: Path,
                *overrides: str) -> ImageFolderDataModule:
    """The set-up datamodule that ``data=image_folder`` builds for ``test_resnet``."""
    cfg = folder_config(make_cfg, root, *overrides)
    module = build(cfg, "data", pretrained_config=pretrained(cfg.backbone.name),
                   augmentation=build(cfg, "augment"))
    module.setup("fit")
    return module


def tensors(dataset: Any) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def entries(root: Path) -> list[Path]:
    return sorted((root.parent / "cache" / "decoded").iterdir())


def test_cached_tensors_are_bit_identical_to_decoding_the_files(make_cfg, root) -> None:
    cached = folder_data(make_cfg, root)
    plain = folder_data(make_cfg, root, "data.decoded_cache=false")

    assert isinstance(cached.val_set, CachedImageDataset)
    assert type(plain.val_set) is ImageDataset
    assert len(cached.val_set) == 4
    assert torch.equal(tensors(cached.val_set), tensors(plain.val_set))
    # augment=none trains on the validation geometry: identical too
    assert torch.equal(tensors(cached.train_set), tensors(plain.train_set))


def test_large_images_are_resized_to_the_pre_crop_size_and_small_ones_kept(make_cfg,
                                                                           root) -> None:
    module = folder_data(make_cfg, root)

    for dataset in (module.train_set, module.val_set):
        for i, path in enumerate(dataset.items):
            with Image.open(path) as original:
                width, height = original.size
            cached = dataset.image(i)
            assert cached.mode == "RGB"
            if min(width, height) > PRE_CROP:
                assert min(cached.size) == PRE_CROP
                assert abs(cached.width / cached.height - width / height) < 0.01
            else:
                assert cached.size == (width, height)  # never upscaled


def test_second_setup_reads_the_cache_without_decoding(make_cfg, root, decodes) -> None:
    folder_data(make_cfg, root)
    assert len(decodes) == 10  # each file once
    decodes.clear()

    module = folder_data(make_cfg, root)
    for _ in range(2):  # two epochs
        tensors(module.train_set), tensors(module.val_set)

    assert decodes == []


def test_decoded_cache_false_decodes_every_image_every_epoch(make_cfg, root, decodes) -> None:
    module = folder_data(make_cfg, root, "data.decoded_cache=false")
    for _ in range(2):
        tensors(module.train_set), tensors(module.val_set)

    assert len(decodes) == 20
    assert not (root.parent / "cache" / "decoded").exists()


def test_changed_file_invalidates_the_cache(make_cfg, root, decodes) -> None:
    folder_data(make_cfg, root)
    changed = root / "cat" / "a.jpg"
    picture(600, 400, seed=99).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    decodes.clear()

    module = folder_data(make_cfg, root)

    assert len(decodes) == 10
    assert len(entries(root)) == 2
    dataset = next(d for d in (module.train_set, module.val_set) if changed in d.items)
    index = dataset.items.index(changed)
    expected = validation_resize(module.val_transform)(images.load_rgb(changed))
    assert np.array_equal(np.asarray(dataset.image(index)), np.asarray(expected))


def test_file_changed_after_setup_is_decoded_again_not_served_stale(make_cfg, root,
                                                                    decodes) -> None:
    module = folder_data(make_cfg, root)
    dataset = module.train_set
    changed = dataset.items[0]
    picture(600, 400, seed=77).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    decodes.clear()

    served = np.asarray(dataset.image(0))

    assert decodes == [changed]
    expected = validation_resize(module.val_transform)(images.load_rgb(changed))
    assert np.array_equal(served, np.asarray(expected))


def test_another_pre_crop_size_gets_its_own_cache(make_cfg, root, decodes) -> None:
    folder_data(make_cfg, root)
    smaller = folder_data(make_cfg, root, "data.image_size=128")  # pre-crop 134
    decodes.clear()

    folder_data(make_cfg, root)
    folder_data(make_cfg, root, "data.image_size=128")

    assert len(entries(root)) == 2
    assert decodes == []
    assert max(min(smaller.train_set.image(i).size) for i in range(len(smaller.train_set))) == 134


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated pixels": lambda entry: os.truncate(entry / PIXELS, 1000),
    "missing index": lambda entry: (entry / "index.npy").unlink(),
    "garbage meta": lambda entry: (entry / "meta.json").write_text("{not json"),
    "garbage index": lambda entry: (entry / "index.npy").write_bytes(b"\x93NUMPY junk"),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_cache_is_rebuilt(make_cfg, root, decodes, damage, caplog) -> None:
    folder_data(make_cfg, root)
    (entry,) = entries(root)
    damage(entry)
    decodes.clear()

    module = folder_data(make_cfg, root)

    assert len(decodes) == 10
    assert "rebuilding damaged decoded-image cache" in caplog.text
    assert entries(root) == [entry]  # no staging or damaged copies left behind
    plain = folder_data(make_cfg, root, "data.decoded_cache=false")
    assert torch.equal(tensors(module.val_set), tensors(plain.val_set))


def test_unwritable_cache_dir_falls_back_to_decoding_with_a_warning(make_cfg, root,
                                                                    caplog) -> None:
    blocker = root.parent / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")

    module = folder_data(make_cfg, root, f"cache_dir={blocker}")

    assert "decoded-image cache not written" in caplog.text
    assert type(module.val_set) is ImageDataset
    assert tensors(module.val_set).shape == (4, 3, 160, 160)


def test_second_builder_of_an_entry_keeps_the_first_and_leaves_no_staging(make_cfg,
                                                                          root) -> None:
    module = folder_data(make_cfg, root)
    (entry,) = entries(root)
    files = sorted(root.rglob("*.*"), key=str)
    cache = DecodedCache(entry.parent, validation_resize(module.val_transform))
    before = (entry / PIXELS).stat().st_ino

    cache._build(entry, files)  # a concurrent trial that finished second

    assert entries(root) == [entry]
    assert (entry / PIXELS).stat().st_ino == before


def test_undecodable_file_is_a_one_line_error_naming_it(make_cfg, root) -> None:
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")

    with pytest.raises(PlateauError, match=r"cannot decode image .*broken\.jpg"):
        folder_data(make_cfg, root)
    assert entries(root) == []  # the staging folder is removed


def test_pickled_dataset_carries_the_index_not_the_pixels(make_cfg, root) -> None:
    module = folder_data(make_cfg, root)
    dataset = module.train_set
    tensors(dataset)  # the memory map is open in this process

    payload = pickle.dumps(dataset)

    (entry,) = entries(root)
    assert len(payload) < 20_000 < (entry / PIXELS).stat().st_size
    assert torch.equal(tensors(pickle.loads(payload)), tensors(dataset))


def test_cache_dir_follows_the_top_level_key_or_the_environment(make_cfg, root) -> None:
    configured = folder_data(make_cfg, root)
    default = folder_data(make_cfg, root, "cache_dir=null")

    assert configured.cache_dir == root.parent / "cache"
    assert default.cache_dir == Path(os.environ[CACHE_ENV])


def test_trial_runs_on_the_cache_without_decoding(make_cfg, root, decodes) -> None:
    cold = prepare_trial(folder_config(make_cfg, root, "data.num_workers=2"))
    cold.trainer.fit(cold.model, datamodule=cold.datamodule)  # workers map the cache lazily
    assert cold.trainer.state.finished
    decodes.clear()

    warm = prepare_trial(folder_config(make_cfg, root))
    warm.trainer.fit(warm.model, datamodule=warm.datamodule)

    assert warm.trainer.state.finished
    assert isinstance(warm.datamodule.train_set, CachedImageDataset)
    assert decodes == []

"""Bad image files in ``data=image_folder``: found at setup, before any training; reported
(default) or skipped (``data.skip_bad_files``); a file that goes bad later fails naming it.

Every file is real, written to ``tmp_path`` with PIL: empty, truncated, text and random bytes
under image suffixes, and valid images of unusual modes and sizes. Both checks run: the
decoded-image cache's build (``decoded_cache=True``) and the plain scan (``False``); caches
go to ``tmp_path``. Decodes are counted, as in ``test_decoded_cache.py``, by wrapping the
real functions.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import ROOT
from data_modules import bad_files, images
from data_modules.bad_files import UnreadableImageError
from data_modules.decoded_cache import CachedImageDataset
from data_modules.image_folder import ImageFolderDataModule
from errors import PlateauError

GOOD_PER_CLASS = 6
#: Files that every folder holds and nothing may report: hidden, AppleDouble, not images.
IGNORED = (".DS_Store", "._foo.jpg", "notes.txt")


@functools.cache
def pretrained(backbone: str = "test_resnet") -> dict[str, Any]:
    model = timm.create_model(backbone, pretrained=False, num_classes=0)
    return timm.data.resolve_model_data_config(model)


def noise(width: int = 32, height: int = 32, seed: int = 0) -> Image.Image:
    return Image.fromarray(
        np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def half(content: bytes) -> bytes:
    return content[:len(content) // 2]


def image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog")) -> list[Path]:
    """``GOOD_PER_CLASS`` 32 x 32 JPEGs per class, plus the :data:`IGNORED` junk; the images."""
    good = []
    for label_seed, label in enumerate(classes):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(GOOD_PER_CLASS):
            good.append(folder / f"{i}.jpg")
            noise(seed=100 * label_seed + i).save(good[-1])
        for junk in IGNORED:
            (folder / junk).write_bytes(b"\x00\x05\x16\x07 AppleDouble or Finder junk")
    return good


def module(root: Path, **kwargs: Any) -> ImageFolderDataModule:
    kwargs = {"image_size": 32, "val_fraction": 0.2, "decoded_cache": True,  # as configured
              "cache_dir": str(root.parent / "cache"), **kwargs}
    return ImageFolderDataModule(root=str(root), pretrained_config=pretrained(), **kwargs)


def set_up(root: Path, **kwargs: Any) -> ImageFolderDataModule:
    data = module(root, **kwargs)
    data.setup("fit")
    return data


def items(data: ImageFolderDataModule) -> list[Path]:
    return [*data.train_set.items, *data.val_set.items]


# --- the bad files: each kind found, named, counted -----------------------------------------

BAD: dict[str, tuple[str, Callable[[], bytes], str]] = {
    # kind: (file name, content, reason reported)
    "zero-byte jpg": ("empty.jpg", lambda: b"", "zero bytes"),
    "truncated jpeg": ("cut.jpg", lambda: half(encoded(noise(), "JPEG")), "truncated"),
    "truncated png": ("cut.png", lambda: half(encoded(noise(), "PNG")), "truncated"),
    "text named png": ("readme.png", lambda: b"these are my notes, not a picture\n",
                       "not an image"),
    "random bytes named jpg": (
        "noise.jpg", lambda: np.random.default_rng(7).integers(0, 256, 4096, np.uint8).tobytes(),
        "not an image"),
}
CACHE = pytest.mark.parametrize("decoded_cache", [True, False], ids=["cache", "no-cache"])


@pytest.fixture(params=list(BAD))
def bad_root(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path, str]:
    """(root, the one bad file in ``root/dog``, its reason) for each kind of bad file."""
    name, content, reason = BAD[request.param]
    root = tmp_path / "images"
    image_folder(root)
    (root / "dog" / name).write_bytes(content())
    return root, root / "dog" / name, reason


@CACHE
def test_bad_file_stops_setup_with_one_line_naming_it_and_the_fix(bad_root,
                                                                   decoded_cache) -> None:
    root, bad, reason = bad_root

    with pytest.raises(PlateauError) as raised:
        set_up(root, decoded_cache=decoded_cache)

    message = str(raised.value)
    assert "\n" not in message
    assert f"1 of {2 * GOOD_PER_CLASS + 1} are bad: dog/{bad.name} ({reason})" in message
    assert "remove or repair them, or set data.skip_bad_files=true" in message
    assert not any(junk in message for junk in IGNORED)


@CACHE
def test_skip_bad_files_leaves_the_bad_file_out_with_one_warning(bad_root, decoded_cache,
                                                                 caplog) -> None:
    root, bad, reason = bad_root

    with caplog.at_level(logging.WARNING, logger="data_modules"):
        data = set_up(root, decoded_cache=decoded_cache, skip_bad_files=True)

    assert bad not in items(data)
    assert len(items(data)) == 2 * GOOD_PER_CLASS
    (warning,) = [r.getMessage() for r in caplog.records if "bad image file" in r.getMessage()]
    assert f"skipping 1 bad image file(s) of {2 * GOOD_PER_CLASS + 1}" in warning
    assert f"dog/{bad.name} ({reason})" in warning
    assert not any(junk in caplog.text for junk in IGNORED)
    assert data.train_set[0][0].shape == (3, 32, 32)


def test_many_bad_files_are_counted_and_the_first_three_named(tmp_path) -> None:
    root = tmp_path / "images"
    image_folder(root)
    for name, content, _ in BAD.values():
        (root / "cat" / name).write_bytes(content())

    with pytest.raises(PlateauError, match=r"5 of 17 are bad: cat/cut\.jpg \(truncated\), "
                                           r"cat/cut\.png \(truncated\), cat/empty\.jpg "
                                           r"\(zero bytes\) and 2 more;"):
        set_up(root)


def test_classes_and_targets_of_the_other_files_do_not_change_when_skipping(tmp_path) -> None:
    root = tmp_path / "images"
    good = image_folder(root, classes=("ant", "bee", "cat"))
    for label in ("ant", "cat"):
        (root / label / "broken.jpg").write_bytes(b"")

    data = set_up(root, skip_bad_files=True)

    assert data.classes == ["ant", "bee", "cat"]
    assert sorted(items(data)) == sorted(good)
    for dataset in (data.train_set, data.val_set):
        for path, target in zip(dataset.items, dataset.targets.tolist(), strict=True):
            assert path.parent.name == data.classes[target]


@CACHE
def test_class_left_empty_by_skipping_is_an_error_naming_it(tmp_path, decoded_cache) -> None:
    root = tmp_path / "images"
    image_folder(root, classes=("cat",))
    (root / "dog").mkdir()
    (root / "dog" / "a.jpg").write_bytes(b"")
    (root / "dog" / "b.png").write_bytes(b"not a png")

    with pytest.raises(PlateauError, match=r"class folder\(s\) dog in .* hold no images once "
                                           r"the bad files are skipped"):
        set_up(root, decoded_cache=decoded_cache, skip_bad_files=True)


def test_bad_file_in_a_val_folder_is_named_and_skipped(tmp_path) -> None:
    for split in ("train", "val"):
        image_folder(tmp_path / "images" / split)
    bad = tmp_path / "images" / "val" / "cat" / "cut.jpg"
    bad.write_bytes(encoded(noise(), "JPEG")[:300])

    with pytest.raises(PlateauError, match=r"1 of 25 are bad: val/cat/cut\.jpg \(truncated\)"):
        set_up(tmp_path / "images")
    data = set_up(tmp_path / "images", skip_bad_files=True)

    assert bad not in data.val_set.items
    assert len(data.val_set) == 2 * GOOD_PER_CLASS


def test_repaired_file_is_used_at_the_next_setup(tmp_path) -> None:
    root = tmp_path / "images"
    image_folder(root)
    bad = root / "cat" / "cut.jpg"
    bad.write_bytes(encoded(noise(), "JPEG")[:300])
    with pytest.raises(PlateauError, match="cut.jpg"):
        set_up(root)

    noise(seed=42).save(bad)

    assert bad in items(set_up(root))


# --- valid images of unusual modes and sizes: nothing bad, 3-channel tensors ----------------

def solid(mode: str, color: Any, size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new(mode, size, color)


def palette(transparent: bool) -> Image.Image:
    image = Image.new("P", (40, 30), 1)
    image.putpalette([0, 0, 0, 20, 40, 220] + [0] * 762)
    if transparent:
        image.paste(0, (0, 0, 20, 30))  # left half index 0: the transparent one
        image.info["transparency"] = 0
    return image


#: name: (image, expected RGB of its top-right pixel)
UNUSUAL: dict[str, tuple[Callable[[], Image.Image], tuple[int, int, int]]] = {
    "deep16.png": (lambda: Image.fromarray(np.full((30, 40), 100 * 257, np.uint16)),
                   (100, 100, 100)),
    "cmyk.jpg": (lambda: solid("CMYK", (0, 255, 255, 0)), (255, 0, 0)),
    "palette.png": (lambda: palette(transparent=False), (20, 40, 220)),
    "palette_transparent.png": (lambda: palette(transparent=True), (20, 40, 220)),
    "gray_alpha.png": (lambda: solid("LA", (50, 255)), (50, 50, 50)),
    "rgba.png": (lambda: solid("RGBA", (10, 200, 30, 255)), (10, 200, 30)),
    "large.jpg": (lambda: solid("RGB", (200, 100, 50), (6000, 4000)), (200, 100, 50)),
}


@CACHE
def test_unusual_valid_images_are_not_bad_and_give_rgb_tensors(tmp_path, decoded_cache,
                                                               caplog) -> None:
    root = tmp_path / "images"
    image_folder(root)
    for name, (make, _) in UNUSUAL.items():
        make().save(root / "cat" / name)
    assert Image.open(root / "cat" / "deep16.png").mode == "I;16"

    with caplog.at_level(logging.WARNING, logger="data_modules"):
        data = set_up(root, decoded_cache=decoded_cache)

    assert "bad image file" not in caplog.text
    assert len(items(data)) == 2 * GOOD_PER_CLASS + len(UNUSUAL)
    for dataset in (data.train_set, data.val_set):
        for i, path in enumerate(dataset.items):
            assert dataset[i][0].shape == (3, 32, 32)
            if path.name in UNUSUAL:
                rgb = np.asarray(dataset.image(i))
                assert np.abs(rgb[0, -1].astype(int) - UNUSUAL[path.name][1]).max() <= 6, path
    # the transparent half of the palette image is white, not the black it stores
    transparent = images.load_rgb(root / "cat" / "palette_transparent.png")
    assert transparent.getpixel((0, 0)) == (255, 255, 255)


def test_image_beyond_twice_pils_pixel_limit_is_bad_and_below_it_loads(tmp_path, monkeypatch,
                                                                       recwarn) -> None:
    # the limit lowered to a megapixel: images of 1.5 MP load, of 3 MP are bad
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    root = tmp_path / "images"
    image_folder(root)
    solid("RGB", (9, 9, 9), (1500, 1000)).save(root / "cat" / "big.jpg")
    solid("RGB", (9, 9, 9), (3000, 1000)).save(root / "dog" / "huge.jpg")

    with pytest.raises(PlateauError, match=r"1 of 14 are bad: dog/huge\.jpg \(too large for "
                                           r"PIL \(Image size \(3000000 pixels\) exceeds limit"):
        set_up(root)
    assert any(w.category is Image.DecompressionBombWarning for w in recwarn)  # PIL's, for big


# --- decoding each file once: the scan's verdict is kept ------------------------------------

@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Files fully decoded from now on, by the cache (``load_rgb``) or the scan (the real
    functions still run)."""
    seen: list[Path] = []

    def counting(real: Callable[[Path], Any]) -> Callable[[Path], Any]:
        def decode(path: Path) -> Any:
            seen.append(path)
            return real(path)

        return decode

    monkeypatch.setattr(images, "load_rgb", counting(images.load_rgb))
    monkeypatch.setattr(bad_files, "decode_problem", counting(bad_files.decode_problem))
    return seen


@CACHE
def test_the_check_decodes_each_file_once_and_a_second_setup_none(tmp_path, decoded_cache,
                                                                  decodes) -> None:
    good = image_folder(tmp_path / "images")

    set_up(tmp_path / "images", decoded_cache=decoded_cache)
    assert sorted(decodes) == sorted(good)
    decodes.clear()

    set_up(tmp_path / "images", decoded_cache=decoded_cache)
    assert decodes == []


@CACHE
def test_a_second_setup_with_bad_files_decodes_nothing(tmp_path, decoded_cache,
                                                       decodes) -> None:
    root = tmp_path / "images"
    image_folder(root)
    (root / "cat" / "noise.jpg").write_bytes(b"\x01" * 100)
    with pytest.raises(PlateauError):
        set_up(root, decoded_cache=decoded_cache)
    set_up(root, decoded_cache=decoded_cache, skip_bad_files=True)
    decodes.clear()

    with pytest.raises(PlateauError, match="noise.jpg"):  # stops at once
        set_up(root, decoded_cache=decoded_cache)
    data = set_up(root, decoded_cache=decoded_cache, skip_bad_files=True)

    assert decodes == []
    assert isinstance(data.train_set, CachedImageDataset) == decoded_cache


# --- files that go bad after the scan -------------------------------------------------------

def truncate(path: Path) -> None:
    path.write_bytes(half(path.read_bytes()))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize(("damage", "reason"), [(Path.unlink, "deleted"), (truncate, "truncated")],
                         ids=["deleted", "truncated"])
def test_file_gone_bad_after_setup_fails_naming_it(tmp_path, damage, reason) -> None:
    image_folder(tmp_path / "images")
    data = set_up(tmp_path / "images", decoded_cache=False)
    path = data.train_set.items[0]
    damage(path)

    with pytest.raises(UnreadableImageError) as raised:
        data.train_set[0]

    assert str(raised.value) == (
        f"image {path} could not be read during training (deleted or changed since the scan at "
        f"setup): {reason}; restore or remove it and run again")


def test_cached_image_is_served_after_its_file_is_deleted(tmp_path) -> None:
    image_folder(tmp_path / "images")
    data = set_up(tmp_path / "images")
    before = data.train_set[0][0]

    data.train_set.items[0].unlink()

    assert torch.equal(data.train_set[0][0], before)


def test_cached_image_whose_file_is_truncated_after_setup_fails_naming_it(tmp_path) -> None:
    image_folder(tmp_path / "images")
    data = set_up(tmp_path / "images")
    path = data.train_set.items[0]
    truncate(path)

    with pytest.raises(UnreadableImageError, match=rf"image {path} could not be read during "
                                                   r"training \(.*\): truncated;"):
        data.train_set[0]


def test_error_from_a_dataloader_worker_is_one_line_naming_the_file(tmp_path) -> None:
    image_folder(tmp_path / "images")
    data = set_up(tmp_path / "images", decoded_cache=False, num_workers=1, batch_size=64)
    path = data.train_set.items[3]
    path.unlink()

    with pytest.raises(UnreadableImageError) as raised:
        next(iter(data.train_dataloader()))

    assert str(raised.value) == (
        f"image {path} could not be read during training (deleted or changed since the scan at "
        "setup): deleted; restore or remove it and run again (in DataLoader worker process 0)")


# --- python sweep.py end to end ---------------------------------------------------------------

def sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PLATEAU_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "data=image_folder",
         f"data.root={tmp_path / 'images'}", "data.num_workers=0", "data.batch_size=4",
         "backbone=test_resnet",
         "trainer=cpu", "trainer.max_epochs=1",
         f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *overrides],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def runs(tmp_path: Path) -> list[Any]:
    if not (tmp_path / "mlflow.db").exists():
        return []
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(experiments)) if experiments else []


@pytest.fixture
def one_truncated_jpeg(tmp_path: Path) -> Path:
    image_folder(tmp_path / "images")
    bad = tmp_path / "images" / "cat" / "holiday.jpg"
    bad.write_bytes(encoded(noise(), "JPEG")[:400])
    return bad


@pytest.mark.slow
def test_sweep_stops_before_training_on_a_truncated_jpeg(tmp_path, one_truncated_jpeg) -> None:
    result = sweep(tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "cat/holiday.jpg (truncated)" in output
    assert "data.skip_bad_files=true" in output
    assert "Traceback" not in output
    assert runs(tmp_path) == []  # nothing half-written


@pytest.mark.slow
def test_sweep_trains_without_a_truncated_jpeg_when_told_to_skip(tmp_path,
                                                                 one_truncated_jpeg) -> None:
    result = sweep(tmp_path, "data.skip_bad_files=true")

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "skipping 1 bad image file(s)" in output
    assert "cat/holiday.jpg (truncated)" in output
    (run,) = runs(tmp_path)
    assert run.info.status == "FINISHED"

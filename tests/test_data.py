"""Data: decoding the user's images, folder layouts and splits, digits, class balance, transforms.

Everything runs on real files written to ``tmp_path``, scikit-learn's bundled digits and timm
backbones built without weights: ``test_resnet`` (mean/std 0.5, 160 px) next to ``resnet18``
(ImageNet mean/std, 224 px) shows that preprocessing follows the backbone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torchvision.transforms import v2 as T

from data_modules import transforms
from data_modules.class_balance import ClassWeighting
from data_modules.datamodules import stratified_split
from data_modules.digits import DigitsDataModule, long_tail_counts
from data_modules.image_folder import ImageFolderDataModule
from data_modules.images import load_rgb
from data_modules.transforms import build_transforms, resolve_data_config
from errors import PlateauError

AUGMENT = Path(__file__).resolve().parents[1] / "conf" / "augment"
POLICIES = sorted(path.stem for path in AUGMENT.glob("*.yaml"))
RANDOM_POLICIES = [name for name in POLICIES if name != "none"]


@functools.cache
def pretrained(backbone: str) -> dict[str, Any]:
    """The backbone's own ``resolve_model_data_config`` (built without weights: no download)."""
    model = timm.create_model(backbone, pretrained=False, num_classes=0)
    return timm.data.resolve_model_data_config(model)


def policy(name: str) -> transforms.Augmentation:
    """The partial that ``augment=<name>`` instantiates (``conf/augment/<name>.yaml``)."""
    augmentation = instantiate(OmegaConf.load(AUGMENT / f"{name}.yaml"))
    assert isinstance(augmentation, functools.partial)
    return augmentation


def texture(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """Random RGB uint8 noise: any crop, flip or color op changes it."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def save_pngs(folder: Path, count: int, start: int = 0) -> list[Path]:
    return [save(folder / f"{start + i}.png", Image.fromarray(texture(6, 6, seed=start + i)))
            for i in range(count)]


# --- decoding: every PIL mode a user's folder may hold ends up 8-bit RGB ---------------------

def rgb_jpeg(seed: int) -> Image.Image:
    return Image.fromarray(texture(12, 10, seed))


def gray_png(seed: int) -> Image.Image:
    return Image.fromarray(texture(12, 10, seed)[..., 0])  # mode L


def rgba_png(seed: int) -> Image.Image:
    pixels = np.dstack([texture(12, 10, seed), np.full((12, 10), 255, np.uint8)])
    pixels[:, :5] = (0, 0, 0, 0)  # left half fully transparent, stored as black
    return Image.fromarray(pixels)


def palette_png(seed: int) -> Image.Image:
    return Image.fromarray(texture(12, 10, seed)).convert("P")


def deep_png(seed: int) -> Image.Image:
    ramp = np.linspace(0, 65535, 12 * 10).reshape(12, 10)
    return Image.fromarray(np.roll(ramp, seed).astype(np.uint16))  # mode I;16


def gray_alpha_png(seed: int) -> Image.Image:
    return gray_png(seed).convert("LA")


def cmyk_jpeg(seed: int) -> Image.Image:
    return rgb_jpeg(seed).convert("CMYK")


def bilevel_bmp(seed: int) -> Image.Image:
    return gray_png(seed).convert("1")


MIXED_FILES: dict[str, Callable[[int], Image.Image]] = {
    "rgb.jpg": rgb_jpeg, "gray.png": gray_png, "rgba.png": rgba_png,
    "palette.png": palette_png, "deep16.png": deep_png,
}
ALL_FILES = {**MIXED_FILES, "gray_alpha.png": gray_alpha_png, "cmyk.jpg": cmyk_jpeg,
             "bilevel.bmp": bilevel_bmp}


@pytest.mark.parametrize("name", list(ALL_FILES))
def test_every_image_mode_decodes_to_rgb_of_the_same_size(tmp_path, name):
    path = save(tmp_path / name, ALL_FILES[name](0))

    image = load_rgb(path)

    assert image.mode == "RGB"
    assert image.size == (10, 12)


def transparent_rgba() -> Image.Image:
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[0, 0] = (0, 0, 0, 0)
    pixels[1, 1] = (200, 30, 60, 255)
    return Image.fromarray(pixels)


def transparent_gray_alpha() -> Image.Image:
    pixels = np.zeros((2, 2, 2), np.uint8)
    pixels[1, 1] = (100, 255)
    gray = Image.fromarray(pixels[..., 0])
    gray.putalpha(Image.fromarray(pixels[..., 1]))
    return gray


def transparent_palette() -> Image.Image:
    image = Image.new("P", (2, 2), 0)
    image.putpalette([0, 0, 0, 200, 30, 60] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0
    return image


@pytest.mark.parametrize(("make", "opaque"), [
    (transparent_rgba, (200, 30, 60)),
    (transparent_gray_alpha, (100, 100, 100)),
    (transparent_palette, (200, 30, 60)),
], ids=["RGBA", "LA", "P-with-transparency"])
def test_transparent_pixels_become_white_and_opaque_ones_keep_their_color(tmp_path, make, opaque):
    path = save(tmp_path / "transparent.png", make())

    pixels = np.asarray(load_rgb(path))

    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[1, 1]) == opaque


@pytest.mark.parametrize(("mode", "key", "opaque"), [
    ("RGB", (0, 0, 0), (200, 30, 60)),
    ("L", 0, (100, 100, 100)),
])
def test_color_keyed_png_transparent_pixels_become_white(tmp_path, mode, key, opaque):
    # PNG's tRNS chunk on an RGB or grayscale image marks one color as fully transparent;
    # browsers and image viewers show those pixels as the background, i.e. white here.
    pixels = np.zeros((2, 2, 3), np.uint8)
    pixels[1, 1] = opaque
    path = tmp_path / "color_key.png"
    Image.fromarray(pixels).convert(mode).save(path, transparency=key)
    assert Image.open(path).info["transparency"] == key

    rgb = np.asarray(load_rgb(path))

    assert tuple(rgb[1, 1]) == opaque
    assert tuple(rgb[0, 0]) == (255, 255, 255), (
        f"a transparent pixel of a color-keyed {mode} PNG decoded as {tuple(rgb[0, 0])}, "
        "not white: to_rgb honors info['transparency'] only for mode P"
    )


def test_sixteen_bit_image_spanning_full_range_maps_to_0_to_255(tmp_path):
    ramp = np.linspace(0, 65535, 256 * 4).reshape(4, 256).astype(np.uint16)
    path = save(tmp_path / "deep16.png", Image.fromarray(ramp))
    assert Image.open(path).mode == "I;16"

    gray = np.asarray(load_rgb(path))[..., 0].astype(int)

    assert gray.min() == 0
    assert gray.max() == 255
    assert gray[0, 0] == 0
    assert gray[-1, -1] == 255
    assert (np.diff(gray.ravel()) >= 0).all()  # the ramp stays a ramp, nothing clipped
    assert len(np.unique(gray)) > 200


# --- image folders ---------------------------------------------------------------------------

def folder_module(root: Path | str | None, **kwargs: Any) -> ImageFolderDataModule:
    return ImageFolderDataModule(root=None if root is None else str(root),
                                 pretrained_config=pretrained("test_resnet"), **kwargs)


def test_folder_of_mixed_modes_loads_as_rgb_float_batches(tmp_path):
    for seed, label in enumerate(("cat", "dog")):
        for name, make in MIXED_FILES.items():
            save(tmp_path / label / name, make(seed))
    module = folder_module(tmp_path, image_size=32, batch_size=4)

    module.setup("fit")

    datasets = (module.train_set, module.val_set)
    assert sum(len(d) for d in datasets) == 10
    assert all(d.image(i).mode == "RGB" for d in datasets for i in range(len(d)))
    batches = list(module.train_dataloader())
    assert batches
    for images, labels in batches:
        assert images.dtype == torch.float32
        assert images.shape == (len(labels), 3, 32, 32)


def test_class_names_are_sorted_folder_names_and_targets_follow_the_folder(tmp_path):
    for label in ("zebra", "ant", "moth"):
        save_pngs(tmp_path / label, 3)
    module = folder_module(tmp_path)

    module.setup()

    assert module.classes == ["ant", "moth", "zebra"]
    for dataset in (module.train_set, module.val_set):
        for item, target in zip(dataset.items, dataset.targets.tolist(), strict=True):
            assert item.parent.name == module.classes[target]


@pytest.mark.parametrize(("counts", "fraction", "expected_val"), [
    ([10, 4, 2], 0.3, [3, 1, 1]),
    ([20, 20], 0.5, [10, 10]),
    ([5, 1], 0.2, [1, 0]),   # a lone image stays in training
    ([2, 3], 0.9, [1, 2]),   # every class keeps at least one training image
])
def test_stratified_split_holds_out_val_fraction_of_each_class(counts, fraction, expected_val):
    targets = np.repeat(np.arange(len(counts)), counts)

    train, val = stratified_split(targets, fraction, seed=0)

    assert np.bincount(targets[val], minlength=len(counts)).tolist() == expected_val
    assert sorted([*train, *val]) == list(range(len(targets)))


def test_class_folders_get_a_stratified_split_honoring_val_fraction(tmp_path):
    for label, count in (("a", 10), ("b", 4), ("c", 2)):
        save_pngs(tmp_path / label, count)
    module = folder_module(tmp_path, val_fraction=0.3)

    module.setup()

    assert module.val_set.targets.bincount().tolist() == [3, 1, 1]
    assert module.class_counts.tolist() == [7, 3, 1]


def val_files(root: Path, seed: int) -> list[Path]:
    module = folder_module(root, seed=seed, val_fraction=0.3)
    module.setup()
    return module.val_set.items


def test_same_seed_gives_same_split_and_another_seed_a_different_one(tmp_path):
    for label in ("a", "b"):
        save_pngs(tmp_path / label, 10)

    assert val_files(tmp_path, seed=3) == val_files(tmp_path, seed=3)
    assert val_files(tmp_path, seed=3) != val_files(tmp_path, seed=4)


def test_train_and_val_folders_are_used_exactly_as_given(tmp_path):
    train = [*save_pngs(tmp_path / "train" / "a", 3), *save_pngs(tmp_path / "train" / "b", 5)]
    val = [*save_pngs(tmp_path / "val" / "a", 2, start=10),
           *save_pngs(tmp_path / "val" / "b", 1, start=20)]
    module = folder_module(tmp_path, val_fraction=0.5)

    module.setup()

    assert module.classes == ["a", "b"]
    assert sorted(module.train_set.items) == sorted(train)
    assert sorted(module.val_set.items) == sorted(val)
    assert module.val_set.targets.tolist() == [0, 0, 1]


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    kept = [*save_pngs(tmp_path / "cat", 2), save(tmp_path / "cat" / "sub" / "nested.png",
                                                   Image.new("RGB", (4, 4))),
            *save_pngs(tmp_path / "dog", 2), save(tmp_path / "dog" / "UPPER.JPG", rgb_jpeg(0))]
    for junk in ("cat/.DS_Store", "cat/notes.txt", "dog/Thumbs.db", "readme.md"):
        (tmp_path / junk).write_bytes(b"\x00\x01 not an image")
    save(tmp_path / "cat" / ".hidden.png", Image.new("RGB", (4, 4)))
    save(tmp_path / "cat" / ".thumbs" / "thumb.png", Image.new("RGB", (4, 4)))
    save(tmp_path / ".git" / "logo.png", Image.new("RGB", (4, 4)))
    module = folder_module(tmp_path)

    module.setup()

    assert module.classes == ["cat", "dog"]
    assert sorted([*module.train_set.items, *module.val_set.items]) == sorted(kept)


def no_root(tmp_path: Path) -> dict[str, Any]:
    return {"root": None}


def placeholder_root(tmp_path: Path) -> dict[str, Any]:
    return {"root": "???"}


def missing_root(tmp_path: Path) -> dict[str, Any]:
    return {"root": tmp_path / "nowhere"}


def file_root(tmp_path: Path) -> dict[str, Any]:
    return {"root": save(tmp_path / "photo.png", Image.new("RGB", (4, 4)))}


def no_class_folder(tmp_path: Path) -> dict[str, Any]:
    save(tmp_path / "loose.png", Image.new("RGB", (4, 4)))
    return {"root": tmp_path}


def one_class(tmp_path: Path) -> dict[str, Any]:
    save_pngs(tmp_path / "cat", 3)
    return {"root": tmp_path}


def empty_class(tmp_path: Path) -> dict[str, Any]:
    save_pngs(tmp_path / "cat", 3)
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("no images here")
    return {"root": tmp_path}


def val_class_not_in_train(tmp_path: Path) -> dict[str, Any]:
    for split, labels in (("train", ("cat", "dog")), ("val", ("cat", "owl"))):
        for label in labels:
            save_pngs(tmp_path / split / label, 2)
    return {"root": tmp_path}


def one_class_in_train(tmp_path: Path) -> dict[str, Any]:
    for split in ("train", "val"):
        save_pngs(tmp_path / split / "cat", 2)
    return {"root": tmp_path}


def bad_val_fraction(fraction: float) -> Callable[[Path], dict[str, Any]]:
    def layout(tmp_path: Path) -> dict[str, Any]:
        for label in ("cat", "dog"):
            save_pngs(tmp_path / label, 4)
        return {"root": tmp_path, "val_fraction": fraction}

    layout.__name__ = f"val_fraction={fraction}"
    return layout


UNUSABLE_FOLDERS = [
    (no_root, r"data\.root is not set"),
    (placeholder_root, r"data\.root is not set"),
    (missing_root, r"nowhere is not a folder"),
    (file_root, r"photo\.png is not a folder"),
    (no_class_folder, r"0 class folder\(s\) \(none\).*at least two"),
    (one_class, r"1 class folder\(s\) \(cat\).*at least two"),
    (empty_class, r"class folder\(s\) dog .*hold no images"),
    (val_class_not_in_train, r"val has class folder\(s\) owl that .*train lacks"),
    (one_class_in_train, r"train has 1 class folder\(s\) \(cat\)"),
    (bad_val_fraction(0.0), r"val_fraction=0\.0 must be between 0 and 1"),
    (bad_val_fraction(1.0), r"val_fraction=1\.0 must be between 0 and 1"),
    (bad_val_fraction(-0.2), r"val_fraction=-0\.2 must be between 0 and 1"),
    (bad_val_fraction(1.5), r"val_fraction=1\.5 must be between 0 and 1"),
]


@pytest.mark.parametrize(("layout", "message"), UNUSABLE_FOLDERS,
                         ids=[layout.__name__ for layout, _ in UNUSABLE_FOLDERS])
def test_unusable_image_folder_raises_one_line_plateau_error_naming_it(tmp_path, layout,
                                                                       message):
    kwargs = layout(tmp_path)
    root = kwargs.pop("root")

    with pytest.raises(PlateauError, match=message) as raised:
        folder_module(root, **kwargs).setup()
    assert "\n" not in str(raised.value)


# --- digits ----------------------------------------------------------------------------------

def digits(**kwargs: Any) -> DigitsDataModule:
    module = DigitsDataModule(pretrained_config=pretrained("test_resnet"), image_size=16, **kwargs)
    module.setup()
    return module


def all_counts(module: DigitsDataModule) -> np.ndarray:
    targets = torch.cat([module.train_set.targets, module.val_set.targets])
    return np.bincount(targets.numpy(), minlength=module.num_classes)


def test_balanced_digits_hold_all_1797_images_in_10_classes():
    module = digits()

    assert module.num_classes == 10
    assert len(module.train_set) + len(module.val_set) == 1797
    assert all_counts(module).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_imbalance_10_makes_the_largest_class_about_10_times_the_smallest():
    counts = all_counts(digits(imbalance=10))

    assert 8 <= counts.max() / counts.min() <= 12
    assert (np.diff(counts) <= 0).all()  # the tail runs from digit 0 to digit 9


def test_digits_long_tail_applies_to_validation_too():
    module = digits(imbalance=10, val_fraction=0.2)
    counts = all_counts(module)
    val = np.bincount(module.val_set.targets.numpy(), minlength=10)

    assert 8 <= val.max() / val.min() <= 12
    assert (np.abs(val - 0.2 * counts) <= 1).all()


@pytest.mark.parametrize(("counts", "imbalance", "expected"), [
    ([100, 100, 100], 1.0, [100, 100, 100]),
    ([100, 100, 100], 10.0, [100, 31, 10]),
    ([120, 100, 150], 4.0, [100, 50, 25]),   # capped by the smallest class's images
    ([20, 20], 1000.0, [20, 2]),             # never fewer than two images, so both splits get one
])
def test_long_tail_counts_decay_from_first_to_last_class(counts, imbalance, expected):
    assert long_tail_counts(np.asarray(counts), imbalance).tolist() == expected


@pytest.mark.parametrize("imbalance", [0.5, 0.0, -3.0])
def test_digits_imbalance_below_one_is_rejected(imbalance):
    with pytest.raises(PlateauError, match=rf"data\.imbalance={imbalance} must be >= 1"):
        digits(imbalance=imbalance)


# --- class balance ---------------------------------------------------------------------------

@pytest.mark.parametrize(("counts", "expected"), [
    ([100, 10, 1], [0.37, 3.7, 37.0]),
    ([5, 5], [1.0, 1.0]),
    ([30, 10], [2 / 3, 2.0]),
    ([1, 2, 3, 4], [2.5, 1.25, 10 / 12, 0.625]),
])
def test_balanced_weights_are_n_over_classes_times_class_count(counts, expected):
    weights = ClassWeighting("balanced").loss_weights(torch.tensor(counts))

    torch.testing.assert_close(weights, torch.tensor(expected))


@pytest.mark.parametrize("counts", [[100, 10, 1], [500, 50, 5, 5], [7, 7]])
@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999, 0.9999])
def test_effective_number_weights_follow_cui_et_al_and_sum_to_num_classes(counts, beta):
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    expected = [w * len(counts) / sum(raw) for w in raw]

    weights = ClassWeighting("effective_number", beta=beta).loss_weights(torch.tensor(counts))

    torch.testing.assert_close(weights, torch.tensor(expected))
    assert float(weights.sum()) == pytest.approx(len(counts))


@pytest.mark.parametrize("method", ["none", "sampler"])
def test_unweighted_methods_give_no_loss_weights(method):
    assert ClassWeighting(method).loss_weights(torch.tensor([100, 10, 1])) is None


@pytest.mark.parametrize("method", ["balanced", "effective_number"])
def test_class_without_training_images_gets_weight_zero(method):
    weights = ClassWeighting(method).loss_weights(torch.tensor([50, 0, 5]))

    assert weights[1] == 0
    assert torch.isfinite(weights).all()
    assert (weights[[0, 2]] > 0).all()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "inverse"}, r"'inverse' is not one of"),
    ({"method": "effective_number", "beta": 1.0}, r"beta=1\.0 must be in \[0, 1\)"),
    ({"method": "effective_number", "beta": -0.1}, r"beta=-0\.1 must be in \[0, 1\)"),
])
def test_bad_class_weighting_is_rejected_echoing_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassWeighting(**kwargs)


def test_sample_weights_give_every_class_the_same_total_weight():
    targets = torch.tensor([0] * 6 + [1] * 3 + [2])

    weights = ClassWeighting.sample_weights(targets, num_classes=3)

    totals = torch.zeros(3, dtype=weights.dtype).index_add_(0, targets, weights)
    torch.testing.assert_close(totals, torch.ones(3, dtype=weights.dtype))


def test_balanced_sampling_draws_long_tailed_digits_evenly():
    module = digits(imbalance=10, balanced_sampling=True, batch_size=128)
    assert module.class_counts.max() / module.class_counts.min() > 8

    labels = torch.cat([labels for _, labels in module.train_dataloader()])

    drawn = torch.bincount(labels, minlength=10)
    assert drawn.min() >= drawn.max() / 2


# --- transforms ------------------------------------------------------------------------------

def normalize_of(transform: T.Compose) -> T.Normalize:
    (normalize,) = [t for t in transform.transforms if isinstance(t, T.Normalize)]
    return normalize


@pytest.mark.parametrize(("backbone", "mean", "std"), [
    ("test_resnet", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    ("resnet18", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
])
def test_val_normalization_uses_the_backbones_pretrained_mean_and_std(backbone, mean, std):
    module = DigitsDataModule(pretrained_config=pretrained(backbone), image_size=32)

    normalize = normalize_of(module.val_transform)

    assert list(normalize.mean) == mean
    assert list(normalize.std) == std


@pytest.mark.parametrize("backbone", ["test_resnet", "resnet18"])
@pytest.mark.parametrize("value", [0, 1, 77, 128, 254, 255])
def test_constant_gray_image_maps_to_normalized_value(backbone, value):
    config = resolve_data_config(pretrained(backbone))
    _, val = build_transforms(config, None)

    output = val(Image.new("RGB", (50, 30), (value, value, value)))

    expected = (value / 255 - torch.tensor(config["mean"])) / torch.tensor(config["std"])
    torch.testing.assert_close(output, expected[:, None, None].expand_as(output).float(),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("backbone", ["test_resnet", "resnet18"])
@pytest.mark.parametrize("name", POLICIES)
def test_val_transform_is_deterministic_for_every_policy(backbone, name):
    _, val = build_transforms(resolve_data_config(pretrained(backbone)), policy(name))
    image = Image.fromarray(texture())

    assert torch.equal(val(image), val(image))


@pytest.mark.parametrize("backbone", ["test_resnet", "resnet18"])
@pytest.mark.parametrize("image_size", [None, 48])
@pytest.mark.parametrize("name", POLICIES)
def test_output_side_is_pretrained_input_size_or_image_size(backbone, image_size, name):
    config = resolve_data_config(pretrained(backbone), image_size)
    side = image_size or pretrained(backbone)["input_size"][-1]
    image = Image.fromarray(texture(height=30, width=50))

    for transform in build_transforms(config, policy(name)):
        assert transform(image).shape == (3, side, side)


@pytest.mark.parametrize("name", RANDOM_POLICIES)
def test_training_augmentation_is_random(name):
    torch.manual_seed(0)
    train, _ = build_transforms(resolve_data_config(pretrained("test_resnet"), 32), policy(name))
    image = Image.fromarray(texture())

    assert any(not torch.equal(train(image), train(image)) for _ in range(5))


@pytest.mark.parametrize("augmentation", [None, "none"])
def test_no_augmentation_trains_on_exactly_the_validation_view(augmentation):
    config = resolve_data_config(pretrained("resnet18"))
    train, val = build_transforms(config, augmentation and policy(augmentation))
    image = Image.fromarray(texture())

    assert torch.equal(train(image), val(image))


@pytest.mark.parametrize("image_size", [15, 8, 0])
def test_image_size_below_16_is_rejected(image_size):
    with pytest.raises(PlateauError, match=rf"data\.image_size={image_size} is too small"):
        resolve_data_config(pretrained("test_resnet"), image_size)

"""The doctor's preflight: each check fires on its own planted fault, and is quiet on clean data.

Pure checks are called directly on small generated inputs; the rest run on trials built from
composed configs (``build_parts`` + ``preflight``), some with a faulty part from
:mod:`tests.faulty_parts`. Image folders are written to tmp dirs: tiles of scikit-image's
bundled photos, whose perceptual hashes are stable under re-encoding (noise's are not).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from PIL import Image, ImageEnhance
from PIL.PngImagePlugin import PngInfo
from skimage import data as photos
from torch import nn
from torchvision import transforms as v1
from torchvision.transforms import v2

import doctor.leakage
from conftest import ROOT, TINY
from data_modules.synthetic import stripe_images
from doctor.balance import ClassCounts, check_balance, check_labels
from doctor.findings import Finding
from doctor.input_checks import (
    check_determinism,
    check_input_size,
    check_normalization,
    check_statistics,
)
from doctor.leakage import FingerprintCache, Fingerprints, check_leakage
from doctor.preflight import PreflightReport
from errors import PlateauError
from lightning_modules.classifier import ImageClassifier
from sweeps.job.build import TrialParts, build_parts
from sweeps.job.prepare import preflight, prepare_trial

#: test_resnet's pretraining preprocessing (mean/std 0.5, 160 px), as timm resolves it.
PRETRAINED = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, 160, 160)}
#: Statistics thresholds of the default config.
LIMITS = {"max_abs_mean": 3.0, "min_std": 0.1, "max_std": 5.0}
#: Data, backbone and trainer of a trial on an image folder (no tracking).
FOLDER = ["backbone=test_resnet", "trainer=cpu", "logger=none", "data=image_folder",
          "data.image_size=32", "data.batch_size=8"]
FAULTY = "tests.faulty_parts"


def of(findings: list[Finding], check: str, severity: str | None = None) -> list[Finding]:
    return [f for f in findings
            if f.check == check and (severity is None or f.severity == severity)]


def not_info(report: PreflightReport) -> list[str]:
    return [f.line() for f in report.findings if f.severity != "info"]


def stripes(count: int = 4) -> list[Image.Image]:
    arrays, _ = stripe_images(2, count // 2, 32, seed=0)
    return [Image.fromarray(a) for a in arrays]


def to_normalized(*steps: Callable) -> v2.Compose:
    """PIL image -> tensor through ``steps`` -> test_resnet's Normalize."""
    return v2.Compose([*steps, v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3)])


def run(cfg: DictConfig) -> tuple[TrialParts, PreflightReport]:
    parts = build_parts(cfg)
    return parts, preflight(cfg, parts)


@pytest.fixture
def tiny(make_cfg) -> tuple[DictConfig, TrialParts]:
    """The tiny trial, built, for tests that plant a fault in its parts."""
    cfg = make_cfg("logger=none")
    return cfg, build_parts(cfg)


# Images on disk ----------------------------------------------------------------------------

def photo_tiles(size: int = 96) -> list[np.ndarray]:
    """Distinct 96 px tiles of bundled photos (pHashes >= 18 bits apart), in a fixed order."""
    tiles = []
    for picture in (photos.astronaut(), photos.coffee()):
        height, width = picture.shape[:2]
        tiles += [picture[y:y + size, x:x + size]
                  for y in range(0, height - size, size) for x in range(0, width - size, size)]
    return tiles


def save_png(pixels: np.ndarray, path: Path, *, compress_level: int = 1,
             note: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    if note:
        info.add_text("Comment", note)
    Image.fromarray(pixels).save(path, compress_level=compress_level, pnginfo=info)


def save_exact_copy(pixels: np.ndarray, path: Path) -> None:
    """The same pixels in a file of other bytes: max compression and a text chunk."""
    save_png(pixels, path, compress_level=9, note="exported again")


def save_near_copy(pixels: np.ndarray, path: Path) -> None:
    """Slightly smaller, 10 % brighter, re-encoded as JPEG at quality 80."""
    image = Image.fromarray(pixels).resize((88, 88), Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    ImageEnhance.Brightness(image).enhance(1.1).save(path, quality=80)


def write_train(root: Path, tiles: list[np.ndarray]) -> None:
    """Six training images per class: tiles 0-5 in ``a``, 6-11 in ``b``."""
    for i in range(12):
        save_png(tiles[i], root / "train" / "ab"[i // 6] / f"{i}.png")


@pytest.fixture(scope="module")
def leaky_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/{a,b}: 6 images each; val/{a,b}: 4 each, of which one exact and one near copy of
    a training image (val/a: of train/a/0.png and 1.png; val/b: of train/b/6.png and 7.png)."""
    root = tmp_path_factory.mktemp("leaky")
    tiles = photo_tiles()
    write_train(root, tiles)
    for name, first, distinct in (("a", 0, 12), ("b", 6, 14)):
        save_exact_copy(tiles[first], root / "val" / name / f"copy_of_{first}.png")
        save_near_copy(tiles[first + 1], root / "val" / name / f"near_{first + 1}.jpg")
        save_png(tiles[distinct], root / "val" / name / f"{distinct}.png")
        save_png(tiles[distinct + 1], root / "val" / name / f"{distinct + 1}.png")
    return root


# normalization ----------------------------------------------------------------------------

def test_normalization_override_warns_naming_used_and_pretrained_values(make_cfg) -> None:
    _, report = run(make_cfg("logger=none", "data.mean=[0,0,0]", "data.std=[1,1,1]"))
    warnings = of(report.findings, "normalization", "warning")
    assert [w.cause.split()[1] for w in warnings] == ["validation", "training"]
    for warning in warnings:
        assert "mean (0.000, 0.000, 0.000) std (1.000, 1.000, 1.000)" in warning.cause
        assert "pretrained with mean (0.500, 0.500, 0.500) std (0.500, 0.500, 0.500)" \
            in warning.cause


NORMALIZATION_CASES = {
    "v2 pretrained values": (v2.Normalize([0.5] * 3, [0.5] * 3), None),
    "v1 pretrained values": (v1.Normalize([0.5] * 3, [0.5] * 3), None),
    "imagenet values": (v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                        "normalizes with mean (0.485, 0.456, 0.406)"),
    "no normalize": (v2.Identity(), "has no Normalize"),
}


@pytest.mark.parametrize(("normalize", "expected"), NORMALIZATION_CASES.values(),
                         ids=NORMALIZATION_CASES.keys())
def test_normalization_warns_on_a_transform_without_the_pretrained_normalize(
        normalize: nn.Module, expected: str | None) -> None:
    transform = v2.Compose([v2.Resize(32), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                            normalize])
    findings = check_normalization(PRETRAINED, {"validation": transform}, "test_resnet")
    if expected is None:
        assert findings == []
    else:
        (finding,) = findings
        assert (finding.check, finding.severity) == ("normalization", "warning")
        assert expected in finding.cause
        assert "mean (0.500, 0.500, 0.500)" in finding.cause


# input_size -------------------------------------------------------------------------------

@pytest.mark.parametrize(("side", "expected"), [(160, []), (32, ["info"])])
def test_input_size_other_than_pretrained_is_info_not_warning(side: int,
                                                              expected: list[str]) -> None:
    findings = check_input_size(PRETRAINED, torch.zeros(3, side, side), "test_resnet")
    assert [f.severity for f in findings] == expected
    if findings:
        assert findings[0].check == "input_size"
        assert "32x32 px; test_resnet was pretrained at 160x160" in findings[0].cause


# input_statistics -------------------------------------------------------------------------

STATISTICS_CASES = {
    "scaled once": ([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)], []),
    "not scaled (0..255)": ([v2.ToImage(), v2.ToDtype(torch.float32, scale=False)], ["warning"]),
    "scaled twice (0..0.004)": ([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                 v2.Lambda(lambda x: x / 255)], ["warning"]),
}


@pytest.mark.parametrize(("steps", "expected"), STATISTICS_CASES.values(),
                         ids=STATISTICS_CASES.keys())
def test_input_statistics_warn_on_missing_or_double_scaling(steps: list[Callable],
                                                            expected: list[str]) -> None:
    transform = to_normalized(*steps)
    batch = torch.stack([transform(image) for image in stripes()])
    findings = check_statistics(batch, **LIMITS)
    assert [(f.check, f.severity) for f in findings] == [("input_statistics", s)
                                                         for s in expected]


def test_input_statistics_error_on_nan_inputs() -> None:
    batch = torch.zeros(2, 3, 4, 4)
    batch[0, 1, 2, 2] = float("nan")
    (finding,) = check_statistics(batch, **LIMITS)
    assert (finding.check, finding.severity) == ("input_statistics", "error")


def test_input_statistics_warn_on_a_tiny_configured_std(make_cfg) -> None:
    _, report = run(make_cfg("logger=none", "data.mean=[0.5,0.5,0.5]",
                             "data.std=[0.001,0.001,0.001]"))
    assert of(report.findings, "input_statistics", "warning")


# val_determinism --------------------------------------------------------------------------

DETERMINISM_CASES = {
    "resize and center crop": (v2.CenterCrop(24), None),
    "random resized crop": (v2.RandomResizedCrop(24, antialias=True), "(RandomResizedCrop)"),
    "color jitter (random without the name)": (v2.ColorJitter(brightness=0.5), "is random:"),
}


@pytest.mark.parametrize(("step", "expected"), DETERMINISM_CASES.values(),
                         ids=DETERMINISM_CASES.keys())
def test_random_validation_transform_is_an_error_naming_the_op(step: nn.Module,
                                                               expected: str | None) -> None:
    transform = to_normalized(step, v2.ToImage(), v2.ToDtype(torch.float32, scale=True))
    findings = check_determinism(transform, stripes())
    if expected is None:
        assert findings == []
    else:
        (finding,) = findings
        assert (finding.check, finding.severity) == ("val_determinism", "error")
        assert expected in finding.cause


def test_prepare_trial_refuses_a_datamodule_validating_with_augmentation(make_cfg) -> None:
    cfg = make_cfg("logger=none", f"data._target_={FAULTY}.RandomValidationData", "augment=light")
    with pytest.raises(PlateauError,
                       match=r"preflight: val_determinism: .*RandomResizedCrop, "
                             r"RandomHorizontalFlip"):
        prepare_trial(cfg)


def test_preflight_error_leaves_no_mlflow_run(make_cfg) -> None:
    cfg = make_cfg(f"data._target_={FAULTY}.RandomValidationData", "augment=light")
    with pytest.raises(PlateauError, match="val_determinism"):
        prepare_trial(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments) == []


@pytest.mark.parametrize(("overrides", "tag"), [
    ([], "clean"),
    (["data.mean=[0,0,0]", "data.std=[1,1,1]"], "normalization"),
], ids=["clean", "warned"])
def test_preflight_result_is_tagged_on_the_mlflow_run(make_cfg, overrides: list[str],
                                                      tag: str) -> None:
    cfg = make_cfg(*overrides)
    prepared = prepare_trial(cfg)
    assert prepared.logger is not None
    run_tags = MlflowClient(cfg.logger.tracking_uri).get_run(prepared.logger.run_id).data.tags
    assert run_tags["plateau.preflight"] == tag


# labels -----------------------------------------------------------------------------------

LABEL_CASES = {
    "two balanced classes": ([0] * 10 + [1] * 10, None, ""),
    "one class": ([0] * 20, "error", "hold 1 class (a): a classifier needs at least two"),
    "targets out of range": ([0, 1, 2] * 7, "error", "targets range outside 0..1"),
    "mostly one class": ([0] * 95 + [1] * 5, "warning", "class a is 95% of the training"),
}


@pytest.mark.parametrize(("train", "severity", "cause"), LABEL_CASES.values(),
                         ids=LABEL_CASES.keys())
def test_labels_error_on_one_class_or_out_of_range_and_warn_on_a_dominant_class(
        train: list[int], severity: str | None, cause: str) -> None:
    counts = ClassCounts.from_targets(["a", "b"], np.asarray(train), np.asarray([0, 1]))
    findings = check_labels(counts, majority_share=0.9)
    assert [(f.check, f.severity) for f in findings] == ([("labels", severity)]
                                                         if severity else [])
    assert all(cause in f.cause for f in findings)


def test_single_class_data_stops_the_trial_with_a_one_line_error(make_cfg) -> None:
    with pytest.raises(PlateauError, match="at least two"):
        prepare_trial(make_cfg("logger=none", "data.num_classes=1"))


# class_balance ----------------------------------------------------------------------------

BALANCE_CASES = {
    "balanced": ([10, 10, 10], [2, 2, 2], ""),
    "class without validation images": ([10, 10, 10], [2, 2, 0],
                                        "1 class(es) have no validation images (c)"),
    "rare class": ([10, 10, 4], [2, 2, 1], "1 class(es) have fewer than 5 training images (c)"),
}


@pytest.mark.parametrize(("train", "val", "cause"), BALANCE_CASES.values(),
                         ids=BALANCE_CASES.keys())
def test_class_balance_warns_on_unvalidated_or_rare_classes(train: list[int], val: list[int],
                                                            cause: str) -> None:
    counts = ClassCounts(["a", "b", "c"], train, val)
    findings = check_balance(counts, weighted=False, objective="val/f1_macro", ratio_limit=3.0,
                             min_images=5)
    assert [(f.check, f.severity) for f in findings] == ([("class_balance", "warning")]
                                                         if cause else [])
    assert all(cause in f.cause for f in findings)


@pytest.mark.parametrize(("class_weight", "severities"), [
    ("none", ["warning"]), ("balanced", ["info"]),
])
def test_class_balance_warns_on_imbalance_only_when_unweighted_with_plain_accuracy(
        make_cfg, class_weight: str, severities: list[str]) -> None:
    cfg = make_cfg("backbone=test_resnet", "trainer=cpu", "logger=none", "data=digits",
                   "data.image_size=32", "data.imbalance=20", "objective.metric=val/acc",
                   f"class_weight={class_weight}", tiny=False)
    _, report = run(cfg)
    findings = of(report.findings, "class_balance")
    assert [f.severity for f in findings] == severities
    assert "imbalanced 23.2:1" in findings[0].cause
    assert not_info(report) == [f.line() for f in findings if f.severity != "info"]


# leakage and near_duplicates --------------------------------------------------------------

def test_pixel_identical_copies_across_the_split_warn_leakage_with_count_and_paths(
        make_cfg, leaky_folder: Path) -> None:
    copy, original = leaky_folder / "val/a/copy_of_0.png", leaky_folder / "train/a/0.png"
    assert copy.read_bytes() != original.read_bytes()  # the same pixels, other bytes
    _, report = run(make_cfg(*FOLDER, f"data.root={leaky_folder}", tiny=False))
    (finding,) = of(report.findings, "leakage")
    assert finding.severity == "warning"
    assert finding.cause.startswith("2 of 8 validation images are pixel-identical")
    assert f"{copy} ~ {original}" in finding.cause
    assert str(leaky_folder / "val/b/copy_of_6.png") in finding.cause


def test_reencoded_resized_copies_warn_near_duplicates_not_leakage(make_cfg,
                                                                   leaky_folder: Path) -> None:
    _, report = run(make_cfg(*FOLDER, f"data.root={leaky_folder}", tiny=False))
    (finding,) = of(report.findings, "near_duplicates")
    assert finding.severity == "warning"
    assert finding.cause.startswith("2 of 8 validation images are near copies")
    assert f"{leaky_folder / 'val/a/near_1.jpg'} ~ {leaky_folder / 'train/a/1.png'}" \
        in finding.cause
    assert "copy_of" not in finding.cause  # exact copies are counted once, as leakage


def test_near_duplicate_check_turns_off_with_distance_minus_one(make_cfg,
                                                                leaky_folder: Path) -> None:
    _, report = run(make_cfg(*FOLDER, f"data.root={leaky_folder}",
                             "doctor.preflight.near_duplicate_distance=-1", tiny=False))
    assert [f.check for f in report.findings if f.severity == "warning"] == ["leakage"]


def test_distinct_images_give_no_leakage_finding() -> None:
    tiles = [Image.fromarray(t) for t in photo_tiles()[:20]]
    prints = FingerprintCache(None).fingerprints([str(i) for i in range(20)],
                                                 tiles.__getitem__)
    train = Fingerprints(prints.exact[:12], prints.perceptual[:12])
    val = Fingerprints(prints.exact[12:], prints.perceptual[12:])
    names = [f"#{i}" for i in range(20)]
    assert check_leakage(train, val, names[:12], names[12:], max_distance=2) == []


def test_fingerprints_are_cached_and_a_changed_file_is_hashed_again(
        make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = tmp_path / "images", tmp_path / "cache"
    tiles = photo_tiles()
    write_train(root, tiles)
    save_exact_copy(tiles[0], root / "val/a/copy.png")
    save_png(tiles[12], root / "val/a/12.png")
    save_exact_copy(tiles[6], root / "val/b/copy.png")
    save_png(tiles[14], root / "val/b/14.png")
    monkeypatch.setenv("PLATEAU_CACHE_DIR", str(cache))
    hashed: list[int] = []
    exact_hash = doctor.leakage.exact_hash
    monkeypatch.setattr(doctor.leakage, "exact_hash",
                        lambda image: hashed.append(1) or exact_hash(image))
    cfg = make_cfg(*FOLDER, f"data.root={root}", tiny=False)
    parts = build_parts(cfg)

    def leak() -> tuple[int, str]:
        hashed.clear()
        (finding,) = of(preflight(cfg, parts).findings, "leakage")
        return len(hashed), finding.cause.split(" validation")[0]

    assert leak() == (16, "2 of 4")
    assert len(list((cache / "fingerprints").glob("*.npz"))) == 1
    assert leak() == (0, "2 of 4")
    changed = root / "val/b/copy.png"
    save_png(tiles[15], changed)
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))
    count, leaked = leak()
    assert count == 1  # only the changed file
    assert leaked == "1 of 4"


@pytest.mark.parametrize("damage", [
    b"not a cache",
    b"",
    None,
], ids=["not a zip", "empty", "truncated"])
def test_damaged_fingerprint_cache_is_rebuilt(tmp_path: Path, damage: bytes | None) -> None:
    images = [Image.fromarray(t) for t in photo_tiles()[:3]]
    cache = FingerprintCache(tmp_path)
    first = cache.fingerprints(["x", "y", "z"], images.__getitem__)
    (path,) = tmp_path.glob("*.npz")
    content = path.read_bytes()
    path.write_bytes(content[:len(content) // 2] if damage is None else damage)
    again = cache.fingerprints(["x", "y", "z"], images.__getitem__)
    assert again.exact == first.exact
    assert (again.perceptual == first.perceptual).all()


# trainable, head, batchnorm, activation, loss --------------------------------------------

@pytest.mark.parametrize(("freezing", "cause"), [
    ("FreezeEverything", "no parameter trains"),
    ("FreezeHead", "the classification head is frozen"),
])
def test_freezing_the_head_is_a_trainable_error(make_cfg, freezing: str, cause: str) -> None:
    _, report = run(make_cfg("logger=none", "freeze=none",
                             f"freeze._target_={FAULTY}.{freezing}"))
    (error,) = report.of("error")
    assert error.check == "trainable"
    assert error.cause.startswith(cause)


def test_head_sized_for_other_classes_is_a_head_error(tiny) -> None:
    cfg, parts = tiny
    parts.model = ImageClassifier(parts.model.backbone, num_classes=5,
                                  optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    errors = preflight(cfg, parts).of("error")
    assert errors
    assert {f.check for f in errors} == {"head"}
    assert "the head outputs 5 classes but the data has 3" in errors[0].cause


@pytest.mark.parametrize(("train_bn", "expected"), [("true", ["warning"]), ("false", [])])
def test_batchnorm_in_frozen_stages_left_training_warns(make_cfg, train_bn: str,
                                                        expected: list[str]) -> None:
    _, report = run(make_cfg("logger=none", "freeze=head_only", f"freeze.train_bn={train_bn}"))
    assert [f.severity for f in of(report.findings, "batchnorm")] == expected


def test_softmax_at_the_end_of_the_head_warns_activation(tiny) -> None:
    cfg, parts = tiny
    parts.model.head = nn.Sequential(parts.model.head, nn.Softmax(dim=1))
    report = preflight(cfg, parts)
    assert [(f.check, f.severity) for f in report.findings if f.severity != "info"] == [
        ("activation", "warning")]


def test_non_cross_entropy_loss_warns(tiny) -> None:
    cfg, parts = tiny
    parts.model.criterion = nn.BCEWithLogitsLoss()
    (finding,) = [f for f in preflight(cfg, parts).findings if f.severity != "info"]
    assert (finding.check, finding.severity) == ("loss", "warning")
    assert "BCEWithLogitsLoss" in finding.cause


# clean configs and the command line --------------------------------------------------------

@pytest.mark.parametrize(("tiny_overrides", "warned"), [(False, ["domain_shift"]), (True, [])],
                         ids=["embedded default", "tiny"])
def test_clean_config_gives_no_error_or_warning(make_cfg, tiny_overrides: bool,
                                               warned: list[str]) -> None:
    # digits are far from the photos the default backbone was pretrained on: the one
    # warning of the embedded default (the tiny backbone has no pretrained statistics)
    _, report = run(make_cfg("logger=none", tiny=tiny_overrides))
    assert [f.check for f in report.findings if f.severity != "info"] == warned


def doctor_preflight(*overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-m", "doctor", "preflight", *overrides], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_doctor_preflight_command_prints_the_class_table_and_exits_0() -> None:
    result = doctor_preflight(*TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "class      train    val" in output
    assert "stripes_2     13      3" in output
    assert "preflight: 0 errors, 0 warnings" in output


def test_doctor_preflight_command_exits_2_on_an_error_without_traceback() -> None:
    result = doctor_preflight(*TINY, "freeze=none",
                              f"freeze._target_={FAULTY}.FreezeEverything")
    assert result.returncode == 2, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "preflight error: trainable: no parameter trains" in output
    assert "Traceback" not in output


def test_a_sweeps_trials_print_a_finding_once_and_a_single_run_always(
        capsys: pytest.CaptureFixture[str]) -> None:
    shift = Finding("domain_shift", "warning", "activations 45.17 from pretraining (once)",
                    "freeze.train_bn=true")
    report = PreflightReport([shift], ClassCounts(["a", "b"], [5, 5], [2, 2]), 0.1)
    report.show(once=True)
    report.show(once=True)
    assert capsys.readouterr().err.count("activations 45.17 from pretraining (once)") == 1
    report.show()  # a single run, or `python -m doctor preflight`: every finding
    assert "activations 45.17 from pretraining (once)" in capsys.readouterr().err

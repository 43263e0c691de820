"""The frozen-feature cache: a linear probe on cached features trains exactly like one on
images, the cache is keyed by everything the features depend on, and trials that can change
the features (random augmentation, trainable or drifting backbone) never use it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules.datamodules import FeatureDataset, ImageDataset
from data_modules.feature_cache import FeatureCache, attach_features
from sweeps.job.build import build_parts
from sweeps.job.prepare import prepare_trial

PROBE = ["logger=none", "freeze=head_only", "optimizer.lr=0.05", "trainer.max_epochs=3"]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PLATEAU_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fit(cfg) -> tuple[dict[str, float], type]:
    prepared = prepare_trial(cfg)
    prepared.trainer.fit(prepared.model, datamodule=prepared.datamodule)
    metrics = {k: float(v) for k, v in prepared.trainer.callback_metrics.items()}
    return metrics, type(prepared.datamodule.train_set)


def test_cached_linear_probe_gives_the_uncached_trials_metrics(make_cfg) -> None:
    uncached, kind = fit(make_cfg(*PROBE, "feature_cache=false"))
    assert kind is ImageDataset
    computed, kind = fit(make_cfg(*PROBE))
    assert kind is FeatureDataset
    reused, kind = fit(make_cfg(*PROBE))
    assert kind is FeatureDataset
    assert uncached["val/acc"] > 0.5  # the probe learned something worth comparing
    for metrics in (computed, reused):
        assert metrics.keys() == uncached.keys()
        for key, value in uncached.items():
            assert metrics[key] == pytest.approx(value, abs=1e-5), key


def test_second_trial_reads_the_features_from_disk(make_cfg, cache_dir: Path) -> None:
    parts = build_parts(make_cfg(*PROBE))
    cache = FeatureCache(cache_dir / "features")
    assert not attach_features(parts.datamodule, parts.model.backbone, cache, CPU)
    stored = sorted(p.parent.name for p in (cache_dir / "features").glob("*/features.npy"))
    assert len(stored) == 2  # train and val
    again = build_parts(make_cfg(*PROBE))
    assert attach_features(again.datamodule, again.model.backbone, cache, CPU)
    features = again.datamodule.train_set.features
    assert isinstance(features, np.memmap)


def attach(cfg, cache: FeatureCache, tweak=None) -> bool:
    parts = build_parts(cfg)
    if tweak is not None:
        tweak(parts)
    return attach_features(parts.datamodule, parts.model.backbone, cache, CPU)


def perturb_one_weight(parts) -> None:
    with torch.no_grad():
        next(parts.model.backbone.parameters()).view(-1)[0] += 1e-3


@pytest.mark.parametrize(("change", "tweak"), [
    (["backbone.name=resnet10t", "backbone.pretrained=false"], None),
    ([], perturb_one_weight),
    (["data.images_per_class=17"], None),
    (["data.seed=7"], None),
    (["data.image_size=48"], None),
    (["data.mean=[0.4,0.4,0.4]"], None),
], ids=["backbone", "weights", "images", "split", "input-size", "normalization"])
def test_cache_is_recomputed_when_what_the_features_depend_on_changes(
        make_cfg, cache_dir: Path, change: list[str], tweak) -> None:
    cache = FeatureCache(cache_dir / "features")
    assert not attach(make_cfg(*PROBE), cache)
    assert attach(make_cfg(*PROBE), cache)  # unchanged: a hit
    assert not attach(make_cfg(*PROBE, *change), cache, tweak)


@pytest.mark.parametrize("change", [
    ["augment=light"],
    ["augment=randaugment"],
    ["freeze=depth", "freeze.depth=1"],
    ["freeze=gradual", "freeze.milestones=[1]"],
    ["freeze=none"],
    ["freeze.train_bn=true"],
], ids=["random-crop", "randaugment", "depth", "gradual", "none", "train-bn"])
def test_trials_whose_features_can_change_train_on_images(make_cfg, change: list[str]) -> None:
    prepared = prepare_trial(make_cfg(*PROBE, *change))
    assert isinstance(prepared.datamodule.train_set, ImageDataset)


def test_damaged_cache_entry_is_rebuilt(make_cfg, cache_dir: Path) -> None:
    cache = FeatureCache(cache_dir / "features")
    assert not attach(make_cfg(*PROBE), cache)
    for stored in (cache_dir / "features").glob("*/features.npy"):
        stored.write_bytes(b"not an array")
    assert not attach(make_cfg(*PROBE), cache)  # recomputed
    assert attach(make_cfg(*PROBE), cache)


def test_frozen_backbone_runs_in_eval_mode_while_the_head_trains(make_cfg) -> None:
    prepared = prepare_trial(make_cfg(*PROBE, "feature_cache=false",
                                      "regularization.drop_path=0.2"))
    modes: list[tuple[bool, bool]] = []

    class Spy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            modes.append((prepared.model.backbone.training, prepared.model.head.training))
            return x

    prepared.model.head.insert(0, Spy())
    prepared.trainer.fit(prepared.model, datamodule=prepared.datamodule)
    training_steps = [m for m in modes if m[1]]
    assert training_steps
    assert not any(backbone for backbone, _ in training_steps)

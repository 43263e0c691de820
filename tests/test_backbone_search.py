"""The backbone as a searched knob: the three offline EfficientNet-Lites in the default space,
each trial with its own pretrained weights and preprocessing, and ``backbone_top_k``, which
keeps the k best by LogME before the study is made, once per study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import timm
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution

from conftest import ROOT, TINY, Exited, compose_config
from lightning_modules.offline_weights import OFFLINE_WEIGHTS
from lightning_modules.stages import backbone_stages
from sweeps.job.ranking import PROBE, rank_backbones
from sweeps.sweeper.asking import suggest_overrides
from sweeps.sweeper.first_trials import base_params, check_portfolio, enqueue
from sweeps.sweeper.search_space import parse_search_space

LITES = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
SWEPT = f"backbone=choice({','.join(LITES)})"
#: Tiny data, one epoch, a linear probe (its features come from the feature cache), and the
#: default space emptied so that the backbone is the only searched param.
TINY_LITES = ["data=synthetic", "data.image_size=32", "trainer=cpu", "trainer.max_epochs=1",
              "freeze=head_only", "augment=none", "hydra.sweeper.params={}"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def default_space(overrides: list[str] = ()) -> tuple[object, object]:
    cfg = compose_config(list(overrides), keep_hydra=True)
    space = cfg.hydra.sweeper.default_space
    return cfg, parse_search_space(OmegaConf.to_container(space.params), [],
                                   OmegaConf.to_container(space.conditional_params))


def test_the_default_space_searches_the_offline_lites_within_their_stage_counts() -> None:
    _, space = default_space()
    backbone = space.distributions["backbone"]
    assert isinstance(backbone, CategoricalDistribution)
    assert list(backbone.choices) == LITES
    assert set(LITES) <= set(OFFLINE_WEIGHTS)  # every choice loads its weights offline
    _, _, depth = space.conditional["freeze.depth"]
    for name in LITES:
        stages = len(backbone_stages(timm.create_model(name, pretrained=False, num_classes=0)))
        assert depth.high <= stages, f"freeze.depth={depth.high} exceeds {name}'s {stages}"


@pytest.mark.parametrize("base", ["tf_efficientnet_lite0", "tf_efficientnet_lite2"])
def test_the_base_trial_and_the_portfolio_keep_the_base_configs_backbone(base: str) -> None:
    cfg, space = default_space([f"backbone={base}"])
    assert base_params(cfg, space)["backbone"] == base
    portfolio = check_portfolio({}, space, cfg, OmegaConf.to_container(
        cfg.hydra.sweeper.default_space.portfolio))
    assert len(portfolio) == 4
    assert {entry["backbone"] for entry in portfolio.values()} == {base}


def test_the_base_trial_records_no_sampled_value_for_a_base_value_outside_the_space() -> None:
    """Its params are what it ran (MLflow logs them too): a backbone that backbone_top_k
    dropped, or a learning rate outside the space, is not replaced by a draw."""
    cfg, space = default_space(["optimizer.lr=0.5"])
    study = optuna.create_study(direction="maximize")
    enqueue(study, cfg, space, True, {}, 1)
    trial = study.ask()
    assert suggest_overrides(trial, space, cfg) == []  # the config as given
    assert "optimizer.lr" not in trial.params  # it ran 0.5, outside the space
    assert trial.params["backbone"] == "tf_efficientnet_lite0"


def sweep(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "-m", *args], cwd=cwd,
                          env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def load(cwd: Path) -> optuna.Study:
    return optuna.load_study(study_name="plateau", storage=f"sqlite:///{cwd / 'plateau.db'}")


def trial_runs(cwd: Path) -> dict[str, object]:
    """The trials' MLflow runs by run id."""
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("plateau")
    runs = client.search_runs([experiment.experiment_id])
    return {run.info.run_id: run for run in runs if "plateau.trial_number" in run.data.tags}


def study_run_params(cwd: Path) -> dict[str, str]:
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("plateau")
    (run,) = client.search_runs([experiment.experiment_id],
                                filter_string="attributes.run_name = 'study-plateau'")
    return dict(run.data.params)


@pytest.mark.slow
def test_a_backbone_sweep_runs_offline_each_trial_with_its_weights_and_preprocessing(
        tmp_path: Path) -> None:
    sweep(SWEPT, *TINY_LITES, "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=3",
          "trainer.enable_checkpointing=true", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert sorted(t.params["backbone"] for t in load(tmp_path).trials) == LITES
    runs = trial_runs(tmp_path)
    checkpoints = sorted(tmp_path.rglob("*.ckpt"))
    assert len(checkpoints) == 3
    for checkpoint in checkpoints:
        run = runs[checkpoint.parent.parent.name]  # <job>/<experiment>/<run id>/checkpoints
        name = run.data.params["backbone"]
        data = timm.data.resolve_model_data_config(timm.create_model(name, pretrained=False))
        assert run.data.params["input.size"] == "32"  # the data's size, not the backbone's
        assert json.loads(run.data.params["input.mean"]) == list(data["mean"])
        assert json.loads(run.data.params["input.std"]) == list(data["std"])
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        pretrained = OFFLINE_WEIGHTS[name]()
        for key in ("conv_stem.weight", "blocks.0.0.conv_dw.weight", "conv_head.weight"):
            assert torch.equal(state[f"backbone.{key}"], pretrained[key]), (name, key)


@pytest.mark.slow
def test_backbone_top_k_samples_only_the_best_by_logme_and_a_resume_reads_its_ranking(
        tmp_path: Path) -> None:
    args = [SWEPT, *TINY_LITES, "hydra.sweeper.backbone_top_k=2",
            "hydra/sweeper/sampler=random", f"cache_dir={tmp_path / 'cache'}"]
    first = sweep(*args, "hydra.sweeper.n_trials=4", cwd=tmp_path)

    independent = [c.backbone for c in rank_backbones(LITES, lambda name: compose_config(
        [*TINY_LITES[:-1], f"backbone={name}", *PROBE, f"cache_dir={tmp_path / 'other'}"]))]
    kept = independent[:2]
    assert "ranked 3 backbones in" in first
    rows = [line.split("│") for line in first.splitlines() if "tf_efficientnet" in line]
    ranked = [row[2].strip() for row in rows if len(row) > 3 and row[1].strip().isdigit()]
    assert ranked == independent  # the table, best first
    assert f"the search space keeps {', '.join(kept)} (of 3 backbones)" in first
    study = load(tmp_path)
    stored = study.user_attrs["backbone_ranking"]
    assert [c["backbone"] for c in stored["candidates"]] == independent
    params = study_run_params(tmp_path)
    assert params["backbone_top_k"] == "2"
    assert params["space.backbone"] == f"choice({', '.join(kept)})"

    again = sweep(*args, "hydra.sweeper.n_trials=6", cwd=tmp_path)
    assert "ranking read from study 'plateau', not ranked again" in again
    assert "ranked 3 backbones in" not in again
    trials = load(tmp_path).trials
    assert len(trials) == 6
    for trial in trials:
        if trial.user_attrs.get("role") == "base":  # the config as given: Lite0, kept or not
            assert trial.params.get("backbone", "tf_efficientnet_lite0") == LITES[0]
            continue
        assert trial.params["backbone"] in kept
        assert trial.distributions["backbone"] == CategoricalDistribution(kept)


@pytest.mark.parametrize(("value", "expected"), [
    ("0", "hydra.sweeper.backbone_top_k=0 would keep no backbone; set it to 1 or more"),
    ("two", "hydra.sweeper.backbone_top_k=two: Value 'two' of type 'str' could not be "
            "converted to Integer"),
])
def test_a_bad_backbone_top_k_is_one_line_and_writes_nothing(
        value: str, expected: str, tmp_path: Path, sweep_here: Callable[..., Exited]) -> None:
    result = sweep_here("-m", *TINY, f"hydra.sweeper.backbone_top_k={value}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("plateau: error")]
    assert expected in line
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("space", "said"), [
    ([], "backbone_top_k=1: backbone is not a choice of the search space, nothing to rank"),
    (["backbone=choice(test_resnet)"], "backbone_top_k=1 keeps all 1 backbones of the search "
                                       "space: nothing to rank"),
])
def test_backbone_top_k_without_backbones_to_drop_says_so_once_and_ranks_nothing(
        space: list[str], said: str, tmp_path: Path,
        sweep_here: Callable[..., Exited]) -> None:
    result = sweep_here("-m", *TINY, *space, "hydra.sweeper.backbone_top_k=1",
                        "hydra.sweeper.n_trials=1", "logger=none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.output.count(said) == 1
    assert "LogME" not in result.output
    assert "backbone_ranking" not in load(tmp_path).user_attrs

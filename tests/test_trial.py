"""Trials on tiny data: every knob runs, and the MLflow run holds what a user looks for."""

from __future__ import annotations

import math

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.job.run import run_trial

KNOB_OPTIONS = [
    *[f"freeze={o}" for o in ("none", "head_only", "depth", "gradual")],
    *[f"augment={o}" for o in ("none", "light", "heavy", "randaugment", "trivialaugment")],
    *[f"class_weight={o}" for o in ("none", "balanced", "effective_number", "sampler")],
    *[f"lr_schedule={o}" for o in ("constant", "cosine", "step", "plateau", "onecycle")],
    "optimizer=sgd",
]


@pytest.mark.parametrize("option", KNOB_OPTIONS)
def test_short_trial_runs_for_each_knob_option(make_cfg, option: str) -> None:
    epochs = 3 if option.startswith("freeze=gradual") else 1
    cfg = make_cfg(option, "logger=none", f"trainer.max_epochs={epochs}")
    value = run_trial(cfg)
    assert 0.0 <= value <= 1.0


def test_trial_learns_the_synthetic_classes(make_cfg) -> None:
    cfg = make_cfg("logger=none", "freeze=none", "trainer.max_epochs=6",
                   "data.images_per_class=24", "optimizer.lr=1e-2")
    assert run_trial(cfg) > 0.8


def test_objective_direction_minimize_tracks_the_lowest_loss(make_cfg) -> None:
    cfg = make_cfg("objective.metric=val/loss", "objective.direction=minimize",
                   "trainer.max_epochs=2")
    value = run_trial(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("plateau").experiment_id])[0]
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "val/loss")]
    assert value == pytest.approx(min(losses))


def test_mlflow_run_holds_params_epoch_metrics_config_and_tags(make_cfg) -> None:
    cfg = make_cfg("trainer.max_epochs=2")
    value = run_trial(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    experiment = client.get_experiment_by_name("plateau")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["backbone"] == "test_resnet"  # each knob's choice by name
    assert params["freeze"] == "depth"
    assert params["optimizer.lr"] == str(cfg.optimizer.lr)
    assert params["data.image_size"] == "32"
    assert run.data.metrics["model/trainable_params"] <= int(params["model.total_params"])
    assert not [k for k in params if "_target_" in k]  # the whole config is the artifact
    for name in ("train/loss", "val/loss", "val/acc", "val/balanced_acc", "val/f1_macro"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [0, 1], name  # the epoch is the step
    assert run.data.metrics["objective"] == pytest.approx(value)
    assert run.data.tags["plateau.freeze"] == "depth"
    assert run.data.tags["plateau.backbone"] == "test_resnet"
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                               artifact_path="config/config.yaml",
                                               tracking_uri=cfg.logger.tracking_uri)
    with open(path) as f:
        logged = yaml.safe_load(f)
    assert logged["backbone"]["name"] == "test_resnet"
    assert logged["regularization"]["weight_decay"] == cfg.regularization.weight_decay


def test_seeded_runs_get_distinct_readable_names(make_cfg) -> None:
    cfg = make_cfg("trainer.max_epochs=1")
    run_trial(cfg)
    run_trial(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("plateau").experiment_id])
    names = [r.info.run_name for r in runs]
    assert len(set(names)) == 2
    assert all(name.startswith("test_resnet-depth-") for name in names)


def test_same_seed_reproduces_the_objective(make_cfg) -> None:
    cfg = make_cfg("logger=none", "trainer.max_epochs=2", "trainer.deterministic=true")
    first, second = run_trial(cfg), run_trial(cfg)
    assert math.isclose(first, second, abs_tol=1e-6)


def test_trial_that_predicts_one_class_is_diagnosed_majority_collapse(make_cfg) -> None:
    # timm's tiny ResNet from random weights, two stages trained for three epochs: it
    # answers one class for every stripe image (val F1 1/6 on 3 classes).
    cfg = make_cfg("trainer.max_epochs=3")
    run_trial(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("plateau").experiment_id])
    assert run.data.tags["plateau.diagnosis"] == "majority_collapse"
    assert "class weighting" in run.data.tags["plateau.diagnosis_reason"]


def test_trial_that_learns_is_diagnosed_healthy(make_cfg, capsys) -> None:
    cfg = make_cfg("logger=none", "freeze=none", "trainer.max_epochs=6",
                   "data.images_per_class=24", "optimizer.lr=1e-2")
    run_trial(cfg)
    assert "diagnosis: healthy" in capsys.readouterr().err

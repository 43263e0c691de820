"""Every sampler and pruner of the sweeper config composes, instantiates and runs a study."""

from __future__ import annotations

import functools

import optuna
import pytest
from hydra.utils import instantiate
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from conftest import compose_config
from sweeps.pruning import StagnationPruner
from sweeps.sweeper.search_space import SearchSpace, grid_choices

SAMPLERS = ["tpe", "random", "cmaes", "gp", "qmc", "grid", "nsgaii"]
PRUNERS = {
    "stagnation": StagnationPruner,
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}


def sweeper_config(*overrides: str):
    return compose_config(list(overrides), keep_hydra=True).hydra.sweeper


def test_default_sweeper_is_plateaus_seeded_tpe_with_stagnation_pruning() -> None:
    sweeper = sweeper_config()
    assert sweeper._target_.endswith("plateau_sweeper.PlateauSweeper")
    assert isinstance(instantiate(sweeper.sampler), optuna.samplers.TPESampler)
    assert sweeper.sampler.seed is not None
    assert isinstance(instantiate(sweeper.pruner), StagnationPruner)
    assert sweeper.storage is None  # sqlite plateau.db in the launch directory
    assert sweeper.direction == "maximize"  # follows objective.direction


def test_study_direction_follows_the_objective() -> None:
    sweeper = sweeper_config("objective.metric=val/loss", "objective.direction=minimize")
    assert sweeper.direction == "minimize"


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_instantiates_and_samples_the_space(name: str) -> None:
    sampler = instantiate(sweeper_config(f"hydra/sweeper/sampler={name}").sampler)
    space = SearchSpace(distributions={
        "optimizer": CategoricalDistribution(["adamw", "sgd"]),
        "freeze.depth": IntDistribution(1, 3),
        "optimizer.lr": FloatDistribution(1e-4, 1e-2, step=None if name != "grid" else 1e-3),
    })
    if isinstance(sampler, functools.partial):
        sampler = sampler(grid_choices(space))
    study = optuna.create_study(sampler=sampler, direction="maximize")
    for _ in range(4):
        trial = study.ask(space.distributions)
        study.tell(trial, trial.params["freeze.depth"] * trial.params["optimizer.lr"])
    assert len(study.trials) == 4
    assert all(set(t.params) == set(space.distributions) for t in study.trials)


@pytest.mark.parametrize(("name", "cls"), list(PRUNERS.items()))
def test_every_pruner_option_instantiates(name: str, cls: type) -> None:
    assert isinstance(instantiate(sweeper_config(f"hydra/sweeper/pruner={name}").pruner), cls)

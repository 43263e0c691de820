"""The study's first trials: the config as given (the base), then the portfolio's recipes.

The base trial is what makes a sweep never worse than not sweeping: it must run exactly what
``python sweep.py <same overrides>`` runs, and score what that scores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from conftest import ROOT, TINY, compose_config
from errors import PlateauError
from sweeps.ledger import ATTR_OVERRIDES, ATTR_ROLE, queued_params
from sweeps.sweeper.first_trials import base_params, check_portfolio, enqueue, portfolio_params
from sweeps.sweeper.search_space import SearchSpace, parse_search_space

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
#: Two epochs, deterministic: the base trial and the single run must agree to the digit, on
#: the validation loss (the tiny data's F1 is one value for almost any config).
RUN = [*TINY, "trainer.max_epochs=2", "trainer.deterministic=true", "optimizer.lr=0.01",
       "objective.metric=val/loss", "objective.direction=minimize"]


def default_space(overrides: list[str] = ()) -> tuple[Any, SearchSpace]:
    cfg = compose_config(list(overrides), keep_hydra=True)
    space = cfg.hydra.sweeper.default_space
    return cfg, parse_search_space(OmegaConf.to_container(space.params), [],
                                   OmegaConf.to_container(space.conditional_params))


def test_the_base_trials_params_are_the_configs_values_inside_the_space() -> None:
    cfg, space = default_space(["freeze=gradual", "optimizer.lr=0.5"])
    params = base_params(cfg, space)
    assert params["freeze"] == "gradual"  # a group's choice
    assert params["regularization.dropout"] == 0.2  # a key's value
    assert "optimizer.lr" not in params  # 0.5 lies outside tag(log, interval(1e-4, 3e-2))
    assert "freeze.milestones" not in params  # the config's [1, 2] is not one of its choices
    assert "freeze.depth" not in params  # searched only under freeze=depth


def test_a_portfolio_entry_keeps_the_base_values_of_the_params_it_leaves_out() -> None:
    cfg, space = default_space()
    base = base_params(cfg, space)
    entry = portfolio_params("probe", ["freeze=head_only", "optimizer.lr=0.01"], space, base)
    assert entry["freeze"] == "head_only"
    assert entry["optimizer.lr"] == 0.01
    assert entry["regularization.dropout"] == base["regularization.dropout"]
    assert "freeze.depth" not in entry  # the base's depth 2 belongs to freeze=depth
    gradual = portfolio_params("g", ["freeze=gradual", "freeze.milestones=[1,3]"], space, base)
    assert gradual["freeze.milestones"] == "[1,3]"


@pytest.mark.parametrize(("entry", "expected"), [
    (["optimizer.lr=0.5"], "hydra.sweeper.portfolio.bad sets optimizer.lr=0.5, outside its "
                           "search space tag(log, interval(0.0001, 0.03))"),
    (["freeze=frozen"], "sets freeze=frozen, outside its search space choice(head_only, depth, "
                        "gradual, none)"),
    (["data.batch_size=8"], "sets data.batch_size, which is not a searched param"),
    ("freeze=none", "hydra.sweeper.portfolio.bad must be a list of overrides"),
])
def test_a_portfolio_entry_outside_the_space_is_named_with_the_fix(entry: Any,
                                                                    expected: str) -> None:
    cfg, space = default_space()
    with pytest.raises(PlateauError, match=re.escape(expected)):
        check_portfolio({"bad": entry}, space, cfg)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def trials(cwd: Path) -> list[FrozenTrial]:
    return optuna.load_study(study_name="plateau", storage=f"sqlite:///{cwd / 'plateau.db'}"
                             ).trials


@pytest.fixture(scope="module")
def first_trials(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A three-trial default sweep, and the single run of the same overrides."""
    cwd = tmp_path_factory.mktemp("first")
    sweep = run("-m", *RUN, "hydra.sweeper.n_trials=3", cwd=cwd)
    single = run(*RUN, "logger=none", cwd=cwd)
    return cwd, sweep.stdout + sweep.stderr, single.stdout + single.stderr


ON_FIRST_TRIALS = pytest.mark.xdist_group("first_trials")


@ON_FIRST_TRIALS
@pytest.mark.slow
def test_the_base_trial_runs_first_and_scores_what_a_single_run_scores(
        first_trials: tuple[Path, str, str]) -> None:
    cwd, _, single = first_trials
    base = trials(cwd)[0]
    assert base.user_attrs[ATTR_ROLE] == "base"
    assert base.state == TrialState.COMPLETE
    # only the command line's plain overrides: optimizer.lr=0.01 is outside no space, and
    # trainer.max_epochs=2 replaces the space's fixed 6 for every trial
    assert base.user_attrs[ATTR_OVERRIDES] == RUN
    (value,) = re.findall(r"objective val/loss_best = ([0-9.]+)", single)
    assert base.value == pytest.approx(float(value), abs=1e-4)


@ON_FIRST_TRIALS
@pytest.mark.slow
def test_the_portfolio_runs_after_the_base_in_its_order(
        first_trials: tuple[Path, str, str]) -> None:
    cwd, _, _ = first_trials
    # the budget of 3 holds the base and two entries: none is left waiting, never to run
    _, second, third = trials(cwd)
    assert second.user_attrs[ATTR_ROLE] == "portfolio:linear_probe"
    assert queued_params(second)["freeze"] == "head_only"
    # the entry's optimizer.lr gives way to the command line's, fixed for every trial
    assert "optimizer.lr" not in second.params
    assert "optimizer.lr=0.01" in second.user_attrs[ATTR_OVERRIDES]
    assert third.user_attrs[ATTR_ROLE] == "portfolio:full_low_lr"
    assert third.params["freeze"] == "none"
    assert "trainer.max_epochs=2" in third.user_attrs[ATTR_OVERRIDES]


@ON_FIRST_TRIALS
@pytest.mark.slow
def test_the_end_of_the_sweep_states_the_gain_over_the_base(
        first_trials: tuple[Path, str, str]) -> None:
    cwd, output, _ = first_trials
    assert "gain over base" in output
    report = next(cwd.glob("multirun/*/*/report/report.md")).read_text()
    assert re.search(r"gain over the base config \| ([+-][0-9.]+ over the base trial's "
                     r"[0-9.]+ \(trial 0\)|the base trial is the best)", report)
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("plateau").experiment_id])
    roles = {r.data.tags.get("plateau.trial_number"): r.data.tags.get("plateau.role")
             for r in runs}
    assert roles["0"] == "base"
    assert roles["1"] == "portfolio:linear_probe"
    (parent,) = [r for r in runs if "plateau.trial_number" not in r.data.tags]
    base = trials(cwd)[0].value
    assert parent.data.metrics["base_value"] == pytest.approx(base)
    # a minimized loss: the gain is how much lower the best is
    assert parent.data.metrics["gain_over_base"] == pytest.approx(
        base - min(t.value for t in trials(cwd)))


def test_a_grid_sampler_takes_only_first_trials_that_set_its_whole_grid() -> None:
    cfg = compose_config(["freeze=gradual"], keep_hydra=True)
    space = parse_search_space({"freeze": "choice(head_only, gradual)", "augment": "none,light"},
                               [])
    entries = check_portfolio({"probe": ["freeze=head_only"],
                               "half": ["augment=light"]}, space, cfg)
    entries["half"].pop("freeze")  # as if the base's freeze were outside the grid
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(
        {"freeze": ["head_only", "gradual"], "augment": ["none", "light"]}))
    enqueue(study, cfg, space, True, entries, budget=10)
    assert [t.user_attrs[ATTR_ROLE] for t in study.trials] == ["base", "portfolio:probe"]


@pytest.mark.slow
def test_base_trial_false_and_no_portfolio_sample_every_trial(tmp_path: Path) -> None:
    run("-m", *TINY, "logger=none", "hydra.sweeper.n_trials=1", "hydra.sweeper.base_trial=false",
        "hydra.sweeper.default_space.portfolio=null", cwd=tmp_path)
    (trial,) = trials(tmp_path)
    assert ATTR_ROLE not in trial.user_attrs
    assert not queued_params(trial)


@pytest.mark.slow
def test_a_fresh_seeded_study_draws_the_same_trials_after_its_base(tmp_path: Path) -> None:
    # The queued base trial must not count as a resume: a resumed study reseeds its sampler
    # (so it does not replay its own draws), and a fresh one with hydra.sweeper.seed must
    # draw what the same command drew before.
    drawn = []
    for name in ("first", "second"):
        cwd = tmp_path / name
        cwd.mkdir()
        run("-m", *TINY, "logger=none", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.default_space.portfolio=null", cwd=cwd)
        base, sampled = trials(cwd)
        assert base.user_attrs[ATTR_ROLE] == "base"
        drawn.append(sampled.params)
    assert drawn[0] == drawn[1]

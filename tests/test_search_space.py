"""Search-space parsing: hydra-optuna-sweeper's grammar in, Optuna distributions out.

Pure functions, so mostly tables. A few tests hand the parsed distributions to a real
in-memory or SQLite Optuna study, to show Optuna accepts what the parser builds.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from errors import PlateauError
from sweeps.sweeper.search_space import (
    SearchSpace,
    grid_choices,
    parse_search_space,
    to_distribution,
)

KEY = "model.optimizer.lr"


def parse_one(expression: Any) -> BaseDistribution:
    """The distribution of ``expression`` given as the only entry of ``params``."""
    return parse_search_space({KEY: expression}, []).distributions[KEY]


# -- one expression → one distribution ------------------------------------------------------

@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        # choice and its simple form
        ("choice(a, b)", CategoricalDistribution(["a", "b"])),
        ("a,b", CategoricalDistribution(["a", "b"])),
        ("1,2,3", CategoricalDistribution([1, 2, 3])),
        ("choice(32, 64, 128, 256)", CategoricalDistribution([32, 64, 128, 256])),
        ("choice(1, 2.5, true)", CategoricalDistribution([1, 2.5, True])),
        ("choice(true, false)", CategoricalDistribution([True, False])),
        ("choice('hello', 'world')", CategoricalDistribution(["hello", "world"])),
        ("choice('a b', c)", CategoricalDistribution(["a b", "c"])),
        ("choice(1)", CategoricalDistribution([1])),
        # non-primitive choices stay override text
        ("choice([1,2],[2,4])", CategoricalDistribution(["[1,2]", "[2,4]"])),
        ("choice({a:1},{a:2})", CategoricalDistribution(["{a:1}", "{a:2}"])),
        # int ranges: Hydra's range, stop excluded
        ("range(1, 5)", IntDistribution(1, 4)),
        ("range(5)", IntDistribution(0, 4)),
        ("range(1, 2)", IntDistribution(1, 1)),
        ("range(0, 10, step=3)", IntDistribution(0, 9, step=3)),
        ("range(0, 10, 3)", IntDistribution(0, 9, step=3)),
        ("range(0, 9, step=3)", IntDistribution(0, 6, step=3)),
        ("range(1, 10, step=2)", IntDistribution(1, 9, step=2)),
        # float ranges: a stepped FloatDistribution, stop excluded
        ("range(0.1, 0.5, step=0.1)", FloatDistribution(0.1, 0.4, step=0.1)),
        ("range(0, 1, step=0.25)", FloatDistribution(0.0, 0.75, step=0.25)),
        ("range(1.0, 2.0, step=0.5)", FloatDistribution(1.0, 1.5, step=0.5)),
        ("range(0.5, 5.5, step=1)", FloatDistribution(0.5, 4.5, step=1.0)),
        ("range(0.0, 1.0, step=0.3)", FloatDistribution(0.0, 0.9, step=0.3)),
        ("range(0.0, 2.1, step=0.3)", FloatDistribution(0.0, 1.8, step=0.3)),
        # intervals: Hydra's interval() is float; int(...) makes it an int interval
        ("interval(0.1, 1)", FloatDistribution(0.1, 1.0)),
        ("interval(0.0, 1.0)", FloatDistribution(0.0, 1.0)),
        ("interval(1, 10)", FloatDistribution(1.0, 10.0)),
        ("int(interval(1, 10))", IntDistribution(1, 10)),
        ("tag(log, interval(0.0001, 0.1))", FloatDistribution(0.0001, 0.1, log=True)),
        ("tag(log, interval(1, 100))", FloatDistribution(1.0, 100.0, log=True)),
        ("tag(log, int(interval(1, 100)))", IntDistribution(1, 100, log=True)),
    ],
)
def test_expression_parses_to_distribution(expression: str, expected: BaseDistribution) -> None:
    assert parse_one(expression) == expected


@pytest.mark.parametrize(
    ("expression", "values"),
    [
        ("shuffle(range(1, 5))", [1, 2, 3, 4]),
        ("shuffle(range(0, 10, step=3))", [0, 3, 6, 9]),
        ("shuffle(choice(a, b, c))", ["a", "b", "c"]),
    ],
)
def test_shuffled_sweep_is_categorical_over_its_values(expression: str, values: list[Any]) -> None:
    distribution = parse_one(expression)

    assert isinstance(distribution, CategoricalDistribution)
    assert sorted(distribution.choices) == values


@pytest.mark.parametrize(
    "expression", ["shuffle(range(1, 11))", "shuffle(choice(a, b, c, d, e, f, g, h, i, j))"],
)
def test_shuffled_sweep_parses_to_the_same_distribution_every_time(
    tmp_path: Path, expression: str,
) -> None:
    # A resumed sweep (or a second worker) parses the space again and asks the same stored
    # study: Optuna refuses a categorical param whose choices changed order.
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    for _ in range(3):
        space = parse_search_space({"augment": expression}, [])
        trial = study.ask(fixed_distributions=space.distributions)
        study.tell(trial, 0.0)

    assert len(study.trials) == 3


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3, "3"),
        ("3", "3"),
        (0.001, "0.001"),
        ("adam", "adam"),
        ("[1,2]", "[1,2]"),
        ("'quoted str'", "'quoted str'"),
    ],
)
def test_plain_value_is_fixed_as_override_text(value: Any, text: str) -> None:
    space = parse_search_space({"data.batch_size": "choice(32, 64)", "trainer.x": value}, [])

    assert space.fixed == {"trainer.x": text}
    assert "trainer.x" not in space.distributions


def test_to_distribution_returns_fixed_override_as_text() -> None:
    override = OverridesParser.create().parse_override("trainer.max_epochs=3")

    assert to_distribution(override) == "3"


def test_to_distribution_returns_sweep_override_as_distribution() -> None:
    override = OverridesParser.create().parse_override("data.batch_size=choice(32, 64)")

    assert to_distribution(override) == CategoricalDistribution([32, 64])


def test_lightning_hydra_template_params_block_parses() -> None:
    params = {
        "model.optimizer.lr": "interval(0.0001, 0.1)",
        "data.batch_size": "choice(32, 64, 128, 256)",
        "model.net.lin1_size": "choice(64, 128, 256)",
        "model.net.lin2_size": "choice(64, 128, 256)",
        "model.net.lin3_size": "choice(32, 64, 128, 256)",
    }

    space = parse_search_space(params, [])

    assert space == SearchSpace(
        distributions={
            "model.optimizer.lr": FloatDistribution(0.0001, 0.1),
            "data.batch_size": CategoricalDistribution([32, 64, 128, 256]),
            "model.net.lin1_size": CategoricalDistribution([64, 128, 256]),
            "model.net.lin2_size": CategoricalDistribution([64, 128, 256]),
            "model.net.lin3_size": CategoricalDistribution([32, 64, 128, 256]),
        },
    )


def test_parsed_space_is_accepted_by_an_optuna_study() -> None:
    space = parse_search_space({
        "model.optimizer.lr": "tag(log, interval(0.0001, 0.1))",
        "data.batch_size": "choice(32, 64)",
        "freeze.depth": "range(1, 5)",
        "model.dropout": "range(0.0, 0.5, step=0.1)",
    }, [])
    study = optuna.create_study()

    trials = [study.ask(fixed_distributions=space.distributions) for _ in range(20)]

    for trial in trials:
        assert 0.0001 <= trial.params["model.optimizer.lr"] <= 0.1
        assert trial.params["data.batch_size"] in (32, 64)
        assert trial.params["freeze.depth"] in (1, 2, 3, 4)
        assert trial.params["model.dropout"] <= 0.4 + 1e-9


# -- params and command-line arguments -------------------------------------------------------

def test_command_line_argument_replaces_param_expression_for_same_key() -> None:
    space = parse_search_space({"data.batch_size": "choice(32, 64)"},
                               ["data.batch_size=range(8, 17, step=8)"])

    assert space.distributions == {"data.batch_size": IntDistribution(8, 16, step=8)}


def test_command_line_fixed_value_removes_the_key_from_the_search() -> None:
    space = parse_search_space({"data.batch_size": "choice(32, 64)", KEY: "interval(0.1, 1)"},
                               ["data.batch_size=16"])

    assert space.fixed == {"data.batch_size": "16"}
    assert list(space.distributions) == [KEY]


def test_command_line_sweep_replaces_a_fixed_param() -> None:
    space = parse_search_space({"trainer.max_epochs": 3}, ["trainer.max_epochs=choice(3, 6)"])

    assert space.fixed == {}
    assert space.distributions == {"trainer.max_epochs": CategoricalDistribution([3, 6])}


def test_command_line_sweeps_are_searched_without_params() -> None:
    space = parse_search_space(None, ["data.batch_size=choice(32, 64)", "trainer.max_epochs=3"])

    assert space.distributions == {"data.batch_size": CategoricalDistribution([32, 64])}
    assert space.fixed == {"trainer.max_epochs": "3"}


# -- conditional params ----------------------------------------------------------------------

def test_conditional_param_records_parent_value_and_distribution() -> None:
    space = parse_search_space(
        {"freeze": "choice(depth, all, none)"}, [],
        {"freeze.depth": {"when": "freeze=depth", "space": "range(1, 5)"}},
    )

    assert space.conditional == {"freeze.depth": ("freeze", "depth", IntDistribution(1, 4))}
    assert "freeze.depth" not in space.distributions


def test_conditional_when_is_stripped_around_the_equals_sign() -> None:
    space = parse_search_space(
        {"freeze": "choice(depth, all)"}, [],
        {"freeze.depth": {"when": "freeze = depth", "space": "choice(1, 2)"}},
    )

    assert space.conditional["freeze.depth"][:2] == ("freeze", "depth")


def test_names_lists_searched_then_conditional_params() -> None:
    space = parse_search_space(
        {"freeze": "choice(depth, all)", KEY: "interval(0.1, 1)", "trainer.max_epochs": 3}, [],
        {"freeze.depth": {"when": "freeze=depth", "space": "range(1, 5)"}},
    )

    assert space.names() == ["freeze", KEY, "freeze.depth"]


DEPTH_WHEN_DEPTH = {"freeze.depth": {"when": "freeze=depth", "space": "range(1, 5)"}}


def test_conditional_param_is_searched_when_its_parent_is_fixed_to_the_matching_value() -> None:
    space = parse_search_space({"freeze": "choice(depth, none)", KEY: "interval(0.1, 1)"},
                               ["freeze=depth"], DEPTH_WHEN_DEPTH)

    assert space.distributions["freeze.depth"] == IntDistribution(1, 4)
    assert not space.conditional


def test_conditional_param_is_dropped_when_its_parent_is_fixed_to_another_value() -> None:
    space = parse_search_space({"freeze": "choice(depth, none)", KEY: "interval(0.1, 1)"},
                               ["freeze=none"], DEPTH_WHEN_DEPTH)

    assert "freeze.depth" not in space.names()
    assert space.fixed == {"freeze": "none"}


def test_conditional_param_set_on_the_command_line_keeps_the_users_value() -> None:
    space = parse_search_space({"freeze": "choice(depth, none)"}, ["freeze.depth=3"],
                               DEPTH_WHEN_DEPTH)

    assert space.fixed == {"freeze.depth": "3"}
    assert not space.conditional


# -- errors: each names the key at fault -----------------------------------------------------

CONDITIONAL_KEY = "conditional_params.freeze.depth"


@pytest.mark.parametrize(
    ("params", "arguments", "conditional", "match"),
    [
        pytest.param({KEY: "choice("}, [], None, KEY, id="unclosed-choice"),
        pytest.param({KEY: "choice()"}, [], None, KEY, id="empty-choice"),
        pytest.param({KEY: "interval(a, b)"}, [], None, KEY, id="interval-of-strings"),
        pytest.param({"data.batch_size": "choice(32, 64)"}, [f"{KEY}=range(1,"], None, KEY,
                     id="invalid-command-line-sweep"),
        pytest.param({KEY: "range(5, 1)"}, [], None, f"{KEY}: range(5, 1", id="range-backwards"),
        pytest.param({KEY: "range(1, 1)"}, [], None, f"{KEY}: range(1, 1", id="range-empty"),
        pytest.param({KEY: "range(1, 5, step=0)"}, [], None, f"{KEY}: range(1, 5, step=0)",
                     id="range-zero-step"),
        pytest.param({KEY: "range(10, 0, step=-2)"}, [], None, f"{KEY}: range(10, 0",
                     id="range-negative-step"),
        pytest.param({KEY: "interval(2, 1)"}, [], None, f"{KEY}: interval(2.0, 1.0) needs low <",
                     id="interval-low-above-high"),
        pytest.param({KEY: "interval(1, 1)"}, [], None, f"{KEY}: interval(1.0, 1.0) needs low <",
                     id="interval-low-equals-high"),
        pytest.param({KEY: "tag(log, interval(0, 1))"}, [], None, f"{KEY}: interval(0.0, 1.0)",
                     id="log-interval-from-zero"),
        pytest.param({KEY: "tag(log, interval(-1, 1))"}, [], None, f"{KEY}: interval(-1.0, 1.0)",
                     id="log-interval-negative"),
        pytest.param({KEY: "interval(1e-2)"}, [], None, KEY, id="interval-without-end"),
        pytest.param({KEY: "tag(log, choice(a, b))"}, [], None,
                     f"{KEY}: tag(log, ...) does nothing on choice(...)", id="log-tag-on-choice"),
        pytest.param({KEY: "tag(log, range(1, 5))"}, [], None,
                     f"{KEY}: tag(log, ...) does nothing on range(...)", id="log-tag-on-range"),
        pytest.param({KEY: "tag(lgo, interval(1, 2))"}, [], None,
                     f"{KEY}: tag(lgo, ...) does nothing on interval(...)",
                     id="unknown-tag-on-interval"),
        pytest.param({"trainer.max_epochs": 3}, [], None, "search space is empty",
                     id="only-fixed-values"),
        pytest.param(None, [], None, "search space is empty", id="nothing-at-all"),
        pytest.param({"freeze": "choice(depth, all)"}, [],
                     {"freeze.depth": {"when": "freeze", "space": "range(1, 5)"}},
                     f"{CONDITIONAL_KEY}.when=freeze", id="when-without-equals"),
        pytest.param({"freeze": "choice(depth, all)"}, [],
                     {"freeze.depth": {"when": "strategy=depth", "space": "range(1, 5)"}},
                     f"{CONDITIONAL_KEY}.when names strategy", id="when-names-unknown-param"),
        pytest.param({"freeze": "choice(depth, all)"}, [],
                     {"freeze.depth": {"when": "freeze=depth", "space": "3"}},
                     f"{CONDITIONAL_KEY}.space=3", id="conditional-space-not-a-sweep"),
        pytest.param({"freeze": "choice(depth, all)"}, [],
                     {"freeze.depth": {"when": "freeze=depth", "space": "range(1,"}},
                     "freeze.depth", id="conditional-space-invalid"),
        pytest.param({"freeze": "choice(depth, all)"}, [],
                     {"freeze.depth": {"when": "freeze=depth", "space": "range(5, 1)"}},
                     "freeze.depth: range(5, 1", id="conditional-space-empty-range"),
    ],
)
def test_invalid_search_space_raises_plateau_error_naming_the_key(
    params: dict[str, Any] | None, arguments: list[str], conditional: dict[str, Any] | None,
    match: str,
) -> None:
    with pytest.raises(PlateauError, match=re.escape(match)):
        parse_search_space(params, arguments, conditional)


# -- grid_choices ----------------------------------------------------------------------------

def test_grid_choices_lists_every_value_of_discrete_params() -> None:
    space = parse_search_space({
        "freeze": "choice(depth, all)",
        "freeze.depth": "range(1, 5)",
        "data.batch_size": "range(1, 10, step=3)",
        "model.net.sizes": "choice([1,2],[2,4])",
        "trainer.max_epochs": "int(interval(1, 3))",
    }, [])

    assert grid_choices(space) == {
        "freeze": ["depth", "all"],
        "freeze.depth": [1, 2, 3, 4],
        "data.batch_size": [1, 4, 7],
        "model.net.sizes": ["[1,2]", "[2,4]"],
        "trainer.max_epochs": [1, 2, 3],
    }


def test_grid_choices_lists_every_value_of_a_float_range() -> None:
    space = parse_search_space({"model.dropout": "range(0.1, 0.5, step=0.1)"}, [])

    assert grid_choices(space) == {"model.dropout": pytest.approx([0.1, 0.2, 0.3, 0.4])}


@pytest.mark.parametrize(
    "expression",
    ["interval(0.1, 1)", "tag(log, interval(0.0001, 0.1))"],
)
def test_grid_choices_rejects_continuous_param_naming_it(expression: str) -> None:
    space = parse_search_space({"data.batch_size": "choice(32, 64)", KEY: expression}, [])

    with pytest.raises(PlateauError, match=re.escape(f"but {KEY} is continuous")):
        grid_choices(space)


def test_grid_choices_rejects_conditional_params() -> None:
    space = parse_search_space(
        {"freeze": "choice(depth, all)"}, [],
        {"freeze.depth": {"when": "freeze=depth", "space": "range(1, 5)"}},
    )

    with pytest.raises(PlateauError, match="cannot sample conditional_params"):
        grid_choices(space)


def test_grid_sampler_visits_every_point_of_grid_choices() -> None:
    space = parse_search_space({"freeze": "choice(depth, all)", "freeze.depth": "range(1, 4)"},
                               [])
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid_choices(space), seed=0))

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical("freeze", ["depth", "all"])
        trial.suggest_int("freeze.depth", 1, 3)
        return 0.0

    study.optimize(objective, n_trials=10)  # the sampler stops the study once the grid is done

    visited = [(t.params["freeze"], t.params["freeze.depth"]) for t in study.trials]
    assert sorted(visited) == sorted(itertools.product(["depth", "all"], [1, 2, 3]))

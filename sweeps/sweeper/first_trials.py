"""The study's first trials: the base config, then the portfolio of proven recipes.

The *base* trial runs the composed config exactly as ``python sweep.py <same overrides>``
would (no sampled or fixed search overrides), so a sweep can never end worse than not
sweeping. Its Optuna params are the base config's values of the searched params that lie
inside the space, so the sampler learns from it.

A *portfolio* entry is a named list of overrides of searched params
(``hydra.sweeper.portfolio``), run after the base: ``linear_probe: [freeze=head_only,
optimizer.lr=0.01]``. Searched params an entry leaves out keep the base config's value when
the space holds it, and are sampled otherwise. An entry outside the space is a one-line
error before anything runs.

Both are queued (:meth:`optuna.Study.enqueue_trial`) once, by the worker that creates the
study: not again on resume, not by a second worker.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution

from errors import PlateauError
from sweeps import ledger
from sweeps.sweeper.search_space import SearchSpace

log = logging.getLogger(__name__)

#: :data:`sweeps.ledger.ATTR_ROLE` of the base trial; portfolio trials carry ``portfolio:<name>``.
BASE = ledger.ROLE_BASE
PORTFOLIO = "portfolio:"


def contains(distribution: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` (a choice's override text, or a number) lies in ``distribution``."""
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    low, high = distribution.low, distribution.high  # type: ignore[attr-defined]
    step = getattr(distribution, "step", None)
    if not low <= value <= high:
        return False
    return step is None or abs((value - low) / step - round((value - low) / step)) < 1e-9


def describe(distribution: BaseDistribution) -> str:
    """A distribution as the search-space grammar writes it."""
    if isinstance(distribution, CategoricalDistribution):
        return f"choice({', '.join(map(str, distribution.choices))})"
    low, high = distribution.low, distribution.high  # type: ignore[attr-defined]
    text = f"interval({low}, {high})"
    return f"tag(log, {text})" if getattr(distribution, "log", False) else text


def _choice_text(value: Any) -> Any:
    """A config value as a categorical choice holds it (lists as their override text)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value


def _base_value(config: DictConfig, name: str) -> Any:
    """The base config's value of searched param ``name``: a group's choice, or a key's."""
    choices = OmegaConf.select(config, "hydra.runtime.choices", default=None) or {}
    if name in choices:
        return choices[name]
    return _choice_text(OmegaConf.select(config, name, default=None))


def base_params(config: DictConfig, space: SearchSpace) -> dict[str, Any]:
    """The searched params whose base value lies in the space, with that value."""
    params: dict[str, Any] = {}
    for name, distribution in space.distributions.items():
        value = _base_value(config, name)
        if contains(distribution, value):
            params[name] = value
    for name, (parent, expected, distribution) in space.conditional.items():
        value = _base_value(config, name)
        if str(params.get(parent)) == expected and contains(distribution, value):
            params[name] = value
    return params


def _entry_value(override: Any, distribution: BaseDistribution) -> Any:
    value = override.value()
    if isinstance(distribution, CategoricalDistribution) and value not in distribution.choices:
        return override.get_value_element_as_str()  # lists: their text, as choices hold them
    return value


def portfolio_params(name: str, overrides: Any, space: SearchSpace,
                     base: dict[str, Any]) -> dict[str, Any]:
    """The params of portfolio entry ``name``; raises :class:`PlateauError` when it sets a
    param that is not searched or a value outside the param's space."""
    where = f"hydra.sweeper.portfolio.{name}"
    if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides or [None]):
        raise PlateauError(f"{where} must be a list of overrides of searched params, e.g. "
                           "[freeze=head_only, optimizer.lr=0.01]")
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        first = str(err).strip().splitlines()[0]
        raise PlateauError(f"{where}: {first}; write key=value overrides") from err
    distributions = {**space.distributions,
                     **{key: dist for key, (_, _, dist) in space.conditional.items()}}
    entry: dict[str, Any] = {}
    for override in parsed:
        key = override.get_key_element()
        if key not in distributions:
            raise PlateauError(f"{where} sets {key}, which is not a searched param (searched: "
                               f"{', '.join(distributions)}); drop it or add it to the space")
        value = _entry_value(override, distributions[key])
        if not contains(distributions[key], value):
            raise PlateauError(f"{where} sets {key}={override.get_value_element_as_str()}, "
                               f"outside its search space {describe(distributions[key])}; "
                               "use a value inside it or widen the space")
        entry[key] = value
    params = {k: v for k, v in base.items() if k in space.distributions and k not in entry}
    for key, (parent, expected, _) in space.conditional.items():
        if key not in entry and key in base and str({**params, **entry}.get(parent)) == expected:
            params[key] = base[key]
    return {**params, **entry}


def check_portfolio(portfolio: dict[str, Any], space: SearchSpace, config: DictConfig,
                    default: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Every entry's params, checked against the space: ``portfolio`` (the user's) first,
    then the ``default`` space's entries that fit the space as the command line left it.

    An entry of the user's outside the space is a one-line :class:`PlateauError`. A param
    that the command line fixed for every trial is dropped from any entry (the command line
    wins); a default entry that still does not fit is skipped with a log line.
    """
    base = base_params(config, space)
    checked: dict[str, dict[str, Any]] = {}
    for name, overrides in {**(default or {}), **portfolio}.items():
        kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+") not in space.fixed] \
            if isinstance(overrides, (list, tuple)) else overrides
        try:
            checked[name] = portfolio_params(name, kept, space, base)
        except PlateauError as err:
            if name in portfolio:
                raise
            log.info("default portfolio entry %s skipped: %s", name, err)
    return checked


def enqueue(study: optuna.Study, config: DictConfig, space: SearchSpace, base_trial: bool,
            portfolio: dict[str, dict[str, Any]], budget: int) -> None:
    """Queue the base trial (when ``base_trial``) and the checked ``portfolio`` entries, as
    many as the ``budget`` of trials holds (no trial is left waiting that never runs).

    A grid sampler takes only entries that set every param of its grid (Optuna refuses the
    others); the rest are skipped with a log line.
    """
    queue = ([(BASE, base_params(config, space))] if base_trial else []) + [
        (PORTFOLIO + name, params) for name, params in portfolio.items()]
    if isinstance(study.sampler, optuna.samplers.GridSampler):
        whole = [(r, p) for r, p in queue if set(space.distributions) <= set(p)]
        for skipped in {r for r, _ in queue} - {r for r, _ in whole}:
            log.info("%s skipped: the grid sampler runs only points of its whole grid", skipped)
        queue = whole
    for role_, params in queue[:budget]:
        ledger.enqueue(study, params, role_)


def role(trial: optuna.trial.Trial | optuna.trial.FrozenTrial) -> str:
    """``base``, ``portfolio:<name>``, or empty for a sampled trial."""
    return str(trial.user_attrs.get(ledger.ATTR_ROLE, ""))

"""hydra-optuna-sweeper's search-space grammar, mapped onto Optuna distributions.

=================================  ==============================================
``key: choice(a, b)`` / ``a,b``    categorical over the values
``key: range(a, b, step=s)``       ints (or floats) ``a, a+s, …`` below ``b``, as Hydra's
                                   ``range`` (stop excluded; hydra-optuna-sweeper included it)
``key: interval(a, b)``            uniform float in [a, b]; ``int(interval(a, b))`` for ints
``key: tag(log, interval(a, b))``  log-uniform
``key: value``                     fixed: the same override for every trial
=================================  ==============================================

Choices that are not str/int/float/bool/None (lists, dicts) are kept as their override
text, e.g. ``freeze.milestones: choice([1,2],[2,4])``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Sweep,
    Transformer,
)
from hydra.errors import HydraException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from errors import PlateauError
from sweeps.schema.checks import check_space

_PRIMITIVE = (str, int, float, bool, type(None))


@dataclass
class SearchSpace:
    """Distributions to sample, fixed overrides, and params sampled only under a condition."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)
    conditional: dict[str, tuple[str, str, BaseDistribution]] = field(default_factory=dict)
    #: the command line's plain overrides (not sweeps): what the base trial runs with
    command_line: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return [*self.distributions, *self.conditional]

    def described(self) -> dict[str, str]:
        """Each param in the sweep grammar (``tag(log, interval(0.0001, 0.03))``), fixed ones
        by value, conditional ones with their condition (``range(0, 6) if freeze=depth``)."""
        found = {name: describe(dist) for name, dist in self.distributions.items()}
        for name, (key, value, dist) in self.conditional.items():
            found[name] = f"{describe(dist)} if {key}={value}"
        return found | dict(self.fixed)


def describe(dist: BaseDistribution) -> str:
    """An Optuna distribution in the grammar it was written in."""
    if isinstance(dist, CategoricalDistribution):
        return f"choice({', '.join(map(str, dist.choices))})"
    assert isinstance(dist, (IntDistribution, FloatDistribution))
    if dist.step is not None and not dist.log:
        if isinstance(dist, IntDistribution) and dist.step == 1:
            return f"range({dist.low}, {dist.high + 1})"
        return f"range({dist.low}, {dist.high + dist.step}, step={dist.step})"
    text = f"interval({dist.low}, {dist.high})"
    return f"tag(log, {text})" if dist.log else text


def _choice_values(override: Override) -> list[Any]:
    values = []
    # shuffle() only reorders Hydra's basic sweep; Optuna samples, and a resumed study needs
    # the same choices in the same order
    sweep = override.value()
    assert isinstance(sweep, (ChoiceSweep, RangeSweep))
    unshuffled = dataclasses.replace(sweep, shuffle=False)
    override = dataclasses.replace(override, _value=unshuffled)
    for value in override.sweep_iterator(transformer=Transformer.encode):
        values.append(value if isinstance(value, _PRIMITIVE) else str(value))
    return values


def _range_distribution(key: str, sweep: RangeSweep) -> BaseDistribution:
    start, stop, step = sweep.start, sweep.stop, sweep.step
    assert start is not None
    assert stop is not None
    if step is None or step <= 0 or stop <= start:
        raise PlateauError(f"{key}: range({start}, {stop}, step={step}) is empty: it needs "
                           "start < stop and a positive step")
    if all(isinstance(v, int) for v in (start, stop, step)):
        count = math.ceil((stop - start) / step)  # Hydra's range excludes stop
        return IntDistribution(int(start), int(start + (count - 1) * step), step=int(step))
    d_start, d_stop, d_step = (Decimal(str(v)) for v in (start, stop, step))
    count = math.ceil((d_stop - d_start) / d_step)
    return FloatDistribution(float(start), float(d_start + (count - 1) * d_step),
                             step=float(step))


def _interval_distribution(key: str, sweep: IntervalSweep) -> BaseDistribution:
    low, high = sweep.start, sweep.end
    assert low is not None
    assert high is not None
    log = "log" in sweep.tags
    if low >= high or (log and low <= 0):
        raise PlateauError(f"{key}: interval({low}, {high}) needs low < high"
                           + (" and low > 0 for tag(log, ...)" if log else ""))
    if isinstance(low, int) and isinstance(high, int):  # int(interval(a, b))
        return IntDistribution(low, high, log=log)
    return FloatDistribution(float(low), float(high), log=log)


def _check_tags(key: str, sweep: Sweep) -> None:
    """``log`` on an interval is the one tag that changes sampling: any other would be
    silently ignored (``tag(log, choice(a, b))`` samples uniformly)."""
    known = {"log"} if isinstance(sweep, IntervalSweep) else set()
    ignored = sorted(set(sweep.tags) - known)
    if ignored:
        kind = type(sweep).__name__.removesuffix("Sweep").lower()
        raise PlateauError(f"{key}: tag({', '.join(ignored)}, ...) does nothing on {kind}(...); "
                           "drop it (log sampling is tag(log, interval(a, b)))")


def to_distribution(override: Override) -> BaseDistribution | str:
    """The Optuna distribution of one parsed override, or its fixed value as override text."""
    key = override.get_key_element()
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    sweep = override.value()
    if isinstance(sweep, Sweep):
        _check_tags(key, sweep)
    if override.is_choice_sweep() or (isinstance(sweep, RangeSweep) and sweep.shuffle):
        values = _choice_values(override)
        if not values:
            raise PlateauError(f"{key}: choice() has no values")
        return CategoricalDistribution(values)
    if isinstance(sweep, RangeSweep):
        return _range_distribution(key, sweep)
    if isinstance(sweep, IntervalSweep):
        return _interval_distribution(key, sweep)
    assert not isinstance(sweep, ChoiceSweep)
    raise PlateauError(f"{key}: {override.input_line} is not a search space plateau understands")


def _parse(lines: list[str]) -> list[Override]:
    parser = OverridesParser.create()
    overrides = []
    for line in lines:
        try:
            overrides.append(parser.parse_override(line))
        except HydraException as err:
            first = str(err).strip().splitlines()[0]
            key = line.split("=", 1)[0]
            raise PlateauError(
                f"{key}: invalid search space {line!r} ({first}): write choice(a, b), "
                "range(a, b, step=s), interval(a, b) or tag(log, interval(a, b))"
            ) from err
    return overrides


def _add_conditional(space: SearchSpace, key: str, spec: Any) -> None:
    """Add ``key`` of ``conditional_params`` to ``space`` (see :func:`parse_search_space`)."""
    when, expression = str(spec["when"]), str(spec["space"])
    if "=" not in when:
        raise PlateauError(f"conditional_params.{key}.when={when} must read param=value")
    parent, expected = (part.strip() for part in when.split("=", 1))
    if parent not in space.distributions and parent not in space.fixed:
        raise PlateauError(f"conditional_params.{key}.when names {parent}, which is not a "
                           "searched param: add it to hydra.sweeper.params")
    (override,) = _parse([f"{key}={expression}"])
    distribution = to_distribution(override)
    if not isinstance(distribution, BaseDistribution):
        raise PlateauError(f"conditional_params.{key}.space={expression} is not a sweep")
    if key in space.distributions or key in space.fixed:
        return  # the user set or swept the key itself: that wins
    if parent in space.fixed:  # fixed on the command line: the condition is known now
        if str(space.fixed[parent]) == expected:
            space.distributions[key] = distribution
        return
    space.conditional[key] = (parent, expected, distribution)


def parse_search_space(params: dict[str, Any] | None, arguments: list[str],
                       conditional: dict[str, Any] | None = None) -> SearchSpace:
    """Build the search space from ``hydra.sweeper.params`` and the command-line sweeps.

    Command-line arguments come last, so ``key=...`` on the command line replaces the
    config's entry for ``key``.

    Args:
        params: ``{key: expression}`` from the sweeper config.
        arguments: the command-line overrides Hydra hands to the sweeper.
        conditional: ``{key: {when: "other=value", space: expression}}``. When ``other`` is
            fixed on the command line, ``key`` is searched if the value matches and dropped
            otherwise; a ``key`` set or swept on the command line is left as given.
    """
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    space = SearchSpace()
    parsed = _parse(lines)
    space.command_line = [str(o.input_line) for o in parsed[len(lines) - len(arguments):]
                          if not o.is_sweep_override()]
    for override in parsed:
        key = override.get_key_element()
        value = to_distribution(override)
        space.distributions.pop(key, None)
        space.fixed.pop(key, None)
        if isinstance(value, BaseDistribution):
            space.distributions[key] = value
        else:
            space.fixed[key] = value
    for key, spec in (conditional or {}).items():
        _add_conditional(space, key, spec)
    if not space.distributions:
        raise PlateauError("the search space is empty: the study has nothing to sample; give "
                           "hydra.sweeper.params (see conf/search/default.yaml) or sweep a key "
                           "on the command line (optimizer.lr='interval(1e-4, 1e-2)'); one "
                           "trial runs without -m")
    sampled = space.distributions | {name: dist for name, (_, _, dist)
                                     in space.conditional.items()}
    check_space(sampled, space.fixed, space.described())
    return space


def grid_choices(space: SearchSpace) -> dict[str, list[Any]]:
    """Every value of every param, for Optuna's GridSampler (discrete spaces only)."""
    grid: dict[str, list[Any]] = {}
    for key, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            count = round((dist.high - dist.low) / dist.step) + 1
            grid[key] = [dist.low + i * dist.step for i in range(count)]
        else:
            raise PlateauError(f"sampler=grid needs discrete params, but {key} is continuous: "
                               "use choice(...) or range(...), or another sampler")
    if space.conditional:
        raise PlateauError("sampler=grid cannot sample conditional_params: drop them or use "
                           "another sampler")
    return grid

"""What a trial returns: one objective, or several (a multi-objective sweep).

``objective.metric`` names one metric or a list of them, ``objective.direction`` one
direction or a list of the same length::

    python sweep.py -m 'objective.metric=[val/f1_macro,model/latency_ms]' \\
                       'objective.direction=[maximize,minimize]'

The first metric is a ``val/*`` metric: the model's best epoch is the epoch where it is best,
and the pruner judges a trial by it alone (Optuna's pruners compare one value per epoch).
Every other ``val/*`` metric is read at that same epoch, so a trial's values describe one
model. ``model/*`` metrics are the trained model's serving cost, measured once after the fit
on the trial's device (:mod:`lightning_modules.cost`).

A multi-objective study has no single best trial: the sweep reports its Pareto front and
names one "knee" trial (:mod:`sweeps.report.pareto`). Everything that judges one value
(pruning, progress lines, the doctor's standing of a trial, the report's single-objective
sections) reads the study through :class:`FirstObjective`.
"""

from __future__ import annotations

import copy
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from errors import PlateauError
from sweeps.metrics import DIRECTIONS, METRICS, MODEL_METRICS


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass(frozen=True)
class Objectives:
    """The metrics a trial returns, each with the direction that is better."""

    metrics: tuple[str, ...]
    directions: tuple[str, ...]

    @classmethod
    def of(cls, cfg: DictConfig) -> Objectives:
        """``cfg.objective``, checked: one line naming the mistake and its fix."""
        node = cfg.get("objective") or {}
        return cls.parse(node.get("metric", "val/f1_macro"), node.get("direction", "maximize"))

    @classmethod
    def parse(cls, metric: Any, direction: Any) -> Objectives:
        metrics = [str(m) for m in _as_list(metric)]
        directions = [str(d) for d in _as_list(direction)]
        shown = f"objective.metric={metric}, objective.direction={direction}"
        if not metrics:
            raise PlateauError(f"{shown}: name at least one metric, e.g. "
                               "objective.metric=val/f1_macro")
        if len(directions) != len(metrics):
            raise PlateauError(
                f"{shown}: give one direction per metric ({len(metrics)} metrics, "
                f"{len(directions)} directions), e.g. 'objective.direction=[maximize,minimize]'")
        for name, way in zip(metrics, directions, strict=True):
            if way not in DIRECTIONS:
                raise PlateauError(f"objective.direction={way} (for {name}) must be one of "
                                   f"{', '.join(DIRECTIONS)}; fix the value")
            if name not in METRICS and name not in MODEL_METRICS:
                raise PlateauError(
                    f"objective.metric={name} is not a metric trials log: use one of "
                    f"{', '.join(METRICS)} (each trial's best epoch), or, after the first, "
                    f"one of {', '.join(MODEL_METRICS)} (the trained model's serving cost)")
            if name in MODEL_METRICS and way != "minimize":
                raise PlateauError(f"objective.metric={name} is a cost: its direction must be "
                                   "minimize; fix objective.direction")
        if metrics[0] not in METRICS:
            raise PlateauError(
                f"objective.metric={metrics[0]} cannot be the first objective: the first is a "
                f"val/* metric ({', '.join(METRICS)}), whose best epoch picks the model and "
                "which the pruner judges; list the cost after it, e.g. "
                f"'objective.metric=[val/f1_macro,{metrics[0]}]'")
        if len(set(metrics)) != len(metrics):
            raise PlateauError(f"objective.metric={metric} names a metric twice; list each once")
        return cls(tuple(metrics), tuple(directions))

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1

    @property
    def first(self) -> str:
        return self.metrics[0]

    @property
    def study_directions(self) -> list[StudyDirection]:
        return [StudyDirection[d.upper()] for d in self.directions]

    @property
    def needs_cost(self) -> bool:
        """Whether a trial measures its serving cost after the fit."""
        return any(name in MODEL_METRICS for name in self.metrics)

    def shown(self) -> str:
        """``val/f1_macro (maximize), model/latency_ms (minimize)``."""
        return ", ".join(f"{m} ({d})" for m, d in zip(self.metrics, self.directions,
                                                      strict=True))

    def values(self, at_best: dict[str, float], cost: dict[str, float]) -> list[float]:
        """A trial's values: its ``val/*`` metrics at the first objective's best epoch
        (``at_best``), its ``model/*`` metrics from ``cost``."""
        missing = [m for m in self.metrics if m not in at_best and m not in cost]
        if missing:
            raise RuntimeError(f"the trial did not log {', '.join(missing)} at its best epoch")
        return [float(at_best[m]) if m in at_best else float(cost[m]) for m in self.metrics]


def first_value(trial: FrozenTrial) -> float | None:
    """The trial's first objective value (None when it has none)."""
    return None if trial.values is None else float(trial.values[0])


def _on_first(trial: FrozenTrial) -> FrozenTrial:
    if trial.values is None or len(trial.values) <= 1:
        return trial
    single = copy.copy(trial)
    single.values = [trial.values[0]]
    return single


class FirstObjective:
    """A study seen through its first objective: what Optuna's pruners and plateau's
    single-objective code read (``direction``, ``best_trial``, trials' ``value``).

    Anything else is the study's own (its storage, sampler, pruner, user attributes), so a
    trial built on this view reports intermediate values into the real study. A
    single-objective study is returned as is by :func:`first_objective`.
    """

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    @property
    def study(self) -> optuna.Study:
        """The multi-objective study behind the view."""
        return self._study

    @property
    def direction(self) -> StudyDirection:
        return self._study.directions[0]

    @property
    def directions(self) -> list[StudyDirection]:
        return [self.direction]

    def _is_multi_objective(self) -> bool:  # what Optuna's importance code asks
        return False

    def get_trials(self, deepcopy: bool = True,
                   states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return [_on_first(t) for t in self._study.get_trials(deepcopy=deepcopy, states=states)]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    @property
    def best_trial(self) -> FrozenTrial:
        complete = [t for t in self.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.values is not None]
        if not complete:
            raise ValueError("no trial is complete")
        pick = max if self.direction == StudyDirection.MAXIMIZE else min
        return pick(complete, key=lambda t: float(t.values[0]))

    @property
    def best_value(self) -> float:
        return float(self.best_trial.values[0])


def _without_curve(trial: FrozenTrial) -> FrozenTrial:
    if trial.state != TrialState.PRUNED or not trial.intermediate_values:
        return trial
    hidden = copy.copy(trial)
    hidden.intermediate_values = {}
    return hidden


class _PrunedCurvesHidden:
    """A multi-objective study as its sampler reads it: pruned trials without their epoch
    values (see :class:`MultiObjectiveSampler`)."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [_without_curve(t) for t in trials]

    def get_trials(self, deepcopy: bool = True,
                   states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return [_without_curve(t) for t in self._study.get_trials(deepcopy=deepcopy,
                                                                   states=states)]


class MultiObjectiveSampler(BaseSampler):
    """The sweep's sampler in a multi-objective study.

    plateau reports every trial's first objective each epoch so that the pruner can judge
    it; Optuna's own multi-objective studies never hold such values (``Trial.report``
    refuses them), and TPE reads a pruned trial's last one by the study's single
    ``direction``, which a multi-objective study does not have: the next draw would raise.
    This sampler shows the wrapped one the study with its pruned trials' epoch values
    hidden (TPE then ranks them below the complete ones, as for any pruned trial without
    reports); everything else is the wrapped sampler's.
    """

    def __init__(self, sampler: BaseSampler) -> None:
        self.sampler = sampler

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sampler, name)

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(_hidden(study), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.sampler.sample_relative(_hidden(study), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.sampler.sample_independent(_hidden(study), trial, param_name,
                                               param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.sampler.before_trial(_hidden(study), trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.sampler.after_trial(_hidden(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


def _hidden(study: optuna.Study) -> optuna.Study:
    return _PrunedCurvesHidden(study)  # type: ignore[return-value]  # duck-typed view


def first_objective(study: optuna.Study) -> optuna.Study:
    """``study`` as single-objective code reads it: itself, or its :class:`FirstObjective`."""
    if len(study.directions) == 1:
        return study
    return FirstObjective(study)  # type: ignore[return-value]  # duck-typed view


def is_multi(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def names_of(study: optuna.Study, fallback: Sequence[str]) -> list[str]:
    """The study's objective names as the sweep stored them (``objective`` user attribute),
    else ``fallback``."""
    stored = study.user_attrs.get("objectives")
    return [str(n) for n in stored] if isinstance(stored, list) else list(fallback)

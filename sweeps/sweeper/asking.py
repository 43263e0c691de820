"""Asking the study for the next trial of the budget, and suggesting its overrides."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, Trial, TrialState

from errors import PlateauError, console
from sweeps import ending, ledger, liveness
from sweeps.sweeper import reruns
from sweeps.sweeper.first_trials import BASE
from sweeps.sweeper.reruns import Reruns
from sweeps.sweeper.search_space import SearchSpace


def override_value(value: Any) -> str:
    """A sampled value as Hydra override text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class FailureRate:
    """Stop a sweep whose trials fail too often.

    Counts the trials finished since this sweep started (in any worker); earlier sweeps'
    failures do not count, so re-running the command after fixing their cause continues
    the study.

    Args:
        max_failure_rate: the share of failed trials above which the sweep stops.
        started: when this sweep started (``time.time()``).
    """

    def __init__(self, max_failure_rate: float, started: float) -> None:
        self._max = max_failure_rate
        self._started = started

    def check(self, trials: Sequence[FrozenTrial]) -> None:
        """Raise a one-line :class:`PlateauError` when the rate is exceeded."""
        finished = [t for t in trials if ledger.is_finished(t) and t.datetime_complete is not None
                    and t.datetime_complete.timestamp() >= self._started]
        failed = [t for t in finished if t.state == TrialState.FAIL]
        if finished and len(failed) / len(finished) > self._max:
            last = failed[-1].user_attrs.get(ledger.ATTR_ERROR, "")
            raise PlateauError(
                f"{len(failed)} of {len(finished)} trials failed, above hydra.sweeper."
                f"max_failure_rate={self._max} (last error: {last}); fix the "
                "cause or raise max_failure_rate"
            )


class Deadline:
    """``hydra.sweeper.timeout``: after it, this sweep launches no more trials.

    Trials already running finish; the budget stays, so a re-run continues the study.

    Args:
        given: the setting as the user wrote it (for the message).
        seconds: its length, None for no limit.
        started: when this sweep started (``time.time()``).
    """

    def __init__(self, given: Any = None, seconds: float | None = None,
                 started: float = 0.0) -> None:
        self._given = given
        self._at = None if seconds is None else started + seconds
        self.passed = False

    def check(self, trials: Sequence[FrozenTrial], n_trials: int) -> bool:
        """True once the time is spent; says so on the console the first time."""
        if self._at is None or time.time() < self._at:
            return False
        if not self.passed:
            self.passed = True
            running = sum(t.state == TrialState.RUNNING for t in trials)
            done = sum(map(ledger.spends_budget, trials))
            console.print(f"[yellow]plateau: hydra.sweeper.timeout={self._given} is spent: no "
                          f"new trials; {running} running trial(s) finish. {done} of "
                          f"{n_trials} trials done: re-run the same command to continue the "
                          "study[/]", soft_wrap=True)
        return True


class Asker:
    """Asks the study for trials within ``n_trials`` and samples their overrides from
    ``space`` (then ``custom_search_space``, hydra-optuna-sweeper's hook)."""

    def __init__(self, study: optuna.Study, space: SearchSpace, n_trials: int,
                 failures: FailureRate, config: DictConfig,
                 custom: Callable[[DictConfig, Trial], None] | None = None,
                 deadline: Deadline | None = None, reruns: Reruns | None = None) -> None:
        self._study = study
        self._space = space
        self._n_trials = n_trials
        self._failures = failures
        self._config = config
        self._custom = custom
        self.deadline = deadline or Deadline()
        self._reruns = reruns

    def next_trial(self) -> tuple[Trial, list[str]] | None:
        """Ask the next trial of the budget, or None when every unit is claimed; then,
        with reruns set, the next top-k rerun once the search is over (outside the budget).

        Other workers may share the study: a trial asked as the budget ran out elsewhere is
        withdrawn (see :func:`sweeps.ledger.within_budget`).
        """
        study = self._study
        trials = study.get_trials(deepcopy=False)
        self._failures.check(trials)
        if sum(map(ledger.claims_budget, trials)) >= self._n_trials:
            if self._reruns is None or self.deadline.check(trials, self._n_trials):
                return None
            return self._next_rerun()
        if self.deadline.check(trials, self._n_trials):
            return None
        with ending.taking_trial(study):  # sqlite ignores Optuna's row lock on a queued trial
            trial = study.ask()
            # owned at once: a worker starting now must not take it for a dead sweep's trial
            trial.set_user_attr(ledger.ATTR_OWNER, liveness.owner_id())
            trial.set_user_attr(ledger.ATTR_HEARTBEAT, time.time())
        if ledger.is_rerun(trial):  # queued before this study's budget was raised
            return trial, reruns.overrides_for(study, trial)
        if not ledger.within_budget(study.get_trials(deepcopy=False), trial.number,
                                    self._n_trials):
            ending.withdraw(study, ledger.trial_id(trial))
            return None
        return trial, self._overrides(trial)

    def _next_rerun(self) -> tuple[Trial, list[str]] | None:
        """The next top-k rerun (:mod:`sweeps.sweeper.reruns`), once the search is over."""
        assert self._reruns is not None
        for _ in range(3):  # a search trial queued ahead of the reruns is withdrawn (requeued)
            trial = self._reruns.take(self._study, self._n_trials)
            if trial is None:
                return None
            if ledger.is_rerun(trial):
                return trial, reruns.overrides_for(self._study, trial)
            ending.withdraw(self._study, ledger.trial_id(trial))
        return None

    def waits(self) -> bool:
        """Whether a slot with nothing to run should look again in a moment: reruns are
        due once the search trials still running elsewhere end (sleeps meanwhile)."""
        return (self._reruns is not None and not self.deadline.passed
                and self._reruns.waits(self._study, self._n_trials))

    def _overrides(self, trial: Trial) -> list[str]:
        overrides = suggest_overrides(trial, self._space, self._config, self._custom)
        trial.set_user_attr(ledger.ATTR_OVERRIDES, overrides)
        return overrides


def suggest_overrides(trial: Trial, space: SearchSpace, config: DictConfig | None = None,
                      custom: Callable[[DictConfig, Trial], None] | None = None) -> list[str]:
    """Sample ``trial``'s params from ``space`` (then ``custom_search_space``,
    hydra-optuna-sweeper's hook) and return its Hydra overrides.

    The base trial (:mod:`sweeps.sweeper.first_trials`) records the base config's values
    as its params but gets only the command line's plain overrides: it runs the config
    exactly as ``python sweep.py <same overrides>`` would. A searched param whose base value
    lies outside the space (a backbone ``backbone_top_k`` dropped) is not sampled for it:
    its params say what it ran.
    """
    base = trial.user_attrs.get(ledger.ATTR_ROLE) == BASE
    queued = ledger.queued_params(ledger.frozen_trial(trial.study, ledger.trial_id(trial))) \
        if base else None
    for name, distribution in space.distributions.items():
        if queued is None or name in queued:
            ledger.suggest(trial, name, distribution)
    for name, (parent, expected, distribution) in space.conditional.items():
        if override_value(trial.params.get(parent)) == expected and (
                queued is None or name in queued):
            ledger.suggest(trial, name, distribution)
    if base:
        return list(space.command_line)
    if custom is not None:
        assert config is not None
        custom(config, trial)
    overlap = set(trial.params) & set(space.fixed)
    if overlap:
        raise PlateauError(f"{', '.join(sorted(overlap))} is both searched and fixed: "
                           "keep one")
    overrides = [f"{k}={override_value(v)}" for k, v in trial.params.items()]
    return overrides + [f"{k}={override_value(v)}" for k, v in space.fixed.items()]

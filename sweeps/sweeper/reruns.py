"""Top-k reruns: the search's best configs measured again with new seeds, after the search.

A best trial is one seed's luck. With ``hydra.sweeper.rerun_top_k=k`` and
``hydra.sweeper.rerun_seeds=s``, once the search's ``n_trials`` are finished the sweep runs
each of the k best COMPLETE search trials' configs s more times, with the ``seed`` key at
its own value + 1 ... + s (never the original), and the report picks the best mean
(:mod:`sweeps.report.reruns`).

A rerun is a trial of the same study (role ``rerun``, ``rerun_of``, ``rerun_seed``), queued
with the config's params so the study's viewers show it with its config. Its seed is a
Hydra override, never an Optuna param: the space the sampler models stays the search's.
It runs the original trial's overrides exactly, counts outside ``n_trials``, and no pruner
or stopping rule ends it early (it is a re-measurement, like the base trial).

Exact under resume and across workers: the plan (which trials, which seeds) is derived from
the finished search and stored on the study (:data:`sweeps.ledger.STUDY_RERUN_PLAN`); a
worker queues the plan's reruns that are neither queued, running nor finished, under
:func:`sweeps.ending.planning`, so each (config, seed) is queued once however many workers
or re-runs of the command get there. An interrupted rerun is queued again like any
interrupted trial (:func:`sweeps.ending.abandon` keeps its rerun attributes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, Trial, TrialState

from sweeps import ending, ledger, liveness

#: Seconds between two looks at the study while the search's last trials run elsewhere.
WAIT_S = 1.0
#: The config key a rerun changes.
SEED_KEY = "seed"


def new_seeds(original: int, count: int) -> list[int]:
    """The seeds of a config's reruns: ``original + 1`` ... ``original + count``."""
    return [original + i for i in range(1, count + 1)]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def seed_of(overrides: Sequence[str], default: int) -> int:
    """The seed a trial ran with: its own ``seed=`` override, else the sweep's ``default``."""
    for override in overrides:
        if _key(override) == SEED_KEY and "=" in override:
            try:
                return int(override.split("=", 1)[1])
            except ValueError:
                break
    return default


def top_configs(trials: Sequence[FrozenTrial], k: int, maximize: bool) -> list[FrozenTrial]:
    """The ``k`` best COMPLETE search trials (reruns excluded), best first, ties by number;
    a config that ran twice (the same overrides) counts once, by its better trial."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                and not ledger.is_rerun(t)]
    ordered = sorted(complete, key=lambda t: (-float(t.value) if maximize  # type: ignore[arg-type]
                                              else float(t.value), t.number))  # type: ignore[arg-type]
    picked: list[FrozenTrial] = []
    seen: set[object] = set()
    for trial in ordered:
        overrides = trial.user_attrs.get(ledger.ATTR_OVERRIDES)
        config = tuple(overrides) if overrides is not None else trial.number
        if config not in seen:
            seen.add(config)
            picked.append(trial)
    return picked[:k]


def _present(trials: Sequence[FrozenTrial]) -> set[tuple[int, int]]:
    """(trial, seed) of the reruns queued, running or finished: not to be queued again."""
    return {(int(t.user_attrs[ledger.ATTR_RERUN_OF]), int(t.user_attrs[ledger.ATTR_RERUN_SEED]))
            for t in trials if ledger.is_rerun(t) and ledger.ATTR_RERUN_OF in t.user_attrs
            and (t.state in (TrialState.WAITING, TrialState.RUNNING) or ledger.is_finished(t))}


def overrides_for(study: optuna.Study, trial: Trial) -> list[str]:
    """The rerun ``trial``'s Hydra overrides: its original trial's, with the rerun's seed.

    Its params are the original's, taken from the queue (suggesting a queued param returns
    its queued value), so the study holds the rerun with its config and nothing is sampled.
    """
    original = ledger.frozen_trial(
        study, ledger.trial_id_of(study, int(trial.user_attrs[ledger.ATTR_RERUN_OF])))
    for name, distribution in original.distributions.items():
        ledger.suggest(trial, name, distribution)
    kept = [o for o in original.user_attrs.get(ledger.ATTR_OVERRIDES, []) if _key(o) != SEED_KEY]
    overrides = [*kept, f"{SEED_KEY}={int(trial.user_attrs[ledger.ATTR_RERUN_SEED])}"]
    trial.set_user_attr(ledger.ATTR_OVERRIDES, overrides)
    return overrides


class Reruns:
    """Plans the reruns once the search is over and hands them out, each once.

    Args:
        top_k: how many of the best configs run again.
        seeds: how many new seeds each runs with.
        seed: the sweep config's ``seed`` (a trial's own ``seed=`` override wins).
        heartbeat_timeout_s: when another host's running trial counts as dead (not waited
            for).
    """

    def __init__(self, top_k: int, seeds: int, seed: int, heartbeat_timeout_s: float) -> None:
        self._top_k = top_k
        self._seeds = seeds
        self._seed = seed
        self._timeout = heartbeat_timeout_s

    def plan(self, study: optuna.Study, trials: Sequence[FrozenTrial]) -> list[tuple[int, int]]:
        """(trial, seed) of every rerun: the stored plan when made for these settings and
        this search, else made now from the search's results and stored."""
        key = {"top_k": self._top_k, "seeds": self._seeds,
               "search": sum(map(ledger.spends_budget, trials))}
        stored = study.user_attrs.get(ledger.STUDY_RERUN_PLAN)
        if isinstance(stored, dict) and all(stored.get(k) == v for k, v in key.items()):
            return [(int(of), int(seed)) for of, seed in stored["reruns"]]
        configs = top_configs(trials, self._top_k, study.direction == StudyDirection.MAXIMIZE)
        reruns = [(t.number, seed) for t in configs for seed in new_seeds(
            seed_of(t.user_attrs.get(ledger.ATTR_OVERRIDES, []), self._seed), self._seeds)]
        study.set_user_attr(ledger.STUDY_RERUN_PLAN, {
            **key, "configs": [t.number for t in configs],
            "reruns": [[of, seed] for of, seed in reruns]})
        return reruns

    def _queue_missing(self, study: optuna.Study) -> None:
        with ending.planning(study):  # one worker at a time: each rerun is queued once
            trials = study.get_trials(deepcopy=False)
            present = _present(trials)
            numbered = {t.number: t for t in trials}
            for of, seed in self.plan(study, trials):
                if (of, seed) not in present:
                    ledger.enqueue(study, numbered[of].params, ledger.ROLE_RERUN, extra={
                        ledger.ATTR_RERUN_OF: of, ledger.ATTR_RERUN_SEED: seed})

    def take(self, study: optuna.Study, n_trials: int) -> Trial | None:
        """The next queued trial once the search's ``n_trials`` are finished and a rerun
        waits (queueing the missing ones first); None otherwise. Usually a rerun; a trial
        of the search queued before it comes first (the caller withdraws it)."""
        if sum(map(ledger.spends_budget, study.get_trials(deepcopy=False))) < n_trials:
            return None
        self._queue_missing(study)
        with ending.taking_trial(study):  # no other worker takes the same queued trial
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if not any(map(ledger.is_rerun, waiting)):
                return None
            trial = study.ask()
            trial.set_user_attr(ledger.ATTR_OWNER, liveness.owner_id())
            trial.set_user_attr(ledger.ATTR_HEARTBEAT, time.time())
        return trial

    def waits(self, study: optuna.Study, n_trials: int) -> bool:
        """Whether to look again in a moment (after sleeping :data:`WAIT_S`): the budget is
        claimed, but search trials still run in live processes, and the reruns start when
        they end."""
        trials = study.get_trials(deepcopy=False)
        if sum(map(ledger.claims_budget, trials)) < n_trials:
            return False
        now = time.time()
        running = [t for t in trials if t.state == TrialState.RUNNING and not ledger.is_rerun(t)
                   and not liveness.is_dead(str(t.user_attrs.get(ledger.ATTR_OWNER, "")),
                                            float(t.user_attrs.get(ledger.ATTR_HEARTBEAT, now)),
                                            self._timeout, now)]
        if not running:
            return False
        time.sleep(WAIT_S)
        return True

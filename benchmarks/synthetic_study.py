"""A study filled with synthetic finished trials of plateau's search space, for
``benchmarks/orchestration_growth.py``.

Params are drawn through the sweeper's own suggestion code (conditional params included);
each trial carries the user attributes a real one does (overrides, owner, heartbeat, curves,
a 10-class confusion matrix, diagnosis, stop reason or error), so reading the study costs
what reading a real one of that size costs.
"""

from __future__ import annotations

import random
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState, create_trial

from sweeps.sweeper.asking import suggest_overrides
from sweeps.sweeper.search_space import SearchSpace

#: A job's ``host:pid`` as plateau writes it (its value costs nothing here).
OWNER = "node-7:41234"


class SyntheticTrials:
    """Finished trials of ``space`` with a real trial's attributes, drawn reproducibly."""

    def __init__(self, space: SearchSpace, epochs: int, seed: int = 0) -> None:
        self._space, self._epochs = space, epochs
        self._rng = random.Random(seed)
        self._draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))

    def make(self) -> FrozenTrial:
        draw = self._draws.ask()
        overrides = suggest_overrides(draw, self._space)
        rng, epochs = self._rng, self._epochs
        state = rng.choices([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL],
                            [0.60, 0.35, 0.05])[0]
        ran = epochs if state == TrialState.COMPLETE else rng.randint(1, epochs - 1)
        curves = {name: [round(rng.random(), 4) for _ in range(ran)]
                  for name in ("train_loss", "val_loss", "train_acc", "val_acc")}
        attrs: dict[str, Any] = {
            "overrides": overrides, "owner": OWNER, "heartbeat": time.time(),
            "mlflow_run_id": f"{rng.getrandbits(128):032x}", "max_epochs": epochs,
            "objective_so_far": rng.random(), "fit_seconds": 55.0, "curves": curves,
            "diagnosis": "healthy", "diagnosis_reason": "val loss still falling at the end "
            "of the budget; train and val accuracy within 0.05 of each other",
            "val_confusion": [[rng.randrange(40) for _ in range(10)] for _ in range(10)],
            "classes": [str(i) for i in range(10)]}
        value = None if state == TrialState.FAIL else rng.random()
        if state == TrialState.PRUNED:
            attrs |= {"prune_reason": "val/loss 0.9 at epoch 4 of 6 vs the median 0.5",
                      "stopped_epoch": ran - 1}
        if state == TrialState.FAIL:
            attrs["error"] = "RuntimeError: CUDA error: an illegal memory access was found"
        return create_trial(state=state, value=value, params=draw.params,
                            distributions=draw.distributions, user_attrs=attrs,
                            intermediate_values={e: -rng.random() for e in range(ran)})

    def fill(self, study: optuna.Study, count: int) -> float:
        """Add ``count`` trials to ``study``; the seconds it took."""
        started = time.perf_counter()
        study.add_trials([self.make() for _ in range(count)])
        return time.perf_counter() - started

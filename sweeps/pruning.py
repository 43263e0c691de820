"""Pruning on stagnation: trailing trials pruned, competitive ones that stall completed early.

Values arrive in the study's direction (see :mod:`sweeps.metrics` for why a loss is reported
negated in a maximizing study).
"""

from __future__ import annotations

import math

import optuna
from optuna.pruners import BasePruner, MedianPruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial


class StagnationPruner(BasePruner):
    """End trials that stall: pruned when behind the others, completed early when ahead.

    A trial whose reported value is worse than the median of other trials at the same epoch
    (``MedianPruner``, after ``n_warmup_steps``) is *pruned*: in a transfer-learning sweep a
    run that trails after the warm-up rarely overtakes, and a no-pruning sweep spends most of
    its epochs on such runs. With ``only_stagnating=True`` a trailing trial is pruned only
    once it also stagnates (a gentler policy for slow starters such as full fine-tuning at a
    low learning rate). A competitive trial that stagnates -- no improvement for
    ``patience`` epochs -- is not pruned; :meth:`stagnates` tells it to end early as
    COMPLETE with its best value so far.

    Args:
        patience: epochs without improvement (by more than ``min_delta``) before stagnation.
        min_delta: smallest change of the reported value that counts as improvement.
        n_startup_trials: trials to finish before the median comparison prunes anything.
        n_warmup_steps: epochs before any decision in a trial.
        only_stagnating: prune a trailing trial only when it stagnates as well.
    """

    def __init__(self, patience: int = 2, min_delta: float = 0.0, n_startup_trials: int = 2,
                 n_warmup_steps: int = 1, only_stagnating: bool = False) -> None:
        if patience < 1:
            raise ValueError(f"patience={patience} must be at least 1")
        if min_delta < 0.0:
            raise ValueError(f"min_delta={min_delta} must be >= 0")
        self._patience = patience
        self._min_delta = min_delta
        self._n_warmup_steps = n_warmup_steps
        self._only_stagnating = only_stagnating
        self._median = MedianPruner(n_startup_trials=n_startup_trials,
                                    n_warmup_steps=n_warmup_steps)

    def stagnates(self, values: list[float], direction: StudyDirection) -> bool:
        """True when the last ``patience`` values brought no improvement over the best before.

        Args:
            values: the trial's reported values, one per epoch, in order (NaN/inf ignored).
            direction: the study's direction, in which the values are reported.
        """
        finite = [v for v in values if math.isfinite(v)]
        if len(finite) <= self._patience or len(finite) <= self._n_warmup_steps:
            return False
        sign = 1.0 if direction == StudyDirection.MAXIMIZE else -1.0
        scores = [sign * v for v in finite]
        best_before = max(scores[: -self._patience])
        return max(scores[-self._patience:]) <= best_before + self._min_delta

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if self._only_stagnating:
            values = [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]
            if not self.stagnates(values, study.direction):
                return False
        return bool(self._median.prune(study, trial))

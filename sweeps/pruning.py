"""Pruning on stagnation: trailing trials pruned, competitive ones that stall completed early.

Values arrive in the study's direction (see :mod:`sweeps.metrics` for why a loss is reported
negated in a maximizing study).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import optuna
from optuna.pruners import BasePruner, MedianPruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sweeps.metrics import is_negated

#: Trial user attribute: the trial's best objective so far (objective units), updated each
#: epoch; a trial that ends keeps its final value apart (:mod:`sweeps.ledger`'s ATTR_OBJECTIVE),
#: so an interrupted or failed trial is not taken for one with a result.
ATTR_BEST_SO_FAR = "objective_so_far"
#: Trial user attribute: the trial's epoch budget (``trainer.max_epochs``), set before its
#: first report, for rules that scale with it (:class:`StagnationPruner`'s shares).
ATTR_MAX_EPOCHS = "max_epochs"


class StagnationPruner(BasePruner):
    """End trials that stall: pruned when behind the others, completed early when ahead.

    A trial whose reported value is worse than the median of other trials at the same epoch
    (``MedianPruner``, after ``n_warmup_steps``) is *pruned* -- unless its objective so far
    (:data:`ATTR_BEST_SO_FAR`) already beats every complete trial's: the monitored loss and
    the objective can disagree (a full fine-tune with a higher val loss and the best F1), and
    the leader by the objective is the model the user came for. in a transfer-learning sweep a
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
        warmup_share: no decision before this share of the trial's epoch budget either
            (:data:`ATTR_MAX_EPOCHS`); slow starters -- full fine-tuning, a warm-up -- trail
            the field in their first epochs and win later.
        patience_share: patience of at least this share of the epoch budget.
    """

    def __init__(self, patience: int = 2, min_delta: float = 0.0, n_startup_trials: int = 2,
                 n_warmup_steps: int = 1, only_stagnating: bool = False,
                 warmup_share: float = 0.0, patience_share: float = 0.0) -> None:
        if patience < 1:
            raise ValueError(f"patience={patience} must be at least 1")
        if min_delta < 0.0:
            raise ValueError(f"min_delta={min_delta} must be >= 0")
        for name, share in (("warmup_share", warmup_share), ("patience_share", patience_share)):
            if not 0.0 <= share < 1.0:
                raise ValueError(f"{name}={share} must be a share of the epochs, in [0, 1)")
        self._patience = patience
        self._min_delta = min_delta
        self._n_warmup_steps = n_warmup_steps
        self._only_stagnating = only_stagnating
        self._warmup_share = warmup_share
        self._patience_share = patience_share
        self._median = MedianPruner(n_startup_trials=n_startup_trials,
                                    n_warmup_steps=n_warmup_steps)

    @property
    def min_delta(self) -> float:
        return self._min_delta

    def warmup(self, max_epochs: int | None) -> int:
        """Epochs before any decision: ``n_warmup_steps``, or the warm-up share if longer."""
        share = math.ceil(self._warmup_share * max_epochs) if max_epochs else 0
        return max(self._n_warmup_steps, share)

    def patience(self, max_epochs: int | None = None) -> int:
        """Epochs without improvement that count as stagnation for this epoch budget."""
        share = math.ceil(self._patience_share * max_epochs) if max_epochs else 0
        return max(self._patience, share)

    def stagnates(self, values: list[float], direction: StudyDirection,
                  max_epochs: int | None = None) -> bool:
        """True when the last ``patience`` values brought no improvement over the best before.

        Args:
            values: the trial's reported values, one per epoch, in order (NaN/inf ignored).
            direction: the study's direction, in which the values are reported.
            max_epochs: the trial's epoch budget, for the shares (None: ignore them).
        """
        finite = [v for v in values if math.isfinite(v)]
        patience = self.patience(max_epochs)
        if len(finite) <= patience or len(finite) <= self.warmup(max_epochs):
            return False
        sign = 1.0 if direction == StudyDirection.MAXIMIZE else -1.0
        scores = [sign * v for v in finite]
        best_before = max(scores[:-patience])
        return max(scores[-patience:]) <= best_before + self._min_delta

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        max_epochs = trial.user_attrs.get(ATTR_MAX_EPOCHS)
        step = trial.last_step
        if step is None or step < self.warmup(max_epochs):
            return False
        if self._only_stagnating:
            values = [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]
            if not self.stagnates(values, study.direction, max_epochs):
                return False
        if _leads(study, trial.user_attrs.get(ATTR_BEST_SO_FAR)):
            return False
        return bool(self._median.prune(study, trial))


def _leads(study: optuna.Study, objective: float | None) -> bool:
    """Whether ``objective`` is at least as good as every complete trial's value."""
    if objective is None or not math.isfinite(objective):
        return False
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.value is not None]
    if not values:
        return False
    if study.direction == StudyDirection.MAXIMIZE:
        return objective >= max(values)
    return objective <= min(values)


@dataclass(frozen=True)
class Stop:
    """Why a trial's fit ends before its last epoch: pruned, or completed early."""

    pruned: bool
    reason: str


def judge_epoch(study: optuna.Study, trial: optuna.trial.Trial, epoch: int, value: float,
                reported: list[float], monitor: str, max_epochs: int | None = None,
                exempt: bool = False, best_so_far: float | None = None) -> Stop | None:
    """Report one epoch's ``value`` (in the study's direction) to ``trial`` and decide
    whether its fit ends: the one rule for live trials and for the strategy simulator.

    Args:
        reported: the values reported before this one, in epoch order.
        monitor: the monitored metric, for the reasons.
        max_epochs: the trial's epoch budget.
        exempt: report only, never stop (the base trial).
        best_so_far: the trial's best objective so far (:data:`ATTR_BEST_SO_FAR`).
    """
    if best_so_far is not None and math.isfinite(best_so_far):
        trial.set_user_attr(ATTR_BEST_SO_FAR, best_so_far)
    trial.report(value, epoch)
    if exempt:
        return None
    said = _Said(study, monitor, epoch, max_epochs)
    if trial.should_prune():
        return Stop(True, said.pruned(value))
    pruner = study.pruner
    last = max_epochs is not None and epoch + 1 >= max_epochs  # nothing left to save
    if isinstance(pruner, StagnationPruner) and not last and pruner.stagnates(
            [*reported, value], study.direction, max_epochs):
        return Stop(False, said.stagnated([*reported, value], pruner.patience(max_epochs),
                                          pruner.min_delta))
    return None


@dataclass(frozen=True)
class _Said:
    """Stop reasons with the rule that fired and its numbers, in the monitored metric's own
    units (reported values are in the study's direction: a loss is negated when maximizing)
    and 1-based epochs."""

    study: optuna.Study
    monitor: str
    epoch: int
    max_epochs: int | None

    def shown(self, reported: float) -> float:
        return -reported if is_negated(self.monitor, self.study.direction) else reported

    def at(self) -> str:
        of = f" of {self.max_epochs}" if self.max_epochs else ""
        return f"at epoch {self.epoch + 1}{of}"

    def pruned(self, value: float) -> str:
        pruner = self.study.pruner
        peers = [t.intermediate_values[self.epoch] for t in self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE,)) if self.epoch in t.intermediate_values]
        peers = [v for v in peers if math.isfinite(v)]
        versus = ""
        if peers:
            median = self.shown(statistics.median(peers))
            versus = f" vs the median {median:.4g} of {len(peers)} complete trials"
        rule = type(pruner).__name__
        if isinstance(pruner, StagnationPruner):
            rule += f" after {pruner.warmup(self.max_epochs)} warm-up epochs"
        return f"{self.monitor} {self.shown(value):.4g} {self.at()}{versus} ({rule})"

    def stagnated(self, values: list[float], patience: int, min_delta: float) -> str:
        maximizing = self.study.direction == StudyDirection.MAXIMIZE
        scores = [v if maximizing else -v for v in values]
        best = max(range(len(scores) - patience), key=scores.__getitem__)
        return (f"{self.monitor} not improved by > {min_delta:g} for {patience} epochs "
                f"{self.at()} (best {self.shown(values[best]):.4g} at epoch {best + 1}): "
                "competitive, completed early")

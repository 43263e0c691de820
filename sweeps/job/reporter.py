"""Callbacks that tie a fit to its Optuna trial: report each epoch, stop when told.

Under DDP only rank zero talks to the study; every rank joins its stop vote.
"""

from __future__ import annotations

import math
import time

import lightning.pytorch as pl
import optuna

from sweeps import ledger
from sweeps.metrics import aligned, monitor_direction
from sweeps.pruning import ATTR_MAX_EPOCHS, judge_epoch


class RankZeroStop(pl.Callback):
    """Stop a fit on every rank at once when rank zero decides to (:meth:`decide`).

    In a DDP trial only rank zero talks to the study; the other ranks run this callback's
    plain form, which never decides to stop but joins the vote, so all ranks end the fit at
    the same epoch. Outside DDP the vote is the decision itself.
    """

    def decide(self, trainer: pl.Trainer) -> bool:
        """Whether the fit should end after this validation (called on rank zero only)."""
        return False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        stop = self.decide(trainer) if trainer.is_global_zero else False
        if trainer.strategy.reduce_boolean_decision(stop, all=False):
            trainer.should_stop = True


class TrialReporter(RankZeroStop):
    """Report ``monitor`` to the Optuna trial each epoch and stop the fit when told.

    Ends the fit (``trainer.should_stop``) when the value is NaN/inf (pruned at once), when
    the pruner prunes, or when a :class:`StagnationPruner` sees a stagnating but competitive
    trial (stopped early, later told COMPLETE). Under DDP it reports once, from rank zero.
    """

    def __init__(self, study: optuna.Study, trial: optuna.trial.Trial, monitor: str) -> None:
        self.study = study
        self.trial = trial
        self.monitor = monitor
        self.pruned = False
        self.reason: str | None = None
        self.stopped_epoch: int | None = None
        self._values: dict[int, float] = {}
        #: the base trial runs to its end: the sweep's guarantee is its full value; a top-k
        #: rerun too: it re-measures a config, which a pruner must not cut short
        self.exempt = trial.user_attrs.get(ledger.ATTR_ROLE) in (ledger.ROLE_BASE,
                                                                 ledger.ROLE_RERUN)

    @property
    def ending(self) -> str:
        """How the fit ended, as the doctor reads it: ``pruned``, ``early`` or ``ran``."""
        return "pruned" if self.pruned else "early" if self.reason else "ran"

    def _stop(self, trainer: pl.Trainer, pruned: bool, reason: str) -> bool:
        self.pruned, self.reason = pruned, reason
        self.stopped_epoch = trainer.current_epoch
        return True

    def decide(self, trainer: pl.Trainer) -> bool:
        with ledger.uninterrupted():  # Ctrl-C waits for this epoch's writes
            return self._decide(trainer)

    def _decide(self, trainer: pl.Trainer) -> bool:
        self.trial.set_user_attr(ledger.ATTR_HEARTBEAT, time.time())
        if not self._values:
            self.trial.set_user_attr(ATTR_MAX_EPOCHS, trainer.max_epochs)
        metric = trainer.callback_metrics.get(self.monitor)
        if metric is None:
            return False
        epoch, value = trainer.current_epoch, float(metric)
        if not math.isfinite(value):
            return self._stop(trainer, True, f"{self.monitor} is {value} at epoch "
                                             f"{epoch + 1} of {trainer.max_epochs}: diverged")
        reported = aligned(value, self.study.direction, monitor_direction(self.monitor))
        before = [self._values[e] for e in sorted(self._values)]
        self._values[epoch] = reported
        objective = getattr(trainer.lightning_module, "objective", None)
        best = trainer.callback_metrics.get(f"{objective}_best")
        stop = judge_epoch(self.study, self.trial, epoch, reported, before, self.monitor,
                           trainer.max_epochs, self.exempt,
                           None if best is None else float(best))
        return False if stop is None else self._stop(trainer, stop.pruned, stop.reason)

"""Per-trial diagnosis from the trial's own learning curves and validation predictions.

Each label is defined once, here, in terms of the curves (``Thresholds`` names the numbers,
all settings under ``doctor.thresholds``). *Chance* is the accuracy of guessing
uniformly, 1 / classes, for the balanced accuracy of the last validation (the mean
per-class recall: imbalance cannot hide a model that answers one class), or for the best
validation accuracy when no confusion matrix was recorded; *at chance* means within
``chance_margin`` of it.

=======================  ============================================================  =======
``diverged``             a NaN/inf loss; a training loss above ``explosion_factor`` x   failure
                         that of guessing (ln of the classes) or climbing back by
                         ``divergence_rise`` of its first value; or a validation loss
                         rising from the first epoch without ever improving; a
                         training loss climbing back counts when the validation loss
                         rose as well or it ends above its start -- in a
                         trial that never learned, or was pruned no longer answering
                         well, and is not in the study's best quarter
``diverged_after_best``  the same symptoms after the trial had learned (a best         note
                         validation accuracy of at least ``underfit_accuracy``),
                         in a trial that completed, still answers well (a bump as a
                         stage unfreezes) or is in the study's best quarter: its best
                         checkpoint is fine
``too_early``            fewer than ``min_epochs`` epochs, or at chance or below        note
                         ``underfit_accuracy`` with the validation loss still falling
                         by ``steep_drop`` per epoch: the curves cannot tell yet
``no_progress``          the training loss moves (max - min) by less than               failure
                         ``no_progress_drop`` of its first value, or the validation
                         accuracy stays at chance
``majority_collapse``    ``collapse_share`` of validation predictions in one class,     failure
                         with the mean per-class recall near chance
``overfitting``          training accuracy above validation by ``overfit_gap``, with    failure
                         the validation loss ending ``overfit_rise`` above its minimum
                         or the gap held through the last ``overfit_epochs`` epochs
``underfitting``         the best validation accuracy below ``underfit_accuracy``,      failure
                         the validation loss no longer falling steeply
``healthy``              none of the above (never a trial at chance)                    --
=======================  ============================================================  =======

The first matching label wins, in this order: ``diverged`` (NaN/inf or exploded),
``too_early`` (too few epochs), the rest of ``diverged``, ``no_progress`` (flat training
loss), ``majority_collapse``, ``too_early`` / ``no_progress`` (at chance), ``overfitting``,
``underfitting``, ``healthy``. *Failures* are the labels a study summary counts; the notes
say something true about a trial that is not why it fell short.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from doctor.curves import Curves, Reading, balanced_accuracy, finite, in_top_quarter
from doctor.settings import Thresholds

__all__ = ["FAILURES", "LABELS", "Context", "Curves", "Diagnosis", "diagnose",
           "in_top_quarter"]

LABELS = ("diverged", "diverged_after_best", "too_early", "no_progress", "majority_collapse",
          "overfitting", "underfitting", "healthy")
#: The labels that say why a trial fell short (counted by the study summary).
FAILURES = ("diverged", "no_progress", "majority_collapse", "overfitting", "underfitting")

#: How a trial's fit ended: ran its epoch budget, pruned, or stopped early as complete.
ENDINGS = ("ran", "pruned", "early")

_FIXES = {
    "diverged": "lower the learning rate (optimizer.lr), or clip gradients",
    "diverged_after_best": "keep the best checkpoint; lower the learning rate or stop earlier",
    "too_early": "give it more epochs (trainer.max_epochs) before judging",
    "no_progress": "raise the learning rate (optimizer.lr), or unfreeze more of the backbone "
                   "(freeze=none, or a larger freeze.depth)",
    "majority_collapse": "class weighting (class_weight=balanced), a lower learning rate, or "
                         "unfreezing more of the backbone",
    "overfitting": "regularize more (regularization=strong), augment (augment=light), or "
                   "stop earlier",
    "underfitting": "train longer (trainer.max_epochs), unfreeze more (a larger "
                    "freeze.depth), or regularize less (regularization=none)",
    "healthy": "",
}


@dataclass(frozen=True)
class Context:
    """What the curves alone do not say: how the fit ended and how the trial ranks.

    Attributes:
        ending: one of :data:`ENDINGS`.
        top_quarter: among the best quarter of its study's complete trials (by objective).
    """

    ending: str = "ran"
    top_quarter: bool = False

    def __post_init__(self) -> None:
        if self.ending not in ENDINGS:
            raise ValueError(f"ending {self.ending!r} is not one of {ENDINGS}")


def fix_for(label: str) -> str:
    """The usual fix of a label's cause (empty for ``healthy``)."""
    return _FIXES.get(label, "")


@dataclass(frozen=True)
class Diagnosis:
    label: str
    reason: str

    @property
    def failure(self) -> bool:
        return self.label in FAILURES

    @property
    def fix(self) -> str:
        return fix_for(self.label)

    def explained(self) -> str:
        """The reason and, for a label with one, its fix: what the trial's attributes, its
        MLflow tags and the run's console carry."""
        if not self.fix:
            return self.reason
        return f"{self.reason}; fix: {self.fix}" if self.reason else f"fix: {self.fix}"


def _collapse(confusion: list[list[int]], min_share: float) -> tuple[float, int] | None:
    """(share, class) when one class takes ``min_share`` of the predictions while the mean
    per-class recall stays near chance (at most 1.5 / number of classes)."""
    total = sum(map(sum, confusion))
    if not total or len(confusion) < 2:
        return None
    predicted = [sum(row[j] for row in confusion) for j in range(len(confusion))]
    top = max(range(len(predicted)), key=predicted.__getitem__)
    share = predicted[top] / total
    if share >= min_share and (balanced_accuracy(confusion) or 0.0) <= 1.5 / len(confusion):
        return share, top
    return None


def _explosion(curves: Curves, t: Thresholds) -> str | None:
    """Why the loss counts as exploded (NaN/inf, or far above guessing), else None."""
    if not finite(curves.train_loss) or not finite(curves.val_loss):
        return "the loss became NaN/inf"
    classes = len(curves.confusion) or len(curves.classes)
    guess = math.log(classes) if classes >= 2 else None
    train = curves.train_loss
    if train and guess and max(train) > t.explosion_factor * guess:
        return (f"training loss reached {max(train):.3g}, {max(train) / guess:.0f}x the "
                f"{guess:.2f} of guessing")
    return None


def _rise(curves: Curves, t: Thresholds) -> str | None:
    """Why the losses count as rising (training loss climbing back, or a validation loss
    that never improved on its first epoch), else None."""
    train, val = curves.train_loss, curves.val_loss
    # a training loss that climbs back while validation holds is a bump (a stage unfrozen
    # by gradual unfreezing, a schedule's restart), not divergence: it counts when the
    # validation loss rose as well, or when the training loss ends above where it started
    val_rose = len(val) >= 2 and val[-1] > min(val) * (1 + t.divergence_rise)
    if len(train) >= 2 and train[-1] - min(train) > t.divergence_rise * train[0] \
            and (val_rose or train[-1] > train[0]):
        low = 1 + train.index(min(train))
        return f"training loss rose from {min(train):.3f} (epoch {low}) to {train[-1]:.3f}"
    if len(val) >= 2 and val[-1] > val[0] * (1 + t.divergence_rise) \
            and min(val) >= val[0] * (1 - t.divergence_rise):
        return f"validation loss rose from {val[0]:.3f} to {val[-1]:.3f} without improving"
    return None


def _divergence(curves: Curves, symptom: str, reading: Reading, context: Context,
                t: Thresholds) -> Diagnosis:
    """``diverged``, or ``diverged_after_best`` for a trial whose best came before it."""
    acc = [v for v in curves.val_acc if math.isfinite(v)]
    learned = bool(acc) and max(acc) >= t.underfit_accuracy
    # a pruned trial still answering well (a bump as a stage unfreezes) has not diverged
    holding = learned and math.isfinite(curves.val_acc[-1]) \
        and curves.val_acc[-1] >= t.underfit_accuracy
    if context.top_quarter or (learned and context.ending != "pruned") or holding:
        where = " (among the study's best quarter)" if context.top_quarter else ""
        return Diagnosis("diverged_after_best",
                         f"diverged after its best epoch {reading.best_epoch}{where}: "
                         f"{symptom}; the best checkpoint is fine")
    return Diagnosis("diverged", f"{symptom}: the learning rate is too high")


def diagnose(curves: Curves, thresholds: Thresholds | None = None,
             context: Context | None = None) -> Diagnosis:
    """Name the trial's failure mode, with a one-line reason (see the module docstring)."""
    t, context = thresholds or Thresholds(), context or Context()
    reading = Reading.of(curves, t)
    exploded = _explosion(curves, t)
    if exploded:
        return _divergence(curves, exploded, reading, context, t)
    if curves.epochs < t.min_epochs:
        how = {"pruned": "pruned", "early": "stopped"}.get(context.ending, "ended")
        return Diagnosis("too_early", f"{how} after {curves.epochs} epoch(s), too early to "
                                      f"judge: {reading.shows(curves)}")
    rising = _rise(curves, t)
    if rising:
        return _divergence(curves, rising, reading, context, t)
    return _stall(curves, t, reading)


def _stall(curves: Curves, t: Thresholds, reading: Reading) -> Diagnosis:
    """The labels after divergence: no progress, collapse, chance, over- and underfitting."""
    train = curves.train_loss
    if len(train) >= 2 and train[0] > 0 \
            and (max(train) - min(train)) < t.no_progress_drop * train[0]:
        return Diagnosis("no_progress", f"training loss barely moved ({min(train):.3f} to "
                                        f"{max(train):.3f} over {len(train)} epochs)")
    collapsed = _collapse(curves.confusion, t.collapse_share)
    if collapsed is not None:
        share, top = collapsed
        return Diagnosis("majority_collapse", f"{share:.0%} of validation images are "
                                              f"predicted as {curves.class_name(top)}")
    if reading.at_chance:
        if reading.steep:
            return Diagnosis("too_early", f"at chance after {curves.epochs} epochs but "
                                          f"still learning: {reading.shows(curves)}")
        return Diagnosis("no_progress", f"validation accuracy at chance after "
                                        f"{curves.epochs} epochs: {reading.shows(curves)}")
    return _fit_quality(curves, t, reading)


def _fit_quality(curves: Curves, t: Thresholds, reading: Reading) -> Diagnosis:
    """Overfitting, underfitting or healthy, from the accuracies and the validation loss."""
    train_acc, val_acc, val = curves.train_acc, curves.val_acc, curves.val_loss
    if not train_acc or not val_acc:
        return Diagnosis("healthy", "no stall symptom in the losses (no accuracies recorded)")
    gaps = [a - b for a, b in zip(train_acc, val_acc, strict=False)]
    if gaps[-1] > t.overfit_gap:
        if val and val[-1] > min(val) * (1 + t.overfit_rise):
            return Diagnosis("overfitting", f"train accuracy {train_acc[-1]:.2f} vs validation "
                                            f"{val_acc[-1]:.2f}, validation loss up from "
                                            f"{min(val):.3f} to {val[-1]:.3f}")
        held = gaps[-t.overfit_epochs:]
        if len(held) == t.overfit_epochs and min(held) > t.overfit_gap:
            return Diagnosis("overfitting", f"train accuracy {train_acc[-1]:.2f} vs validation "
                                            f"{val_acc[-1]:.2f}, a gap above "
                                            f"{t.overfit_gap:.2f} for {len(held)} epochs")
    if max(val_acc) < t.underfit_accuracy:
        if reading.steep:
            return Diagnosis("too_early", f"below {t.underfit_accuracy:.2f} after "
                                          f"{curves.epochs} epochs but still learning: "
                                          f"{reading.shows(curves)}")
        return Diagnosis("underfitting", f"best validation accuracy {max(val_acc):.2f} "
                                         f"(train {max(train_acc):.2f}), below "
                                         f"{t.underfit_accuracy:.2f}")
    return Diagnosis("healthy", f"validation accuracy {val_acc[-1]:.2f}, no stall symptom "
                                "in the curves")

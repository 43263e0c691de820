"""Per-trial diagnosis from the trial's own learning curves and validation predictions.

=====================  ===================================================================
``diverged``           a non-finite loss, a training loss exploding (10x that of guessing)
                       or ending above its start, or validation loss rising from the first
                       epoch (learning rate too high)
``no_progress``        the training loss barely moves (learning rate too low, or nothing
                       trains); such a model often also answers one class
``majority_collapse``  (almost) every validation image gets one class while the loss does
                       move: accuracy equals the majority share, balanced accuracy near chance
``overfitting``        training accuracy far above validation, and validation loss rising
                       after its minimum
``underfitting``       training and validation both poor, with a small gap
``healthy``            none of the above
=====================  ===================================================================

The first matching label wins, in the order of the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from doctor.settings import Thresholds

LABELS = ("diverged", "no_progress", "majority_collapse", "overfitting", "underfitting",
          "healthy")


@dataclass
class Curves:
    """Per-epoch values of one trial, and its last validation confusion matrix.

    ``confusion[i][j]`` counts validation images of class ``i`` predicted as ``j``.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)


@dataclass(frozen=True)
class Diagnosis:
    label: str
    reason: str


def _finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def _collapse(confusion: list[list[int]], min_share: float) -> tuple[float, int] | None:
    """(share, class) when one class takes ``min_share`` of the predictions while the mean
    per-class recall stays near chance (at most 1.5 / number of classes)."""
    total = sum(map(sum, confusion))
    if not total or len(confusion) < 2:
        return None
    predicted = [sum(row[j] for row in confusion) for j in range(len(confusion))]
    recalls = [row[i] / sum(row) for i, row in enumerate(confusion) if sum(row)]
    top = max(range(len(predicted)), key=predicted.__getitem__)
    share = predicted[top] / total
    if share >= min_share and sum(recalls) / len(recalls) <= 1.5 / len(confusion):
        return share, top
    return None


def diagnose(curves: Curves, thresholds: Thresholds | None = None) -> Diagnosis:
    """Name the trial's failure mode, with a one-line reason (see the module docstring)."""
    t = thresholds or Thresholds()
    if not _finite(curves.train_loss) or not _finite(curves.val_loss):
        return Diagnosis("diverged", "the loss became NaN/inf: the learning rate is too high "
                                     "(or the data holds NaN)")
    train = curves.train_loss
    chance = math.log(len(curves.confusion)) if len(curves.confusion) >= 2 else None
    if train and chance and max(train) > t.explosion_factor * chance:
        return Diagnosis("diverged", f"training loss reached {max(train):.3g}, "
                                     f"{max(train) / chance:.0f}x the {chance:.2f} of guessing: "
                                     "the learning rate is too high")
    if len(train) >= 2 and train[-1] > train[0] * (1 + t.divergence_rise):
        return Diagnosis("diverged", f"training loss rose from {train[0]:.3f} to {train[-1]:.3f}: "
                                     "lower the learning rate")
    val = curves.val_loss
    if len(val) >= 2 and val[-1] > val[0] * (1 + t.divergence_rise) \
            and min(val) >= val[0] * (1 - t.divergence_rise):
        return Diagnosis("diverged", f"validation loss rose from {val[0]:.3f} to {val[-1]:.3f} "
                                     "without ever improving: lower the learning rate")
    if len(train) >= 2 and train[0] > 0 and (train[0] - min(train)) < t.no_progress_drop * train[0]:
        return Diagnosis("no_progress", f"training loss barely moved ({train[0]:.3f} -> "
                                        f"{min(train):.3f}): raise the learning rate or "
                                        "unfreeze more layers")
    collapsed = _collapse(curves.confusion, t.collapse_share)
    if collapsed is not None:
        share, predicted = collapsed
        return Diagnosis("majority_collapse",
                         f"{share:.0%} of validation images are predicted as class "
                         f"{predicted}: try class weighting, a lower "
                         "learning rate, or unfreezing more of the backbone")
    if curves.train_acc and curves.val_acc:
        gap = curves.train_acc[-1] - curves.val_acc[-1]
        if gap > t.overfit_gap and val and val[-1] > min(val) * (1 + t.overfit_rise):
            return Diagnosis("overfitting", f"train accuracy {curves.train_acc[-1]:.2f} vs "
                                            f"validation {curves.val_acc[-1]:.2f}, validation "
                                            "loss rising after its minimum: regularize more, "
                                            "augment, or stop earlier")
        if max(curves.train_acc) < t.underfit_accuracy \
                and max(curves.val_acc) < t.underfit_accuracy and gap <= t.overfit_gap:
            return Diagnosis("underfitting", f"train and validation accuracy both below "
                                             f"{t.underfit_accuracy:.2f}: train longer, "
                                             "unfreeze more, or regularize less")
    return Diagnosis("healthy", "no stall symptom in the curves")

"""A trial's learning curves, and what can be read off them: chance level, the best epoch,
a validation loss still falling steeply, and the trial's standing in its study."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from doctor.settings import Thresholds


def finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


@dataclass
class Curves:
    """Per-epoch values of one trial, its last validation confusion matrix and class names.

    ``confusion[i][j]`` counts validation images of class ``i`` predicted as ``j``.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)

    SERIES = ("train_loss", "val_loss", "train_acc", "val_acc")

    def series(self) -> dict[str, list[float]]:
        """The four per-epoch series, by name (what a study stores for each trial)."""
        return {name: list(getattr(self, name)) for name in self.SERIES}

    @property
    def epochs(self) -> int:
        return max(len(self.train_loss), len(self.val_loss), len(self.val_acc))

    def class_name(self, index: int) -> str:
        """``class 'zero'``: the class's own name (its folder's), or its index unnamed."""
        return f"class {self.classes[index]!r}" if index < len(self.classes) \
            else f"class {index}"


def balanced_accuracy(confusion: list[list[int]]) -> float | None:
    """Mean per-class recall of a confusion matrix (classes without images left out)."""
    recalls = [row[i] / sum(row) for i, row in enumerate(confusion) if sum(row)]
    return sum(recalls) / len(recalls) if recalls else None


@dataclass(frozen=True)
class Reading:
    """What the diagnosis reads off a trial's curves, computed once.

    Chance is 1 / classes for the balanced accuracy of the last validation (from its
    confusion matrix: imbalance cannot hide a model that answers one class), or for the
    best validation accuracy when no matrix was recorded.
    """

    chance: float | None
    measure: tuple[str, float] | None  # ("balanced acc" | "val acc", value) compared
    at_chance: bool
    best_epoch: int | None  # 1-based epoch of the best validation accuracy (or loss)
    steep: bool  # validation loss still falling steeply

    @classmethod
    def of(cls, curves: Curves, t: Thresholds) -> Reading:
        classes = len(curves.confusion) or len(curves.classes)
        chance = 1.0 / classes if classes >= 2 else None
        balanced = balanced_accuracy(curves.confusion)
        acc = [v for v in curves.val_acc if math.isfinite(v)]
        measure = ("balanced acc", balanced) if balanced is not None \
            else ("val acc", max(acc)) if acc else None
        at_chance = measure is not None and chance is not None \
            and measure[1] <= chance + t.chance_margin
        if acc:
            best = 1 + max(range(len(curves.val_acc)), key=lambda i: _or(curves.val_acc[i]))
        elif curves.val_loss:
            best = 1 + max(range(len(curves.val_loss)), key=lambda i: _or(-curves.val_loss[i]))
        else:
            best = None
        val = curves.val_loss
        steep = len(val) >= 2 and finite(val[-2:]) and val[-2] > 0 \
            and (val[-2] - val[-1]) >= t.steep_drop * val[-2]
        return cls(chance, measure, at_chance, best, steep)

    def shows(self, curves: Curves) -> str:
        """What the curve shows so far, e.g. ``val acc 0.07 (chance 0.10), val loss 5.73 ->
        2.10, falling steeply``."""
        parts = []
        if self.measure is not None:
            chance = f" (chance {self.chance:.2f})" if self.chance is not None else ""
            parts.append(f"{self.measure[0]} {self.measure[1]:.2f}{chance}")
        val = curves.val_loss
        if val:
            trend = f"{val[0]:.3g} -> {val[-1]:.3g}" if len(val) >= 2 else f"{val[-1]:.3g}"
            parts.append(f"val loss {trend}" + (", falling steeply" if self.steep else ""))
        return ", ".join(parts) or "no validation values"


def _or(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def in_top_quarter(value: float, others: Sequence[float], maximize: bool) -> bool:
    """Whether ``value`` ranks within the best quarter (rounded up) of ``others`` and itself.

    ``others`` are the other complete trials' values; a tie counts in the trial's favour.
    """
    if not math.isfinite(value):
        return False
    values = [v for v in others if math.isfinite(v)]
    better = sum(1 for v in values if (v > value if maximize else v < value))
    return better < math.ceil((len(values) + 1) / 4)

"""Labels and class balance: one class, one dominant class, rare or unvalidated classes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from doctor.findings import Finding

#: Objectives that count every image alike, so they reward ignoring rare classes.
PLAIN_METRICS = ("val/acc",)


@dataclass(frozen=True)
class ClassCounts:
    """Images per class in each split, in class-index order."""

    names: list[str]
    train: list[int]
    val: list[int]
    negative: bool = False  # some targets were below 0 (left out of the counts)

    @classmethod
    def from_targets(cls, names: Sequence[str], train: np.ndarray,
                     val: np.ndarray) -> ClassCounts:
        negative = bool((train < 0).any() or (val < 0).any())
        train, val = train[train >= 0], val[val >= 0]
        size = max(len(names), int(train.max(initial=-1)) + 1, int(val.max(initial=-1)) + 1)
        return cls(list(names), np.bincount(train, minlength=size).tolist(),
                   np.bincount(val, minlength=size).tolist(), negative)

    @property
    def imbalance_ratio(self) -> float:
        """Largest over smallest training class (classes without training images left out)."""
        present = [n for n in self.train if n]
        return max(present) / min(present) if present else 1.0


def _names(counts: ClassCounts, indices: Sequence[int], limit: int = 5) -> str:
    shown = [counts.names[i] if i < len(counts.names) else f"#{i}" for i in indices[:limit]]
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return ", ".join(shown) + more


def check_labels(counts: ClassCounts, majority_share: float) -> list[Finding]:
    """Targets in range, at least two classes, not (almost) all one class."""
    if counts.negative or len(counts.train) > len(counts.names):
        return [Finding("labels", "error",
                        f"targets range outside 0..{len(counts.names) - 1} for "
                        f"{len(counts.names)} classes",
                        "number the classes 0..C-1 (one folder per class for data=image_folder)")]
    present = [i for i, n in enumerate(counts.train) if n]
    if len(present) < 2:
        only = _names(counts, present) or "none"
        return [Finding("labels", "error",
                        f"the training images hold {len(present)} class ({only}): a classifier "
                        "needs at least two",
                        "give each class its own folder with images in it")]
    total = sum(counts.train)
    top = int(np.argmax(counts.train))
    share = counts.train[top] / total
    if share >= majority_share:
        return [Finding("labels", "warning",
                        f"class {_names(counts, [top])} is {share:.0%} of the training images: "
                        f"predicting it alone already scores {share:.2f} accuracy",
                        "collect more images of the other classes; meanwhile use "
                        "class_weight=balanced and objective.metric=val/f1_macro")]
    return []


def check_balance(counts: ClassCounts, *, weighted: bool, objective: str, ratio_limit: float,
                  min_images: int) -> list[Finding]:
    """Classes missing from validation, rare classes, and imbalance a plain metric hides.

    Args:
        weighted: the trial weights the loss or resamples (``class_weight`` not ``none``).
        objective: the objective metric (``val/acc`` is blind to rare classes).
        ratio_limit: imbalance ratio from which an unweighted, plain-accuracy run is warned.
        min_images: fewest training images a class should have.
    """
    findings = []
    unvalidated = [i for i, n in enumerate(counts.val) if n == 0 and counts.train[i]]
    if unvalidated:
        findings.append(Finding(
            "class_balance", "warning",
            f"{len(unvalidated)} class(es) have no validation images ({_names(counts, unvalidated)}"
            "): their recall is never measured",
            "add validation images for them, or raise data.val_fraction"))
    rare = [i for i, n in enumerate(counts.train) if 0 < n < min_images]
    if rare:
        findings.append(Finding(
            "class_balance", "warning",
            f"{len(rare)} class(es) have fewer than {min_images} training images "
            f"({_names(counts, rare)})",
            "collect more images for them (or merge classes); class_weight=balanced helps a "
            "little"))
    ratio = counts.imbalance_ratio
    if ratio >= ratio_limit and not weighted and objective in PLAIN_METRICS:
        findings.append(Finding(
            "class_balance", "warning",
            f"classes are imbalanced {ratio:.1f}:1 and the loss is unweighted with {objective} "
            "as the objective: accuracy rewards ignoring the rare classes",
            "class_weight=balanced (or sampler) and objective.metric=val/f1_macro "
            "(or val/balanced_acc)"))
    elif ratio >= ratio_limit:
        findings.append(Finding(
            "class_balance", "info",
            f"classes are imbalanced {ratio:.1f}:1",
            "already countered by class weighting or a class-aware objective"))
    return findings

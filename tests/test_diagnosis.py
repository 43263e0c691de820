"""Per-trial diagnosis: each failure mode from curves that show it, and healthy otherwise."""

from __future__ import annotations

import math

import pytest

from doctor.diagnosis import Curves, Thresholds, diagnose

BALANCED = [[18, 1, 1], [1, 17, 2], [0, 2, 18]]  # good predictions, 3 classes
COLLAPSED = [[20, 0, 0], [19, 1, 0], [20, 0, 0]]  # nearly everything predicted as class 0


def curves(train_loss, val_loss, train_acc, val_acc, confusion=BALANCED) -> Curves:
    return Curves(list(train_loss), list(val_loss), list(train_acc), list(val_acc), confusion)


HEALTHY = curves([1.0, 0.6, 0.4, 0.3], [1.0, 0.7, 0.5, 0.45], [0.5, 0.8, 0.9, 0.92],
                 [0.5, 0.75, 0.85, 0.88])

CASES = {
    "healthy": (HEALTHY, "healthy"),
    "nan loss": (curves([1.0, math.nan], [1.0, 1.2], [0.4, 0.3], [0.3, 0.3]), "diverged"),
    "inf val loss": (curves([1.0, 0.9], [1.0, math.inf], [0.4, 0.5], [0.3, 0.3]), "diverged"),
    "train loss exploding far above guessing": (
        curves([60.0, 250.0, 90.0], [2e11, 1e8, 7e5], [0.3, 0.3, 0.3], [0.3, 0.3, 0.3]),
        "diverged"),
    "train loss ending above its start": (
        curves([1.0, 1.05, 1.2], [1.0, 0.9, 0.95], [0.4, 0.4, 0.35], [0.4, 0.4, 0.4]),
        "diverged"),
    "val loss rising from the start": (
        curves([2.0, 2.5, 3.5], [1.1, 1.9, 3.0], [0.3, 0.3, 0.3], [0.3, 0.3, 0.3]), "diverged"),
    "one class predicted": (
        curves([1.1, 1.0, 0.95], [1.1, 1.05, 1.0], [0.4, 0.4, 0.4], [0.35, 0.35, 0.35],
               COLLAPSED), "majority_collapse"),
    "loss barely moves": (
        curves([1.10, 1.099, 1.095], [1.1, 1.1, 1.1], [0.34, 0.35, 0.34], [0.33, 0.34, 0.33]),
        "no_progress"),
    "flat loss and one class predicted": (
        curves([1.10, 1.10, 1.10], [1.1, 1.1, 1.1], [0.33, 0.33, 0.33], [0.33, 0.33, 0.33],
               COLLAPSED), "no_progress"),
    "train far above val, val loss rising": (
        curves([1.0, 0.3, 0.1, 0.02], [1.0, 0.7, 0.9, 1.3], [0.5, 0.9, 0.98, 1.0],
               [0.5, 0.7, 0.7, 0.68]), "overfitting"),
    "both poor, small gap": (
        curves([1.1, 0.95, 0.9], [1.1, 0.97, 0.93], [0.35, 0.45, 0.5], [0.33, 0.42, 0.48]),
        "underfitting"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_curves_get_the_failure_mode_they_show(case: str) -> None:
    given, expected = CASES[case]
    diagnosis = diagnose(given)
    assert diagnosis.label == expected, diagnosis.reason
    assert diagnosis.reason


def test_an_imbalanced_but_correct_model_is_not_a_collapse() -> None:
    # 90% of validation images are class 0 and the model is right about every class.
    confusion = [[90, 0], [1, 9]]
    given = curves(HEALTHY.train_loss, HEALTHY.val_loss, HEALTHY.train_acc, HEALTHY.val_acc,
                   confusion)
    assert diagnose(given).label == "healthy"


def test_a_stricter_collapse_threshold_lets_a_mostly_one_class_model_pass() -> None:
    given, _ = CASES["one class predicted"]
    assert diagnose(given, Thresholds(collapse_share=0.99)).label != "majority_collapse"


def test_collapse_reason_names_the_class_and_the_fix() -> None:
    reason = diagnose(CASES["one class predicted"][0]).reason
    assert "class 0" in reason
    assert "class weighting" in reason


def test_threshold_outside_its_range_is_refused() -> None:
    with pytest.raises(ValueError, match="collapse_share=1.5"):
        Thresholds(collapse_share=1.5)

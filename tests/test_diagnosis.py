"""Per-trial diagnosis: each failure mode from curves that show it, notes that are not
failures (too early to tell, diverged after its best epoch), and healthy otherwise."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from doctor.diagnosis import Context, Curves, Thresholds, diagnose, in_top_quarter

TABLES = Path(__file__).resolve().parents[1] / "benchmarks" / "curves"

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
    diagnosis = diagnose(CASES["one class predicted"][0])
    assert "class 0" in diagnosis.reason
    assert "class weighting" in diagnosis.explained()


def test_messages_name_classes_by_their_folder_names() -> None:
    # An imbalanced two-class folder whose classes are called "one" and "zero".
    given = curves([0.7, 0.6, 0.55], [0.7, 0.65, 0.6], [0.9, 0.9, 0.9], [0.9, 0.9, 0.9],
                   [[0, 10], [0, 90]])
    given.classes = ["one", "zero"]
    diagnosis = diagnose(given)
    assert diagnosis.label == "majority_collapse"
    assert "class 'zero'" in diagnosis.reason
    assert "class 1" not in diagnosis.explained()


def recorded(table: str, index: int, epochs: int | None = None) -> Curves:
    """A trial's curves as the learning-curve recorder stored them (first ``epochs``)."""
    rows = [json.loads(line) for line in (TABLES / f"{table}.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["index"] == index)
    kept = row["epochs"][:epochs]
    return Curves([e["train/loss"] for e in kept], [e["val/loss"] for e in kept],
                  [e["train/acc"] for e in kept], [e["val/acc"] for e in kept],
                  classes=[str(i) for i in range(10)])


@pytest.mark.parametrize("ending", ["ran", "early", "pruned"])
def test_a_recorded_competitive_curve_rising_after_its_best_epoch_is_no_failure(
        ending: str) -> None:
    # Imbalanced digits, row 29: val F1 0.933, in the table's best quarter; its val loss
    # bottoms out at epoch 6 (0.228) and ends 37% higher (0.312).
    given = recorded("digits_imbalanced", 29)
    assert given.val_loss[-1] > 1.3 * min(given.val_loss)
    diagnosis = diagnose(given, context=Context(ending, top_quarter=True))
    assert not diagnosis.failure, diagnosis.explained()


def test_a_rise_after_a_good_best_epoch_is_diverged_after_best_not_a_failure() -> None:
    # Learned to 0.92 by epoch 2, then the training loss climbed back: too high an LR.
    given = curves([0.9, 0.4, 0.5, 0.9], [0.5, 0.3, 0.6, 1.2], [0.7, 0.9, 0.85, 0.5],
                   [0.85, 0.92, 0.8, 0.45])
    diagnosis = diagnose(given, context=Context("early"))
    assert diagnosis.label == "diverged_after_best"
    assert "best epoch 2" in diagnosis.reason
    assert not diagnosis.failure
    # the same curves in a trial pruned for trailing the field, answering badly: a failure
    assert diagnose(given, context=Context("pruned")).label == "diverged"


def test_a_bump_as_a_stage_unfreezes_is_not_divergence() -> None:
    # Recorded: gradual unfreezing (digits row 24), cut after epoch 4 as a pruner would:
    # both losses jump the epoch a stage unfreezes while validation accuracy holds at 0.93.
    given = recorded("digits", 24, epochs=4)
    assert given.train_loss[-1] > 1.5 * min(given.train_loss)
    diagnosis = diagnose(given, context=Context("pruned"))
    assert not diagnosis.failure, diagnosis.explained()


def test_a_loss_that_rose_and_fell_back_did_move() -> None:
    # Recorded: a slow starter (imbalanced digits row 19) cut after epoch 3: its training
    # loss went 2.43, 2.88, 2.54 while val accuracy rose 0.04, 0.11, 0.45.
    diagnosis = diagnose(recorded("digits_imbalanced", 19, epochs=3), context=Context("pruned"))
    assert "barely moved" not in diagnosis.reason
    assert diagnosis.label == "too_early", diagnosis.reason  # the val loss still falls steeply


def test_the_studys_best_quarter_is_never_labelled_diverged() -> None:
    never_learned = CASES["val loss rising from the start"][0]
    assert diagnose(never_learned).label == "diverged"
    diagnosis = diagnose(never_learned, context=Context("ran", top_quarter=True))
    assert diagnosis.label == "diverged_after_best"
    assert "best quarter" in diagnosis.reason


def test_a_pruned_chance_level_trial_is_not_healthy_but_too_early() -> None:
    # Full fine-tune at a high LR, pruned after epoch 2: F1 0.07, val loss falling steeply.
    given = curves([2.4, 2.2], [5.73, 2.10], [0.1, 0.12], [0.07, 0.09])
    given.confusion = []
    given.classes = [str(i) for i in range(10)]
    diagnosis = diagnose(given, context=Context("pruned"))
    assert diagnosis.label == "too_early"
    assert not diagnosis.failure
    assert "pruned after 2 epoch" in diagnosis.reason
    assert "chance 0.10" in diagnosis.reason


def test_at_chance_is_too_early_while_falling_steeply_and_no_progress_once_flat() -> None:
    ten = [str(i) for i in range(10)]
    falling = curves([2.3, 2.2, 2.0, 1.9], [3.0, 2.6, 2.3, 1.9], [0.1, 0.1, 0.12, 0.13],
                     [0.1, 0.11, 0.1, 0.12], [])
    falling.classes = ten
    assert diagnose(falling).label == "too_early"
    flat = curves([2.3, 2.2, 2.0, 1.9], [2.31, 2.30, 2.30, 2.29], [0.1, 0.1, 0.12, 0.13],
                  [0.1, 0.11, 0.1, 0.12], [])
    flat.classes = ten
    diagnosis = diagnose(flat)
    assert diagnosis.label == "no_progress"
    assert "at chance" in diagnosis.reason


def test_a_large_persistent_gap_is_overfitting_while_val_loss_still_falls() -> None:
    # 6 training images per class, full fine-tune, no regularization: val 0.43.
    given = curves([2.0, 1.2, 0.5, 0.2, 0.1], [1.9, 1.8, 1.75, 1.72, 1.70],
                   [0.5, 0.8, 0.95, 1.0, 1.0], [0.30, 0.38, 0.41, 0.42, 0.43],
                   [[4, 3, 3], [3, 5, 2], [2, 4, 4]])
    diagnosis = diagnose(given)
    assert diagnosis.label == "overfitting"
    assert "1.00 vs validation 0.43" in diagnosis.reason
    # a gap seen in one epoch only, with the val loss falling, is not (yet) overfitting
    brief = curves([2.0, 1.2, 0.5], [1.9, 1.0, 0.6], [0.5, 0.6, 0.95], [0.5, 0.7, 0.78])
    assert diagnose(brief).label == "healthy"


def test_too_few_epochs_are_too_early_to_judge() -> None:
    two = curves(HEALTHY.train_loss[:2], HEALTHY.val_loss[:2], HEALTHY.train_acc[:2],
                 HEALTHY.val_acc[:2])
    diagnosis = diagnose(two, context=Context("early"))
    assert diagnosis.label == "too_early"
    assert "stopped after 2 epoch" in diagnosis.reason
    assert diagnose(two, Thresholds(min_epochs=2)).label != "too_early"


@pytest.mark.parametrize(("value", "others", "expected"), [
    (0.9, [0.5, 0.6, 0.7], True),     # 1st of 4: the quarter is 1 trial
    (0.7, [0.5, 0.6, 0.9], False),    # 2nd of 4
    (0.7, [0.5, 0.6, 0.9, 0.1, 0.2, 0.3, 0.4], True),  # 2nd of 8: the quarter is 2
    (0.9, [0.9, 0.5, 0.4], True),     # a tie counts in its favour
    (math.nan, [0.5], False),
])
def test_the_best_quarter_of_a_studys_complete_trials(value, others, expected) -> None:
    assert in_top_quarter(value, others, maximize=True) is expected
    assert in_top_quarter(-value, [-v for v in others], maximize=False) is expected


def test_threshold_outside_its_range_is_refused() -> None:
    with pytest.raises(ValueError, match="collapse_share=1.5"):
        Thresholds(collapse_share=1.5)

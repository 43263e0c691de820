"""Stagnation pruning and the direction of reported values, decided in real Optuna studies.

Trials here report a validation loss per epoch, as plateau's trials do, while the study
may maximize its objective (F1). Studies live in SQLite files under ``tmp_path``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
import pytest
from optuna.pruners import BasePruner, MedianPruner
from optuna.study import StudyDirection

from sweeps.ledger import frozen_trial, trial_id
from sweeps.metrics import aligned, is_negated, monitor_direction
from sweeps.pruning import ATTR_MAX_EPOCHS, StagnationPruner, judge_epoch

MAX, MIN = StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE
NAN, INF = math.nan, math.inf

#: Completed trials whose loss keeps falling, with their final objective (F1 or loss).
GOOD = [
    ([1.0, 0.6, 0.4, 0.3, 0.25, 0.22, 0.2, 0.19], 0.80),
    ([0.9, 0.5, 0.35, 0.28, 0.24, 0.21, 0.19, 0.18], 0.85),
    ([1.1, 0.7, 0.45, 0.32, 0.27, 0.23, 0.21, 0.2], 0.78),
]
STAGNANT_HIGH = [1.5, 1.5, 1.5, 1.5]
IMPROVING = [1.0, 0.6, 0.4, 0.3]
#: Lower loss than every good trial at every epoch: the best trial of the study.
BEST = [0.2, 0.15, 0.1, 0.08]

Report = Callable[[float, StudyDirection], float]

#: Optuna's median rule and plateau's pruner built on it: a test runs with each.
EITHER_PRUNER = pytest.mark.parametrize(
    "pruner",
    [MedianPruner(n_startup_trials=2, n_warmup_steps=1),
     StagnationPruner(patience=1, n_startup_trials=2)],
    ids=["median", "stagnation"],
)


def raw(loss: float, direction: StudyDirection) -> float:
    """Report the loss as is, whatever the study's direction (the mistake ``aligned`` fixes)."""
    return loss


@pytest.fixture
def make_study(tmp_path: Path) -> Callable[..., optuna.Study]:
    """``make_study(direction, pruner)``: a fresh study in ``tmp_path``'s SQLite file."""
    names = iter(range(100))

    def make(direction: str, pruner: BasePruner) -> optuna.Study:
        return optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}",
                                   study_name=f"study-{next(names)}", direction=direction,
                                   pruner=pruner)

    return make


def complete_good_trials(study: optuna.Study, count: int, report: Report = aligned) -> None:
    """Run ``count`` of the GOOD trials to COMPLETE, reporting their losses via ``report``."""
    for losses, f1 in GOOD[:count]:
        trial = study.ask()
        for step, loss in enumerate(losses):
            trial.report(report(loss, study.direction), step)
        objective = f1 if study.direction == MAX else losses[-1]
        study.tell(trial, objective)


def prune_decisions(study: optuna.Study, losses: Sequence[float],
                    report: Report = aligned) -> list[bool]:
    """``trial.should_prune()`` after each epoch of a new trial reporting ``losses``."""
    trial = study.ask()
    decisions = []
    for step, loss in enumerate(losses):
        trial.report(report(loss, study.direction), step)
        decisions.append(trial.should_prune())
    return decisions


# -- aligned ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("loss", "direction", "expected"),
    [(1.5, MAX, -1.5), (1.5, MIN, 1.5), (0.0, MAX, 0.0), (-2.0, MAX, 2.0), (-2.0, MIN, -2.0)],
)
def test_aligned_negates_loss_only_when_the_study_maximizes(
    loss: float, direction: StudyDirection, expected: float,
) -> None:
    assert aligned(loss, direction) == expected


def test_aligned_makes_lower_loss_the_better_value_in_either_direction() -> None:
    for direction in (MAX, MIN):
        better, worse = aligned(0.2, direction), aligned(0.9, direction)
        assert (better > worse) == (direction == MAX)


@pytest.mark.parametrize(("monitor", "direction", "negated"), [
    ("val/loss", MAX, True), ("val/loss", MIN, False), ("val/f1_macro", MAX, False),
    ("val/f1_macro", MIN, True), ("val/acc", MAX, False), ("val/balanced_acc", MAX, False),
])
def test_a_monitored_metric_is_negated_only_against_the_studys_direction(
        monitor: str, direction: StudyDirection, negated: bool) -> None:
    assert is_negated(monitor, direction) is negated
    assert aligned(0.7, direction, monitor_direction(monitor)) == (-0.7 if negated else 0.7)


@EITHER_PRUNER
def test_monitored_f1_in_maximize_study_prunes_worst_trial_and_keeps_best(
    make_study: Callable[..., optuna.Study], pruner: BasePruner,
) -> None:
    """hydra.sweeper.monitor=val/f1_macro: F1 gets better upwards, so it is reported as is
    (negating it like a loss would prune the best trials)."""
    study = make_study("maximize", pruner)

    def f1(loss: float, direction: StudyDirection) -> float:  # a stand-in F1 per epoch
        return aligned(1.0 - loss / 3, direction, monitor_direction("val/f1_macro"))

    complete_good_trials(study, 3, report=f1)
    assert not any(prune_decisions(study, BEST, report=f1))
    assert any(prune_decisions(study, STAGNANT_HIGH, report=f1))


# -- stagnates -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("values", "direction", "patience", "min_delta", "expected"),
    [
        # patience 1, no tolerance
        ([1.0, 1.0], MAX, 1, 0.0, True),
        ([1.0, 1.25], MAX, 1, 0.0, False),
        ([1.0, 0.5], MAX, 1, 0.0, True),
        ([1.0, 1.0], MIN, 1, 0.0, True),
        ([1.0, 0.75], MIN, 1, 0.0, False),
        ([1.0, 2.0], MIN, 1, 0.0, True),
        # min_delta boundary: an improvement of exactly min_delta does not count
        ([1.0, 1.5], MAX, 1, 0.5, True),
        ([1.0, 1.75], MAX, 1, 0.5, False),
        ([1.0, 0.5], MIN, 1, 0.5, True),
        ([1.0, 0.25], MIN, 1, 0.5, False),
        ([-1.0, -0.5], MAX, 1, 0.5, True),
        ([-1.0, -0.25], MAX, 1, 0.5, False),
        # patience 2: the best of the last two against the best before them
        ([1.0, 2.0, 1.5, 1.75], MAX, 2, 0.0, True),
        ([1.0, 2.0, 1.5, 2.5], MAX, 2, 0.0, False),
        ([1.0, 2.0, 2.0], MAX, 2, 0.0, False),
        ([3.0, 2.0, 2.5, 2.25], MIN, 2, 0.0, True),
        ([3.0, 2.0, 2.5, 1.5], MIN, 2, 0.0, False),
        ([3.0, 2.0, 2.5, 1.75], MIN, 2, 0.5, True),
        ([3.0, 2.0, 2.5, 1.25], MIN, 2, 0.5, False),
        # not more than patience values: no verdict yet
        ([], MAX, 1, 0.0, False),
        ([1.0], MAX, 1, 0.0, False),
        ([1.0, 1.0], MAX, 2, 0.0, False),
        ([1.0, 1.0, 1.0], MAX, 2, 0.0, True),
        # NaN and inf are ignored
        ([1.0, NAN, 1.0], MAX, 1, 0.0, True),
        ([1.0, NAN, 2.0], MAX, 1, 0.0, False),
        ([NAN, NAN, 1.0], MAX, 1, 0.0, False),
        ([1.0, 2.0, NAN], MAX, 1, 0.0, False),
        ([2.0, INF, 1.0], MAX, 1, 0.0, True),
        ([2.0, -INF, 1.0], MIN, 1, 0.0, False),
        ([1.0, NAN, NAN], MIN, 1, 0.0, False),
    ],
)
def test_stagnates_when_last_patience_values_do_not_beat_best_before_by_min_delta(
    values: list[float], direction: StudyDirection, patience: int, min_delta: float,
    expected: bool,
) -> None:
    pruner = StagnationPruner(patience=patience, min_delta=min_delta, n_warmup_steps=0)

    assert pruner.stagnates(values, direction) is expected


@pytest.mark.parametrize(("count", "expected"), [(3, False), (4, True), (5, True)])
def test_stagnates_needs_more_than_n_warmup_steps_values(count: int, expected: bool) -> None:
    pruner = StagnationPruner(patience=1, n_warmup_steps=3)

    assert pruner.stagnates([1.0] * count, MAX) is expected


# -- prune, through a real study -------------------------------------------------------------

@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_stagnating_trial_worse_than_median_is_pruned(
    make_study: Callable[..., optuna.Study], direction: str,
) -> None:
    study = make_study(direction, StagnationPruner(patience=2, n_startup_trials=2,
                                                   only_stagnating=True))
    complete_good_trials(study, 3)

    # epochs 0-1: too few values for patience 2; epoch 2 on: flat and far below the median
    assert prune_decisions(study, STAGNANT_HIGH) == [False, False, True, True]


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_trailing_trial_is_pruned_after_warmup_without_waiting_to_stagnate(
    make_study: Callable[..., optuna.Study], direction: str,
) -> None:
    study = make_study(direction, StagnationPruner(patience=2, n_startup_trials=2))
    complete_good_trials(study, 3)

    # epoch 0 is the warm-up; from epoch 1 the trial trails every good trial
    assert prune_decisions(study, STAGNANT_HIGH) == [False, True, True, True]


@pytest.mark.parametrize(("only_stagnating", "expected"),
                         [(False, [False, True, True, True]), (True, [False] * 4)])
def test_trailing_but_improving_trial_is_spared_only_when_pruning_only_stagnating(
    make_study: Callable[..., optuna.Study], only_stagnating: bool, expected: list[bool],
) -> None:
    study = make_study("maximize", StagnationPruner(patience=2, n_startup_trials=2,
                                                    only_stagnating=only_stagnating))
    complete_good_trials(study, 3)

    # a slow starter: improving every epoch, yet behind the median of the good trials
    assert prune_decisions(study, [2.0, 1.6, 1.2, 0.9]) == expected


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_improving_trial_is_not_pruned(
    make_study: Callable[..., optuna.Study], direction: str,
) -> None:
    study = make_study(direction, StagnationPruner(patience=2, n_startup_trials=2))
    complete_good_trials(study, 3)

    assert prune_decisions(study, IMPROVING) == [False, False, False, False]


def test_pruner_sees_trial_through_frozen_trial_in_maximize_study(
    make_study: Callable[..., optuna.Study],
) -> None:
    pruner = StagnationPruner(patience=2, n_startup_trials=2)
    study = make_study("maximize", pruner)
    complete_good_trials(study, 3)
    stagnant, improving = study.ask(), study.ask()
    for step, (bad, good) in enumerate(zip(STAGNANT_HIGH, IMPROVING, strict=True)):
        stagnant.report(aligned(bad, study.direction), step)
        improving.report(aligned(good, study.direction), step)

    assert pruner.prune(study, frozen_trial(study, trial_id(stagnant)))
    assert not pruner.prune(study, frozen_trial(study, trial_id(improving)))


@EITHER_PRUNER
def test_raw_loss_in_maximize_study_prunes_best_trial_and_keeps_worst(
    make_study: Callable[..., optuna.Study], pruner: BasePruner,
) -> None:
    # Why `aligned` exists: a maximize study takes a larger reported value as better, so raw
    # losses turn every comparison around.
    study = make_study("maximize", pruner)
    complete_good_trials(study, 3, report=raw)

    assert any(prune_decisions(study, BEST, report=raw))
    assert not any(prune_decisions(study, STAGNANT_HIGH, report=raw))


@EITHER_PRUNER
def test_aligned_loss_in_maximize_study_prunes_worst_trial_and_keeps_best(
    make_study: Callable[..., optuna.Study], pruner: BasePruner,
) -> None:
    study = make_study("maximize", pruner)
    complete_good_trials(study, 3, report=aligned)

    assert not any(prune_decisions(study, BEST))
    assert any(prune_decisions(study, STAGNANT_HIGH))


def test_stagnating_trial_better_than_median_is_not_pruned(
    make_study: Callable[..., optuna.Study],
) -> None:
    pruner = StagnationPruner(patience=2, n_startup_trials=2)
    study = make_study("maximize", pruner)
    complete_good_trials(study, 3)
    trial = study.ask()
    for step, loss in enumerate([0.2, 0.1, 0.1, 0.1]):  # best of the study, then flat
        trial.report(aligned(loss, study.direction), step)
    frozen = frozen_trial(study, trial_id(trial))
    values = [frozen.intermediate_values[s] for s in sorted(frozen.intermediate_values)]

    assert pruner.stagnates(values, study.direction) is True
    assert not pruner.prune(study, frozen)


def test_nothing_is_pruned_before_n_startup_trials_complete(
    make_study: Callable[..., optuna.Study],
) -> None:
    study = make_study("maximize", StagnationPruner(patience=2, n_startup_trials=3))
    complete_good_trials(study, 2)

    assert not any(prune_decisions(study, STAGNANT_HIGH))

    complete_good_trials(study, 1)
    assert any(prune_decisions(study, STAGNANT_HIGH))


def test_nothing_is_pruned_without_completed_trials(
    make_study: Callable[..., optuna.Study],
) -> None:
    study = make_study("maximize", StagnationPruner(patience=1, n_startup_trials=0))

    assert not any(prune_decisions(study, STAGNANT_HIGH))


@pytest.mark.parametrize("n_warmup_steps", [1, 3, 5])
def test_nothing_is_pruned_within_n_warmup_steps(
    make_study: Callable[..., optuna.Study], n_warmup_steps: int,
) -> None:
    pruner = StagnationPruner(patience=1, n_startup_trials=2, n_warmup_steps=n_warmup_steps)
    study = make_study("maximize", pruner)
    complete_good_trials(study, 3)

    decisions = prune_decisions(study, [1.5] * 8)

    assert decisions.index(True) == n_warmup_steps


# -- constructor -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patience": 0}, "patience=0"),
        ({"patience": -3}, "patience=-3"),
        ({"min_delta": -0.1}, "min_delta=-0.1"),
        ({"patience": 2, "min_delta": -1.0}, "min_delta=-1.0"),
    ],
)
def test_invalid_pruner_setting_raises_value_error_echoing_it(
    kwargs: dict[str, float], match: str,
) -> None:
    with pytest.raises(ValueError, match=match):
        StagnationPruner(**kwargs)  # type: ignore[arg-type]


def test_smallest_valid_settings_are_accepted() -> None:
    pruner = StagnationPruner(patience=1, min_delta=0.0)

    assert pruner.stagnates([1.0, 1.0], MAX) is True


# -- shares of the trial's epoch budget -----------------------------------------------------------

@pytest.mark.parametrize(("max_epochs", "expected"), [
    (None, [False, True, True, True, True, True]),  # no budget known: n_warmup_steps only
    (6, [False, False, False, True, True, True]),  # half of 6 epochs: decisions from epoch 3
    (10, [False] * 5 + [True]),  # half of 10: from epoch 5
])
def test_a_trailing_trial_is_spared_for_the_warmup_share_of_its_epochs(
    make_study: Callable[..., optuna.Study], max_epochs: int | None, expected: list[bool],
) -> None:
    """A slow starter (full fine-tuning, a warm-up) trails the field early: it keeps its
    first half of the epochs, then faces the median at each epoch like any trial."""
    study = make_study("maximize", StagnationPruner(patience=2, n_startup_trials=2,
                                                    warmup_share=0.5))
    complete_good_trials(study, 3)
    trial = study.ask()
    if max_epochs:
        trial.set_user_attr(ATTR_MAX_EPOCHS, max_epochs)
    decisions = []
    for step in range(6):
        trial.report(aligned(3.0, study.direction), step)
        decisions.append(trial.should_prune())
    assert decisions == expected


@pytest.mark.parametrize(("max_epochs", "patience"), [(None, 2), (4, 2), (8, 2), (12, 3),
                                                      (20, 5)])
def test_patience_is_at_least_its_share_of_the_epochs(max_epochs: int | None,
                                                      patience: int) -> None:
    pruner = StagnationPruner(patience=2, n_warmup_steps=0, patience_share=0.25)
    assert pruner.patience(max_epochs) == patience
    best_then_flat = [1.0] + [0.5] * patience
    assert pruner.stagnates(best_then_flat, MAX, max_epochs)
    assert not pruner.stagnates(best_then_flat[:-1], MAX, max_epochs)


@pytest.mark.parametrize("share", [-0.1, 1.0, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="share of the epochs"):
        StagnationPruner(warmup_share=share)


@pytest.mark.parametrize(("lead", "expected"), [(0.01, [False] * 4),
                                                (0.0, [False] * 4),  # a tie leads too
                                                (-0.01, [False, True, True, True])])
def test_a_trial_leading_by_the_objective_is_not_pruned_for_its_loss(
    make_study: Callable[..., optuna.Study], lead: float, expected: list[bool],
) -> None:
    """The loss and the objective can disagree: a trial whose F1 so far beats every complete
    trial's is the model the user came for, whatever its val loss against the median."""
    study = make_study("maximize", StagnationPruner(patience=2, n_startup_trials=2))
    complete_good_trials(study, 3)
    trial = study.ask()
    decisions = []
    for step, loss in enumerate(STAGNANT_HIGH):
        judge_epoch(study, trial, step, aligned(loss, study.direction), [], "val/loss",
                    best_so_far=study.best_value + lead)
        decisions.append(trial.should_prune())
    assert decisions == expected


# -- reasons ---------------------------------------------------------------------------------

def judge_all(study: optuna.Study, losses: Sequence[float], max_epochs: int | None = None):
    """Run a new trial through :func:`judge_epoch` until it is stopped; its Stop or None."""
    trial, reported = study.ask(), []
    for step, loss in enumerate(losses):
        value = aligned(loss, study.direction)
        stop = judge_epoch(study, trial, step, value, list(reported), "val/loss", max_epochs)
        reported.append(value)
        if stop is not None:
            return stop
    return None


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_a_prune_reason_gives_the_rule_and_its_numbers_in_the_metrics_units(
        make_study: Callable[..., optuna.Study], direction: str) -> None:
    study = make_study(direction, StagnationPruner(patience=2, n_startup_trials=2))
    complete_good_trials(study, 3)
    stop = judge_all(study, STAGNANT_HIGH, max_epochs=8)
    assert stop is not None
    assert stop.pruned
    # epoch 2 (index 1) is the first after the warm-up; the good trials' losses there are
    # 0.6, 0.5 and 0.7: their median 0.6, shown as a loss whatever the study's direction
    assert stop.reason == ("val/loss 1.5 at epoch 2 of 8 vs the median 0.6 of 3 complete "
                           "trials (StagnationPruner after 1 warm-up epochs)")


def test_a_completed_early_reason_gives_patience_best_and_epochs(
        make_study: Callable[..., optuna.Study]) -> None:
    study = make_study("maximize", StagnationPruner(patience=2, n_startup_trials=2))
    complete_good_trials(study, 3)
    # better than every good trial at every epoch, then flat from epoch 3
    stop = judge_all(study, [0.2, 0.15, 0.1, 0.12, 0.11, 0.1], max_epochs=6)
    assert stop is not None
    assert not stop.pruned
    assert stop.reason == ("val/loss not improved by > 0 for 2 epochs at epoch 5 of 6 (best "
                           "0.1 at epoch 3): competitive, completed early")


def test_stagnating_at_the_last_epoch_is_no_early_stop(
        make_study: Callable[..., optuna.Study]) -> None:
    # the same competitive, flattening curve with a budget of 5 epochs: it stagnates at its
    # last epoch, where stopping saves nothing; it ran its budget, not "completed early"
    study = make_study("maximize", StagnationPruner(patience=2, n_startup_trials=2))
    complete_good_trials(study, 3)
    assert judge_all(study, [0.2, 0.15, 0.1, 0.12, 0.11], max_epochs=5) is None

"""The doctor's label of every trial, read again against the study's final field.

A trial is diagnosed when it ends, against the trials complete by then; its standing can
change as later trials finish (the best quarter of 4 complete trials is 1 trial, of 12 it is
3). The end of a sweep therefore diagnoses each trial once more from the curves it stored
(:data:`sweeps.ledger.ATTR_CURVES`), with how it ended and where it ranks among all complete
trials, so the table, the report and the MLflow tags never contradict the results. A trial
without stored curves (a study from an older plateau) keeps the label it was given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from doctor.diagnosis import Context, Curves, Diagnosis, diagnose, in_top_quarter
from doctor.settings import Thresholds
from errors import one_line
from sweeps import ledger

log = logging.getLogger(__name__)


def thresholds_of(config: DictConfig | None) -> Thresholds:
    """``doctor.thresholds`` of the sweep's config (defaults where it has none; a value the
    trials would have refused only warns here: the study's labels are not worth a crash)."""
    values = OmegaConf.select(config, "doctor.thresholds") if config is not None else None
    try:
        return Thresholds(**(OmegaConf.to_container(values) if values else {}))  # type: ignore
    except (TypeError, ValueError) as err:
        log.warning("doctor.thresholds: %s; the report uses the defaults", one_line(err))
        return Thresholds()


def stored_curves(trial: FrozenTrial) -> Curves | None:
    """The curves a trial stored when it ended, with its confusion matrix and class names."""
    series = trial.user_attrs.get(ledger.ATTR_CURVES)
    if not isinstance(series, Mapping):
        return None
    values: dict[str, Any] = {name: [float(v) for v in series.get(name) or []]
                              for name in Curves.SERIES}
    return Curves(**values, confusion=list(trial.user_attrs.get(ledger.ATTR_CONFUSION) or []),
                  classes=[str(c) for c in trial.user_attrs.get(ledger.ATTR_CLASSES) or []])


def ending_of(trial: FrozenTrial) -> str:
    """How a finished trial's fit ended, as :class:`doctor.diagnosis.Context` names it."""
    if trial.state == TrialState.PRUNED:
        return "pruned"
    return "early" if trial.user_attrs.get(ledger.ATTR_PRUNE_REASON) else "ran"


def final_labels(trials: Sequence[FrozenTrial], direction: StudyDirection,
                 thresholds: Thresholds | None = None) -> dict[int, Diagnosis]:
    """Each diagnosed trial's label by trial number, against the final field."""
    complete = {t.number: float(t.value) for t in trials
                if t.state == TrialState.COMPLETE and t.value is not None}
    maximize = direction == StudyDirection.MAXIMIZE
    labels = {}
    for trial in trials:
        curves = stored_curves(trial)
        if curves is None:
            label = trial.user_attrs.get(ledger.ATTR_DIAGNOSIS)
            if label:
                labels[trial.number] = Diagnosis(
                    str(label), str(trial.user_attrs.get(ledger.ATTR_DIAGNOSIS_REASON, "")))
            continue
        top = trial.number in complete and in_top_quarter(
            complete[trial.number], [v for n, v in complete.items() if n != trial.number],
            maximize)
        labels[trial.number] = diagnose(curves, thresholds, Context(ending_of(trial), top))
    return labels


def changed(trials: Sequence[FrozenTrial], labels: Mapping[int, Diagnosis]) -> list[FrozenTrial]:
    """The trials whose final label differs from the one they were given when they ended."""
    return [t for t in trials if t.number in labels
            and labels[t.number].label != t.user_attrs.get(ledger.ATTR_DIAGNOSIS)]

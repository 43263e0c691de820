"""The post-sweep report: what mattered in a study, and how its trials failed.

Computed from the study alone (so it can be written again for an existing study): knob
importances (Optuna's fANOVA, seeded), the objective by choice of each categorical knob,
the per-epoch values the trials reported, the diagnosis of each trial, and the best trial's
per-class recall. :func:`sweeps.report.publish.publish` writes it as PNGs and
``report.md`` (see :mod:`sweeps.report.files`) to a folder and to the study's MLflow parent
run; :func:`sweeps.report.publish.report_existing` does so on demand for a study in a
storage.

Only trials that ended on their own count: trials cut off by a stopped sweep (FAIL with
``interrupted``, their params re-queued) and trials still running are left out.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from optuna.search_space import intersection_search_space
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from doctor.diagnosis import FAILURES, LABELS, Diagnosis, fix_for
from doctor.settings import Thresholds
from errors import one_line
from sweeps import ledger
from sweeps.objectives import first_objective
from sweeps.report import reruns
from sweeps.report.diagnoses import final_labels
from sweeps.report.pareto import ParetoFront, front_of
from sweeps.report.reruns import RerunTable

log = logging.getLogger(__name__)

#: fANOVA fits a random forest: seeded, the same study always gives the same importances.
IMPORTANCE_SEED = 0
TOP_KNOBS = 3


@dataclass(frozen=True)
class ChoiceStats:
    """The objective of the COMPLETE trials that took one choice of a categorical knob."""

    choice: str
    values: list[float]
    mean: float | None
    best: float | None
    pruned: int
    failed: int


@dataclass(frozen=True)
class ClassRecall:
    """Recall of one class in the best trial's last validation; None when it had no image."""

    name: str
    recall: float | None
    support: int


@dataclass
class StudyReport:
    """Everything the report shows; ``folder`` and ``run_id`` are set when it is published."""

    study_name: str
    direction: StudyDirection
    objective: str
    monitor: str
    trials: list[FrozenTrial]
    importances: dict[str, float]
    importance_note: str
    choices: dict[str, list[ChoiceStats]]
    #: each diagnosed trial's label against the final field (:mod:`sweeps.report.diagnoses`)
    labels: dict[int, Diagnosis]
    best: FrozenTrial | None
    recall: list[ClassRecall]
    recall_note: str
    #: set when the importances rest on fewer complete trials than searched knobs
    importance_warning: str = ""
    #: the top-k reruns' configs over seeds (:mod:`sweeps.report.reruns`); ``best`` is then
    #: the best mean's search trial
    reruns: RerunTable | None = None
    #: a multi-objective study's front (the other sections read its first objective)
    pareto: ParetoFront | None = None
    folder: Path | None = field(default=None, compare=False)
    run_id: str | None = field(default=None, compare=False)

    @property
    def maximize(self) -> bool:
        return self.direction == StudyDirection.MAXIMIZE

    @property
    def base(self) -> FrozenTrial | None:
        """The base trial (the config as given), once complete."""
        return base_trial(self.trials)

    @property
    def gain(self) -> str:
        """How the best trial compares with the base trial, in words."""
        return gain_over_base(self.best, self.base, self.maximize)

    @property
    def top_knobs(self) -> list[str]:
        return list(self.importances)[:TOP_KNOBS]

    @property
    def diagnoses(self) -> Counter[str]:
        """How many trials got each label."""
        return Counter(d.label for d in self.labels.values())

    @property
    def dominant_failure(self) -> tuple[str, int] | None:
        """The most common failure (:data:`doctor.diagnosis.FAILURES`: not ``healthy`` nor a
        note such as ``too_early``) and its count; ties go by the order of LABELS."""
        failures = {label: n for label, n in self.diagnoses.items() if label in FAILURES}
        if not failures:
            return None
        rank = {label: i for i, label in enumerate(LABELS)}
        label = min(failures, key=lambda k: (-failures[k], rank.get(k, len(LABELS))))
        return label, failures[label]

    def failure_line(self) -> str:
        """``no_progress (2 of 6 diagnosed trials) -- fix: ...``: the most common failure with
        its fix, or why there is none."""
        diagnosed = len(self.labels)
        dominant = self.dominant_failure
        if dominant is None:
            return f"none (no failure among {diagnosed} diagnosed trials)" if diagnosed \
                else "none (no trial was diagnosed)"
        fix = fix_for(dominant[0])
        return f"{dominant[0]} ({dominant[1]} of {diagnosed} diagnosed trials) -- fix: {fix}"

    def best_line(self) -> str:
        """``trial 6: healthy (validation accuracy 0.99, ...)``, or empty."""
        diagnosis = self.best_label
        if self.best is None or diagnosis is None:
            return ""
        return f"trial {self.best.number}: {diagnosis.label} ({diagnosis.reason})"

    @property
    def best_label(self) -> Diagnosis | None:
        """The best trial's own diagnosis."""
        return None if self.best is None else self.labels.get(self.best.number)


def base_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The study's complete base trial (:data:`sweeps.ledger.ROLE_BASE`), if any."""
    return next((t for t in trials if t.state == TrialState.COMPLETE
                 and t.user_attrs.get(ledger.ATTR_ROLE) == ledger.ROLE_BASE), None)


def signed_gain(best: float, base: float, maximize: bool) -> float:
    """best - base, signed so that positive is better in the study's direction."""
    return (best - base) * (1 if maximize else -1)


def gain_over_base(best: FrozenTrial | None, base: FrozenTrial | None, maximize: bool) -> str:
    """``+0.0123 over the base trial's 0.9557 (trial 0)``: best - base, signed so that
    positive is better in the study's direction; empty without both trials."""
    if best is None or base is None or best.value is None or base.value is None:
        return ""
    gain = signed_gain(best.value, base.value, maximize)
    if best.number == base.number:
        return f"the base trial is the best ({base.value:.4f}, trial {base.number})"
    return f"{gain:+.4f} over the base trial's {base.value:.4f} (trial {base.number})"


def importances(study: optuna.Study, complete: list[FrozenTrial]) -> tuple[dict[str, float], str]:
    """Normalized fANOVA importances of the knobs every complete trial has, most important
    first; empty with the reason when they cannot be computed. The note names the knobs left
    out (conditional ones, like ``freeze.depth``, are not in every trial)."""
    if len(complete) < 2:
        return {}, f"{len(complete)} complete trial(s): importances need at least 2"
    space = intersection_search_space(complete)
    varied = [name for name in space if len({repr(t.params[name]) for t in complete}) > 1]
    if not varied:
        return {}, "no knob took more than one value across the complete trials"
    if len({t.value for t in complete}) == 1:
        return {}, "every complete trial has the same objective value"
    try:
        found = get_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=IMPORTANCE_SEED), params=varied)
    except Exception as err:  # the report is still written, saying why
        log.warning("knob importances not computed: %s", one_line(err))
        return {}, f"the importance evaluator failed ({one_line(err, 200)})"
    left_out = sorted({name for t in complete for name in t.params} - set(varied))
    note = f"left out (one value, or not in every complete trial): {', '.join(left_out)}" \
        if left_out else ""
    return dict(sorted(found.items(), key=lambda item: -item[1])), note


def importance_warning(found: dict[str, float], complete: list[FrozenTrial],
                       trials: list[FrozenTrial]) -> str:
    """Why a ranking of knobs should not be trusted: fewer complete trials than the study
    searched knobs (a forest fit on them ranks noise). Empty when there is no ranking."""
    searched = {name for t in trials for name in t.params}
    if not found or len(complete) >= len(searched):
        return ""
    return (f"{len(complete)} complete trials for {len(searched)} searched knobs are too few "
            "to rank the knobs: read the importances as a hint, and run more trials "
            "(hydra.sweeper.n_trials) before trusting them")


def _categorical(trials: list[FrozenTrial]) -> dict[str, CategoricalDistribution]:
    found: dict[str, CategoricalDistribution] = {}
    for trial in trials:
        for name, dist in trial.distributions.items():
            if isinstance(dist, CategoricalDistribution) and name not in found:
                found[name] = dist
    return found


def choice_stats(trials: list[FrozenTrial], maximize: bool) -> dict[str, list[ChoiceStats]]:
    """Per categorical knob, one row per choice (in the distribution's order)."""
    table: dict[str, list[ChoiceStats]] = {}
    for name, dist in _categorical(trials).items():
        rows = []
        for choice in dist.choices:
            took = [t for t in trials if name in t.params and t.params[name] == choice]
            values = [float(t.value) for t in took
                      if t.state == TrialState.COMPLETE and t.value is not None]
            best = (max(values) if maximize else min(values)) if values else None
            rows.append(ChoiceStats(
                str(choice), values, sum(values) / len(values) if values else None, best,
                sum(t.state == TrialState.PRUNED for t in took),
                sum(t.state == TrialState.FAIL for t in took)))
        table[name] = rows
    return table


def class_recall(trial: FrozenTrial | None) -> tuple[list[ClassRecall], str]:
    """Per-class recall from the trial's stored confusion matrix (rows: true class)."""
    if trial is None:
        return [], "no complete trial"
    confusion = trial.user_attrs.get(ledger.ATTR_CONFUSION)
    if not confusion:
        return [], f"trial {trial.number} has no stored validation confusion matrix"
    names = list(trial.user_attrs.get(ledger.ATTR_CLASSES) or [])
    if len(names) != len(confusion):
        names = [str(i) for i in range(len(confusion))]
    recall = []
    for i, row in enumerate(confusion):
        support = int(sum(row))
        recall.append(ClassRecall(names[i], row[i] / support if support else None, support))
    return recall, ""


def build(study: optuna.Study, objective: str = "objective", monitor: str = "val/loss",
          thresholds: Thresholds | None = None) -> StudyReport:
    """The report of ``study``; ``objective`` and ``monitor`` only label values and axes,
    ``thresholds`` are the doctor's (``doctor.thresholds``)."""
    pareto = front_of(study, [objective])
    study = first_objective(study)  # a multi-objective study's sections read its first
    trials = [t for t in study.get_trials(deepcopy=False) if ledger.is_finished(t)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    found, note = importances(study, complete)
    best = study.best_trial if complete else None
    rerun = reruns.of_study(study)
    if rerun is not None:
        best = rerun.pick.trial
    recall, recall_note = class_recall(best)
    labels = final_labels(trials, study.direction, thresholds)
    maximize = study.direction == StudyDirection.MAXIMIZE
    return StudyReport(study.study_name, study.direction, objective, monitor, trials, found,
                       note, choice_stats(trials, maximize), labels, best, recall,
                       recall_note, importance_warning(found, complete, trials), rerun,
                       pareto)

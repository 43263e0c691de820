"""A multi-objective study's answer: its Pareto front, one "knee" pick, and their configs.

The front is the complete trials no other complete trial beats on every objective at once
(Optuna's ``Study.best_trials``). The knee is the front's trial nearest the ideal point
once each objective is scaled to [0, 1] over the front (0 = the front's best value of that
objective): the trial that gives up least on every objective together. It is one
reasonable pick, named so a user who wants "the balanced one" need not read the plot; the
table holds every other trade-off, and each front trial's config is exported for re-running.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from errors import one_line
from sweeps import ledger
from sweeps.objectives import names_of

log = logging.getLogger(__name__)

PLOT = "pareto_front.png"
#: the folder beside the sweep (and the report's section) with one config per front trial
CONFIGS = "pareto"
TAG_PARETO = "plateau.pareto"
TAG_KNEE = "plateau.knee"


@dataclass(frozen=True)
class ParetoFront:
    """The front of a multi-objective study, best first objective first."""

    names: list[str]
    directions: list[StudyDirection]
    front: list[FrozenTrial]
    #: complete trials off the front
    dominated: list[FrozenTrial]
    knee: FrozenTrial

    def on_front(self, trial: FrozenTrial) -> bool:
        return any(t.number == trial.number for t in self.front)

    def shown(self, trial: FrozenTrial) -> list[str]:
        """The trial's values as the tables show them."""
        return [_number(v) for v in trial.values or []]

    def rows(self) -> list[list[str]]:
        """One row per front trial: number, values, whether it is the knee, params."""
        return [[str(t.number), *self.shown(t), "knee" if t.number == self.knee.number else "",
                 ", ".join(f"{k}={_param(v)}" for k, v in t.params.items())]
                for t in self.front]

    def header(self) -> list[str]:
        return ["trial", *(f"{n} ({d.name.lower()})" for n, d in
                           zip(self.names, self.directions, strict=True)), "pick", "params"]


def _number(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1000 else f"{value:.4f}"


def _param(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _costs(trial: FrozenTrial, directions: list[StudyDirection]) -> list[float]:
    """The trial's values with lower better for each."""
    values = trial.values or []
    return [v if d == StudyDirection.MINIMIZE else -v
            for v, d in zip(values, directions, strict=True)]


def knee_of(front: list[FrozenTrial], directions: list[StudyDirection]) -> FrozenTrial:
    """The front trial nearest the ideal point, each objective scaled over the front; ties go
    to the better first objective."""
    costs = [_costs(t, directions) for t in front]
    lows = [min(c[i] for c in costs) for i in range(len(directions))]
    highs = [max(c[i] for c in costs) for i in range(len(directions))]

    def distance(index: int) -> tuple[float, float]:
        scaled = [(c - lo) / (hi - lo) if hi > lo else 0.0
                  for c, lo, hi in zip(costs[index], lows, highs, strict=True)]
        return math.hypot(*scaled), costs[index][0]

    return front[min(range(len(front)), key=distance)]


def front_of(study: optuna.Study, fallback_names: list[str]) -> ParetoFront | None:
    """The study's Pareto front; None for a single-objective study or no complete trial."""
    if len(study.directions) < 2:
        return None
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    directions = list(study.directions)
    numbers = {t.number for t in study.best_trials}
    front = sorted((t for t in complete if t.number in numbers),
                   key=lambda t: _costs(t, directions))
    dominated = [t for t in complete if t.number not in numbers]
    names = names_of(study, fallback_names)
    if len(names) != len(directions):
        names = [f"objective {i}" for i in range(len(directions))]
    return ParetoFront(names, directions, front, dominated, knee_of(front, directions))


def plot(pareto: ParetoFront, path: Path) -> bool:
    """The first two objectives of every complete trial: the front joined in order, dominated
    trials grey, the knee starred, each front trial labelled with its number."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if pareto.dominated:
        ax.scatter([t.values[1] for t in pareto.dominated],
                   [t.values[0] for t in pareto.dominated], color="0.6", alpha=0.7,
                   label=f"dominated ({len(pareto.dominated)})")
    ordered = sorted(pareto.front, key=lambda t: t.values[1])
    ax.plot([t.values[1] for t in ordered], [t.values[0] for t in ordered], "o-",
            color="tab:blue", drawstyle="steps-post" if len(ordered) > 1 else "default",
            label=f"Pareto front ({len(ordered)})")
    for trial in ordered:
        ax.annotate(str(trial.number), (trial.values[1], trial.values[0]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.scatter([pareto.knee.values[1]], [pareto.knee.values[0]], marker="*", s=260,
               color="tab:red", zorder=3, label=f"knee: trial {pareto.knee.number}")
    xs = [t.values[1] for t in [*pareto.front, *pareto.dominated]]
    if min(xs) > 0 and max(xs) / min(xs) > 20:  # e.g. a latency taken under load
        ax.set_xscale("log")
    ax.set_xlabel(f"{pareto.names[1]} ({pareto.directions[1].name.lower()})")
    ax.set_ylabel(f"{pareto.names[0]} ({pareto.directions[0].name.lower()})")
    ax.set_title("complete trials: the Pareto front and its knee")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def section(pareto: ParetoFront | None, written: bool) -> list[str]:
    """The report's Markdown section."""
    if pareto is None:
        return []
    lines = ["## Pareto front", "",
             f"{len(pareto.front)} of {len(pareto.front) + len(pareto.dominated)} complete "
             "trials are on the front: none of the others beats them on every objective. "
             f"The knee, trial {pareto.knee.number}, is nearest the ideal point with each "
             "objective scaled over the front; `best_trial.yaml` is its config, "
             f"`{CONFIGS}/trial_<n>.yaml` every front trial's. The pruner judged the first "
             f"objective ({pareto.names[0]}) only.", ""]
    if written:
        lines += [f"![Pareto front]({PLOT})", ""]
    lines += ["| " + " | ".join(pareto.header()) + " |", "|" + "---|" * len(pareto.header())]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |"
              for row in pareto.rows()]
    return lines + [""]


def tag_runs(client: Any, pareto: ParetoFront) -> None:
    """``plateau.pareto`` and ``plateau.knee`` (true/false) on every complete trial's MLflow
    run: the front as of this report (a resumed study's later trials can push an earlier
    front trial off it, and its tags follow)."""
    for trial in [*pareto.front, *pareto.dominated]:
        run_id = trial.user_attrs.get(ledger.ATTR_RUN_ID)
        if not run_id:
            continue
        try:
            client.set_tag(run_id, TAG_PARETO, str(pareto.on_front(trial)).lower())
            client.set_tag(run_id, TAG_KNEE, str(trial.number == pareto.knee.number).lower())
        except Exception as err:  # the report and the files still say it
            log.warning("trial %d: MLflow run %s not tagged: %s", trial.number, run_id,
                        one_line(err))

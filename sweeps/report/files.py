"""The study report's files: PNG plots (rendered by matplotlib's Agg canvas, no display
needed) and ``report.md``, which links them relatively so the folder reads the same on disk,
in a Markdown viewer, and in the MLflow UI's artifact view.

A plot with nothing to show is not written; ``report.md`` says why its section is empty.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial, TrialState

from doctor.diagnosis import LABELS
from sweeps.metrics import aligned, monitor_direction
from sweeps.report import page, pareto, reruns
from sweeps.report.model import StudyReport

log = logging.getLogger(__name__)

#: The report's folder in the sweep directory, and its artifact path in the parent run.
REPORT_DIR = "report"
REPORT_MD = "report.md"
#: The same report as one self-contained page (plots inlined): MLflow's artifact view renders
#: HTML with its images, while it shows Markdown as plain text.
REPORT_HTML = "report.html"
IMPORTANCES = "importances.png"
BY_CHOICE = "objective_by_choice.png"
CURVES = "learning_curves.png"
DIAGNOSES = "diagnoses.png"
RECALL = "best_trial_recall.png"
STATE_COLORS = {TrialState.COMPLETE: "tab:blue", TrialState.PRUNED: "tab:orange"}


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_importances(report: StudyReport, path: Path) -> bool:
    if not report.importances:
        return False
    names = list(report.importances)[::-1]  # most important on top
    fig = Figure(figsize=(7, 0.4 * len(names) + 1.2))
    ax = fig.add_subplot()
    ax.barh(names, [report.importances[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"fANOVA importance for {report.objective}")
    _save(fig, path)
    return True


def plot_by_choice(report: StudyReport, path: Path) -> bool:
    """One panel per categorical knob: each complete trial's objective, and the mean."""
    knobs = {name: rows for name, rows in report.choices.items()
             if any(row.values for row in rows)}
    if not knobs:
        return False
    fig = Figure(figsize=(4.5 * min(len(knobs), 3), 3.6 * ((len(knobs) + 2) // 3)))
    for index, (name, rows) in enumerate(knobs.items()):
        ax = fig.add_subplot((len(knobs) + 2) // 3, min(len(knobs), 3), index + 1)
        for x, row in enumerate(rows):
            ax.scatter([x] * len(row.values), row.values, color="tab:blue", alpha=0.6)
            if row.mean is not None:
                ax.hlines(row.mean, x - 0.3, x + 0.3, color="black")
        ax.set_xticks(range(len(rows)),
                      [f"{row.choice}\n{len(row.values)} complete, {row.pruned} pruned"
                       for row in rows], fontsize=8)
        ax.set_title(name)
        ax.set_ylabel(report.objective)
    _save(fig, path)
    return True


def monitored(report: StudyReport, trial: FrozenTrial) -> tuple[list[int], list[float]]:
    """The epochs and the monitored metric of ``trial`` in its own units (trials report it
    negated when it improves the other way than the objective, :mod:`sweeps.metrics`)."""
    steps = sorted(trial.intermediate_values)
    way = monitor_direction(report.monitor)  # aligning twice gives the value back
    return steps, [aligned(trial.intermediate_values[s], report.direction, way) for s in steps]


def robust_range(values: list[float]) -> tuple[float, float, int]:
    """A y-range holding the bulk of ``values``: the quartiles widened by three
    interquartile ranges (never past the data). Returns it and how many values fall outside,
    so one diverged epoch does not squash every other curve into a line."""
    q1, q3 = (float(q) for q in np.percentile(values, [25, 75]))
    spread = max(q3 - q1, 1e-9)
    low, high = max(min(values), q1 - 3 * spread), min(max(values), q3 + 3 * spread)
    outside = sum(v < low or v > high for v in values)
    margin = 0.05 * max(high - low, 1e-9)
    return low - margin, high + margin, outside


#: Beyond this many trials the curves' legend names states, not trials.
LEGEND_TRIALS = 12


def plot_curves(report: StudyReport, path: Path) -> bool:
    """The monitored metric of each complete or pruned trial per epoch (the pruner's view),
    in the metric's own units, each line labelled by its trial."""
    shown = [t for t in report.trials if t.state in STATE_COLORS and t.intermediate_values]
    if not shown:
        return False
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    values: list[float] = []
    for trial in shown:
        steps, ys = monitored(report, trial)
        values += ys
        best = report.best is not None and trial.number == report.best.number
        line, = ax.plot(steps, ys, marker=".", color=STATE_COLORS[trial.state],
                        alpha=0.9 if best else 0.5, linewidth=2.5 if best else 1.0,
                        label=f"trial {trial.number}{' (best)' if best else ''}, "
                              f"{trial.state.name.lower()}")
        if len(shown) <= LEGEND_TRIALS:  # the trial number at the line's end
            ax.annotate(str(trial.number), (steps[-1], ys[-1]), fontsize=7,
                        color=line.get_color(), xytext=(3, 0), textcoords="offset points")
    low, high, outside = robust_range(values)
    ax.set_ylim(low, high)
    if len(shown) <= LEGEND_TRIALS:
        ax.legend(fontsize="small", ncol=2)
    else:
        ax.legend([Line2D([], [], color=c) for c in STATE_COLORS.values()],
                  [s.name.lower() for s in STATE_COLORS])
    if outside:
        ax.set_title(f"{outside} value(s) outside this range not shown", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (0 is the first)")
    ax.set_ylabel(report.monitor)
    _save(fig, path)
    return True


def plot_diagnoses(report: StudyReport, path: Path) -> bool:
    if not report.diagnoses:
        return False
    labels = diagnosis_order(report)
    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot()
    ax.bar(labels, [report.diagnoses[label] for label in labels],
           color=["tab:green" if label == "healthy" else "tab:red" for label in labels])
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("trials")
    ax.tick_params(axis="x", labelsize=8)
    _save(fig, path)
    return True


def plot_recall(report: StudyReport, path: Path) -> bool:
    if not report.recall or report.best is None:
        return False
    fig = Figure(figsize=(max(5.0, 0.5 * len(report.recall) + 2), 3.5))
    ax = fig.add_subplot()
    ax.bar([r.name for r in report.recall], [r.recall or 0.0 for r in report.recall],
           color="tab:blue")
    ax.set_ylim(0, 1)
    ax.set_ylabel("recall")
    ax.set_title(f"trial {report.best.number}: last validation epoch")
    _save(fig, path)
    return True


def diagnosis_order(report: StudyReport) -> list[str]:
    known = [label for label in LABELS if label in report.diagnoses]
    return known + sorted(set(report.diagnoses) - set(known))


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _image(written: dict[str, bool], name: str, alt: str) -> list[str]:
    return [f"![{alt}]({name})", ""] if written.get(name) else []


def _overview(report: StudyReport) -> list[str]:
    states = [t.state for t in report.trials]
    counts = ", ".join(f"{states.count(s)} {s.name.lower()}"
                       for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    best = report.best
    front = report.pareto
    rows = [["direction", f"{report.direction.name.lower()} `{report.objective}`"
             if front is None else ", ".join(f"{d.name.lower()} `{n}`" for n, d in
                                             zip(front.names, front.directions, strict=True))],
            ["trials", counts],
            ["best" if front is None else f"best `{front.names[0]}`",
             reruns.best_cell(best, report.reruns) if best else "none"]]
    if front is not None:
        rows.append(["Pareto front", f"{len(front.front)} trials; the knee is trial "
                                     f"{front.knee.number}"])
    rows += [["gain over the base config", report.gain or "no base trial completed"],
             ["most important knobs", ", ".join(f"`{k}`" for k in report.top_knobs) or "none"],
             ["best trial's diagnosis", report.best_line() or "none"],
             ["most common fixable cause", report.failure_line()]]
    return [f"# Study report: `{report.study_name}`", "", *_table(["", ""], rows),
            *reruns.section(report.reruns, report.objective)]


def _sections(report: StudyReport, written: dict[str, bool]) -> list[str]:
    lines = ["## Knob importances", "",
             f"fANOVA importance of each knob for `{report.objective}` over the complete "
             "trials (normalized to sum to 1).", ""]
    if report.importance_warning:
        lines += [f"**Warning: {report.importance_warning}.**", ""]
    lines += _image(written, IMPORTANCES, "knob importances")
    lines += _table(["knob", "importance"], [[f"`{k}`", f"{v:.3f}"]
                                             for k, v in report.importances.items()])
    if report.importance_note:
        lines += [f"_{'Not computed: ' if not report.importances else ''}"
                  f"{report.importance_note}._", ""]
    lines += ["## Objective by choice", "", f"`{report.objective}` of the complete trials "
              "that took each choice; pruned and failed trials are counted beside.", ""]
    lines += _image(written, BY_CHOICE, "objective by choice")
    for name, rows in report.choices.items():
        lines += [f"### `{name}`", ""] + _table(
            ["choice", "complete", "mean", "best", "pruned", "failed"],
            [[f"`{r.choice}`", str(len(r.values)), _number(r.mean), _number(r.best),
              str(r.pruned), str(r.failed)] for r in rows])
    if not report.choices:
        lines += ["_No categorical knob was searched._", ""]
    lines += ["## Learning curves", "", f"`{report.monitor}` of each trial per epoch, the "
              "value the pruner judged (in its own units): complete trials blue, pruned "
              "orange, the best trial bold, each line ending in its trial number.", ""]
    lines += _image(written, CURVES, "learning curves") or ["_No trial reported a value._", ""]
    return lines


def _diagnosis_sections(report: StudyReport, written: dict[str, bool]) -> list[str]:
    lines = ["## Diagnoses", ""]
    lines += _image(written, DIAGNOSES, "diagnosis counts")
    lines += _table(["diagnosis", "trials"], [[label, str(report.diagnoses[label])]
                                              for label in diagnosis_order(report)])
    if not report.diagnoses:
        lines += ["_No trial was diagnosed (a trial that fails is not)._", ""]
    else:
        lines += ["Each trial's label, read against the study's final field, and why:", ""]
        lines += _table(["trial", "diagnosis", "why"], [
            [str(number), label.label, label.explained().replace("|", "/")]
            for number, label in sorted(report.labels.items())])
    lines += ["## Best trial's per-class recall", ""]
    if report.best is not None:
        params = ", ".join(f"`{k}={v}`" for k, v in report.best.params.items())
        lines += [f"Trial {report.best.number}: {params}", ""]
    lines += _image(written, RECALL, "per-class recall")
    lines += _table(["class", "recall", "validation images"],
                    [[r.name, _number(r.recall), str(r.support)] for r in report.recall])
    if report.recall_note:
        lines += [f"_Not shown: {report.recall_note}._", ""]
    return lines


PLOTS: dict[str, Callable[[StudyReport, Path], bool]] = {
    IMPORTANCES: plot_importances, BY_CHOICE: plot_by_choice, CURVES: plot_curves,
    DIAGNOSES: plot_diagnoses, RECALL: plot_recall,
}


def write(report: StudyReport, folder: Path) -> Path:
    """Write the plots and ``report.md`` to ``folder`` (created; stale plots removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, plot in PLOTS.items():
        (folder / name).unlink(missing_ok=True)
        written[name] = plot(report, folder / name)
    (folder / pareto.PLOT).unlink(missing_ok=True)
    drawn = report.pareto is not None and pareto.plot(report.pareto, folder / pareto.PLOT)
    reruns.write_csv(report.reruns, folder)
    lines = (_overview(report) + pareto.section(report.pareto, drawn)
             + _sections(report, written) + _diagnosis_sections(report, written))
    text = "\n".join(lines).rstrip() + "\n"
    (folder / REPORT_MD).write_text(text)
    (folder / REPORT_HTML).write_text(page.as_html(text, folder, report.study_name))
    log.info("study report written to %s", folder)
    return folder

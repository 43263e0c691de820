"""What the terminal shows at the end of a sweep: the trials, the study, the report's gist."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from doctor.diagnosis import Diagnosis
from errors import console
from sweeps import ledger
from sweeps.report import files, pareto, reruns
from sweeps.report.model import StudyReport, base_trial, gain_over_base
from sweeps.report.pareto import ParetoFront

log = logging.getLogger(__name__)


def trial_table(trials: list[FrozenTrial], labels: Mapping[int, Diagnosis]) -> Table:
    """One row per trial: state, value, epochs, the doctor's label against the final field
    (``labels``), and why it ended (the stop reason with its numbers, or its error)."""
    table = Table(title="trials", show_lines=False)
    for column in ("#", "state", "value", "epochs", "diagnosis", "note"):
        table.add_column(column)
    for trial in trials:
        value = ledger.shown_value(trial)
        epochs = len(trial.intermediate_values)
        note = (trial.user_attrs.get(ledger.ATTR_ERROR)
                or trial.user_attrs.get(ledger.ATTR_PRUNE_REASON) or "")
        if trial.user_attrs.get(ledger.ATTR_INTERRUPTED):
            note = "interrupted (re-run)"
        elif trial.user_attrs.get(ledger.ATTR_WITHDRAWN):
            note = "withdrawn: the budget went to another worker"
        role = trial.user_attrs.get(ledger.ATTR_ROLE, "")
        if ledger.is_rerun(trial):
            role = (f"rerun of trial {trial.user_attrs.get(ledger.ATTR_RERUN_OF)}, seed "
                    f"{trial.user_attrs.get(ledger.ATTR_RERUN_SEED)}")
        if role:
            note = f"{role}; {note}" if note else role
        table.add_row(str(trial.number), trial.state.name,
                      "" if value is None else f"{value:.4f}", str(epochs),
                      labels[trial.number].label if trial.number in labels else "", note)
    return table


def summary_table(study: optuna.Study, trials: list[FrozenTrial], seconds: float) -> Table:
    counts = Counter(t.state.name for t in trials)
    table = Table(title=f"study {study.study_name}", show_header=False)
    table.add_row("trials", ", ".join(f"{counts.get(s, 0)} {s.lower()}"
                                      for s in ("COMPLETE", "PRUNED", "FAIL")))
    table.add_row("epochs run", str(sum(len(t.intermediate_values) for t in trials)))
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    if completed:
        best = study.best_trial
        table.add_row("best value", f"{best.value:.4f} (trial {best.number})")
        gain = gain_over_base(best, base_trial(trials),
                              study.direction == StudyDirection.MAXIMIZE)
        table.add_row("gain over base", gain or "no base trial completed")
        table.add_row("best params", "\n".join(f"{k}={v}" for k, v in best.params.items()))
    found = reruns.of_study(study, trials)
    if found is not None:
        pick = found.pick
        table.add_row("best mean over seeds", f"{pick.shown()}, trial {pick.trial.number}'s "
                                              f"config (single seed {pick.single:.4f})")
        table.add_row("reruns", found.verdict())
    table.add_row("wall time", f"{seconds:.0f} s")
    return table


def rerun_table(found: reruns.RerunTable) -> Table:
    """One row per rerun config: its single-seed value beside its mean ± sd over seeds."""
    table = Table(title="top-k reruns: the best mean is the pick")
    for column in ("config (trial)", "single seed", "mean ± sd (n)", "seeds",
                   "rank by single", "rank by mean"):
        table.add_column(column)
    for row in found.rows:
        table.add_row(str(row.trial.number), f"{row.single:.4f}", row.shown(),
                      ", ".join(map(str, row.seeds)), str(row.rank_single), str(row.rank_mean))
    return table


def print_end(study: optuna.Study, trials: list[FrozenTrial], seconds: float,
              best_config: Path | None, labels: Mapping[int, Diagnosis]) -> None:
    """The trial table, the study summary, and how to re-run the best trial."""
    console.print(trial_table(trials, labels))
    found = reruns.of_study(study, trials)
    if found is not None:
        console.print(rerun_table(found))
    console.print(summary_table(study, trials, seconds))
    if best_config is not None:
        what = "best mean's config" if found is not None else "best trial's config"
        console.print(f"{what}: {best_config}\nre-run it: python sweep.py "
                      f"--config-path={best_config.parent.resolve()} "
                      f"--config-name={best_config.stem}")


def print_pareto(front: ParetoFront, sweep_dir: Path) -> None:
    """A multi-objective study's front, its knee and where the configs are."""
    table = Table(title=f"Pareto front: {len(front.front)} of "
                        f"{len(front.front) + len(front.dominated)} complete trials")
    for column in front.header():
        table.add_column(column, overflow="fold")
    for row in front.rows():
        table.add_row(*row)
    console.print(table)
    console.print(f"knee (the balanced pick, in best_trial.yaml): trial {front.knee.number}; "
                  f"every front trial's config: {sweep_dir / pareto.CONFIGS}/; the pruner "
                  f"judged {front.names[0]} only", soft_wrap=True, highlight=False)


def viewer_commands(tracking_uri: str | None, storage_url: str) -> list[str]:
    """The commands that open the MLflow UI and optuna-dashboard on what the sweep wrote,
    bound to 127.0.0.1 (``storage_url`` with its password masked, as everywhere)."""
    commands = []
    if tracking_uri is not None:
        if tracking_uri.startswith(("http://", "https://", "databricks")):
            commands.append(f"MLflow: open {tracking_uri}")
        else:
            commands.append(f"mlflow ui --backend-store-uri {tracking_uri} "
                            "--host 127.0.0.1 --port 5000")
    commands.append(f"optuna-dashboard {storage_url} --host 127.0.0.1 --port 8080")
    return commands


def print_viewers(tracking_uri: str | None, storage_url: str) -> None:
    """How to look at the runs, one command per line (never wrapped: they copy-paste)."""
    console.print("look at the trials:")
    for command in viewer_commands(tracking_uri, storage_url):
        console.print(f"  {command}")
    if "***" in storage_url:
        console.print("  (set PGPASSWORD, or put the password back in for ***)")


def print_summary(report: StudyReport) -> None:
    """Where the report is, the most important knobs, the best trial's diagnosis and the
    most common fixable cause of the failures (with its fix)."""
    where = f"study report: {report.folder / files.REPORT_MD if report.folder else '-'}"
    if report.run_id:
        where += f" (MLflow run {report.run_id}, artifacts {files.REPORT_DIR}/)"
    knobs = ", ".join(f"{name} ({report.importances[name]:.2f})" for name in report.top_knobs)
    console.print(where, soft_wrap=True)
    console.print(f"most important knobs: {knobs or 'not computed: ' + report.importance_note}",
                  soft_wrap=True)
    if report.importance_warning:
        console.print(f"[yellow]warning: {report.importance_warning}[/]")
    if report.best_line():
        console.print(f"best trial's diagnosis: {report.best_line()}", soft_wrap=True,
                      highlight=False)
    console.print(f"most common fixable cause: {report.failure_line()}", soft_wrap=True,
                  highlight=False)

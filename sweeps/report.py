"""The end of a sweep: the table a person reads, and the best trial's config to re-run."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from omegaconf import OmegaConf, open_dict
from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from sweeps import study_trial
from sweeps.errors import console

if TYPE_CHECKING:
    from sweeps.study import StudySweeper

log = logging.getLogger(__name__)

BEST_CONFIG = "best_trial.yaml"
RESULTS = "optimization_results.yaml"


def trial_table(trials: list[FrozenTrial]) -> Table:
    table = Table(title="trials", show_lines=False)
    for column in ("#", "state", "value", "epochs", "diagnosis", "note"):
        table.add_column(column)
    for trial in trials:
        value = trial.user_attrs.get(study_trial.ATTR_OBJECTIVE, trial.value)
        epochs = len(trial.intermediate_values)
        note = (trial.user_attrs.get(study_trial.ATTR_ERROR)
                or trial.user_attrs.get(study_trial.ATTR_PRUNE_REASON) or "")
        if trial.user_attrs.get(study_trial.ATTR_INTERRUPTED):
            note = "interrupted (re-run)"
        elif trial.user_attrs.get(study_trial.ATTR_WITHDRAWN):
            note = "withdrawn: the budget went to another worker"
        table.add_row(str(trial.number), trial.state.name,
                      "" if value is None else f"{value:.4f}", str(epochs),
                      trial.user_attrs.get(study_trial.ATTR_DIAGNOSIS, ""), note[:80])
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
        table.add_row("best params", "\n".join(f"{k}={v}" for k, v in best.params.items()))
    table.add_row("wall time", f"{seconds:.0f} s")
    return table


def export_best(study: optuna.Study, sweeper: StudySweeper) -> Path | None:
    """Write the best trial's composed config and ``optimization_results.yaml``."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return None
    best = study.best_trial
    overrides = list(best.user_attrs.get(study_trial.ATTR_OVERRIDES, []))
    out = Path(sweeper.sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": best.params,
                                     "best_value": best.value, "best_trial": best.number,
                                     "overrides": overrides}), out / RESULTS)
    loader = sweeper.hydra_context.config_loader
    composed = loader.load_sweep_config(sweeper.config, overrides)
    with open_dict(composed):
        del composed["hydra"]
        composed["trial_id"] = None
    path = out / BEST_CONFIG
    OmegaConf.save(composed, path)
    return path


def finish(study: optuna.Study, trials: list[FrozenTrial], sweeper: StudySweeper,
           seconds: float) -> None:
    console.print(trial_table(trials))
    console.print(summary_table(study, trials, seconds))
    path = export_best(study, sweeper)
    if path is not None:
        console.print(f"best trial's config: {path}\nre-run it: python sweep.py "
                      f"--config-path={path.parent.resolve()} --config-name={path.stem}")

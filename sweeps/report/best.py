"""The best trial's config, written beside the sweep so it can be run again as is.

A multi-objective study has no single best: ``best_trial.yaml`` is the knee of its Pareto
front (:mod:`sweeps.report.pareto`), and ``pareto/trial_<n>.yaml`` holds every front
trial's config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from hydra.core.config_loader import ConfigLoader
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import FrozenTrial, TrialState

from sweeps import ledger
from sweeps.objectives import Objectives
from sweeps.report import pareto, reruns

BEST_CONFIG = "best_trial.yaml"
RESULTS = "optimization_results.yaml"


def export_best(study: optuna.Study, sweep_dir: str | Path, config: DictConfig,
                loader: ConfigLoader) -> Path | None:
    """Write the best trial's composed config and ``optimization_results.yaml`` to
    ``sweep_dir``; ``config`` is the sweep's, composed again with the best trial's overrides
    by Hydra's config ``loader``. After top-k reruns, the best trial is the config with the
    best mean over seeds (:mod:`sweeps.report.reruns`), and the file says so. None when no
    trial is complete."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return None
    out = Path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    front = pareto.front_of(study, list(Objectives.of(config).metrics))
    found = reruns.of_study(study) if front is None else None  # reruns: one objective
    results: dict[str, Any]
    if front is None:
        best = study.best_trial if found is None else found.pick.trial
        results = {"name": "optuna", "best_params": best.params, "best_value": best.value,
                   "best_trial": best.number}
        if found is not None:
            results |= {"best_mean": found.pick.mean, "best_sd": found.pick.sd,
                        "best_n": found.pick.n, "order_changed": found.changed}
    else:
        best = front.knee
        results = {"name": "optuna", "best_params": best.params, "best_values": best.values,
                   "best_trial": best.number, "objectives": front.names,
                   "pareto_trials": [t.number for t in front.front]}
        folder = out / pareto.CONFIGS
        folder.mkdir(exist_ok=True)
        for stale in folder.glob("trial_*.yaml"):  # a resumed study's front moves
            stale.unlink()
        for trial in front.front:
            export_config(trial, folder / f"trial_{trial.number}.yaml", config, loader)
    OmegaConf.save(OmegaConf.create({**results, "overrides": _overrides(best)}), out / RESULTS)
    path = export_config(best, out / BEST_CONFIG, config, loader)
    if found is not None:  # say which pick this is: not the best single trial
        pick = found.pick
        path.write_text(
            f"# The best mean over seeds after the top-k reruns: trial {best.number}'s config, "
            f"{pick.shown()}\n# (single seed {pick.single:.4f}); its seed is the search "
            f"trial's. {found.verdict()}\n" + path.read_text())
    return path


def _overrides(trial: FrozenTrial) -> list[str]:
    return list(trial.user_attrs.get(ledger.ATTR_OVERRIDES, []))


def export_config(trial: FrozenTrial, path: Path, config: DictConfig,
                  loader: ConfigLoader) -> Path:
    """``trial``'s composed config (the sweep's ``config`` with its overrides) at ``path``:
    ``python sweep.py --config-path=<folder> --config-name=<stem>`` runs it again."""
    composed = loader.load_sweep_config(config, _overrides(trial))
    with open_dict(composed):
        del composed["hydra"]
        composed["trial"] = None
    OmegaConf.save(composed, path)
    return path

"""The best trial's config, written beside the sweep so it can be run again as is."""

from __future__ import annotations

from pathlib import Path

import optuna
from hydra.core.config_loader import ConfigLoader
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import TrialState

from sweeps import ledger

BEST_CONFIG = "best_trial.yaml"
RESULTS = "optimization_results.yaml"


def export_best(study: optuna.Study, sweep_dir: str | Path, config: DictConfig,
                loader: ConfigLoader) -> Path | None:
    """Write the best trial's composed config and ``optimization_results.yaml`` to
    ``sweep_dir``; ``config`` is the sweep's, composed again with the best trial's overrides
    by Hydra's config ``loader``. None when no trial is complete."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return None
    best = study.best_trial
    overrides = list(best.user_attrs.get(ledger.ATTR_OVERRIDES, []))
    out = Path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": best.params,
                                     "best_value": best.value, "best_trial": best.number,
                                     "overrides": overrides}), out / RESULTS)
    composed = loader.load_sweep_config(config, overrides)
    with open_dict(composed):
        del composed["hydra"]
        composed["trial"] = None
    path = out / BEST_CONFIG
    OmegaConf.save(composed, path)
    return path

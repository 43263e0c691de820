"""The best trial's config, written beside the sweep so it can be run again as is."""

from __future__ import annotations

from pathlib import Path

import optuna
from hydra.core.config_loader import ConfigLoader
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import TrialState

from sweeps import ledger
from sweeps.report import reruns

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
    found = reruns.of_study(study)
    best = study.best_trial if found is None else found.pick.trial
    overrides = list(best.user_attrs.get(ledger.ATTR_OVERRIDES, []))
    out = Path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {"name": "optuna", "best_params": best.params, "best_value": best.value,
               "best_trial": best.number, "overrides": overrides}
    if found is not None:
        results |= {"best_mean": found.pick.mean, "best_sd": found.pick.sd,
                    "best_n": found.pick.n, "order_changed": found.changed}
    OmegaConf.save(OmegaConf.create(results), out / RESULTS)
    composed = loader.load_sweep_config(config, overrides)
    with open_dict(composed):
        del composed["hydra"]
        composed["trial"] = None
    path = out / BEST_CONFIG
    OmegaConf.save(composed, path)
    if found is not None:  # say which pick this is: not the best single trial
        pick = found.pick
        path.write_text(
            f"# The best mean over seeds after the top-k reruns: trial {best.number}'s config, "
            f"{pick.shown()}\n# (single seed {pick.single:.4f}); its seed is the search "
            f"trial's. {found.verdict()}\n" + path.read_text())
    return path

"""How much a run prints: plateau's own lines only, or what the libraries say too.

``verbose`` in the config: ``null`` (the default) keeps a sweep's trials quiet — no progress
bars, no Lightning, Hydra, Optuna or MLflow info lines, no third-party deprecation warnings —
so the console holds the sweep's one line per trial; a single ``python sweep.py`` keeps
Lightning's progress bar. ``true`` prints everything, ``false`` quiets single runs too.
Lightning-free: the sweeper applies it before any trial runs, and each job again (Hydra
re-configures logging for every job).
"""

from __future__ import annotations

import logging
import os
import warnings

from omegaconf import DictConfig

#: Loggers whose info lines repeat once per trial or per sweep and tell a user nothing new.
CHATTY_LOGGERS = (
    "lightning", "lightning.pytorch", "lightning.fabric", "lightning_modules",
    "hydra._internal.core_plugins", "hydra_plugins.hydra_joblib_launcher",
    "hydra_plugins.hydra_submitit_launcher", "optuna", "mlflow", "alembic",
    "matplotlib", "sweeps.job", "sweeps.report",
)


def verbose_setting(cfg: DictConfig) -> bool | None:
    """``cfg.verbose`` (null, true or false); anything else is a one-line error."""
    from errors import PlateauError

    value = cfg.get("verbose")
    if value is not None and not isinstance(value, bool):
        raise PlateauError(f"verbose={value} is not one of null, true, false: give verbose=true "
                           "to see what Lightning, Hydra and the libraries print")
    return value


def is_quiet(cfg: DictConfig, sweep: bool) -> bool:
    """Whether this run keeps to plateau's own lines: a sweep unless ``verbose=true``, a single
    run only with ``verbose=false``."""
    verbose = verbose_setting(cfg)
    return (verbose is None and sweep) or verbose is False


def quiet_libraries() -> None:
    """Raise the chatty loggers to warnings and drop deprecation warnings raised inside other
    packages (they are for those packages' authors, not for a user of a sweep)."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its own on import
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    # Lightning's advice about its own settings, e.g. log_every_n_steps above the batches
    warnings.filterwarnings("ignore", module=r"lightning(\..*)?$")
    warnings.filterwarnings("ignore", message=r".*(LeafSpec|TreeSpec)")

"""Orchestration: the trial runner, MLflow bookkeeping, and the study around them.

Submodules are imported where used: ``sweeps.errors`` is needed by the model and data
packages and must not pull in Lightning.
"""

import warnings

# TPE's `group` and `constant_liar` are what make conditional spaces and parallel workers
# sample well; Optuna flags them experimental on every construction. The filter lives here,
# not in the Hydra plugin: Hydra imports plugins inside `warnings.catch_warnings()`, which
# drops any filter they add.
warnings.filterwarnings("ignore", message=r"Argument ``(group|constant_liar)`` is an experimental")

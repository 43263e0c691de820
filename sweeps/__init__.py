"""Orchestration: a sweep of trials, each a Hydra job, around one Optuna study.

The rooms, from the top down:

- :mod:`sweeps.sweeper` — the sweeper side: settings checks, the study and its stale trials,
  asking within the budget, the slots that keep trials in flight, who closes the study.
- :mod:`sweeps.job` — the job side: building, fitting and reporting one trial (the only
  room that imports Lightning, timm and torch), DDP ranks, the trial's MLflow run.
- :mod:`sweeps.report` — the study report's model, files and plots, the terminal's tables,
  the best trial's config, and the study's MLflow parent run.
- the floor both sides stand on: :mod:`sweeps.ledger` (trial attributes, budget states and
  every use of Optuna's private API), :mod:`sweeps.metrics`, :mod:`sweeps.pruning`,
  :mod:`sweeps.storage` and :mod:`sweeps.races`, :mod:`sweeps.tracking` (the MLflow store),
  :mod:`sweeps.devices` (GPU seats, DDP process counts), :mod:`sweeps.schema`,
  :mod:`sweeps.writable`; and for ``sweep.py``, :mod:`sweeps.hydra_errors`.

Errors come from the ground-floor :mod:`errors` package, which imports nothing of plateau's.
"""

import warnings

# TPE's `group` and `constant_liar` are what make conditional spaces and parallel workers
# sample well; Optuna flags them experimental on every construction. The filter lives here,
# not in the Hydra plugin: Hydra imports plugins inside `warnings.catch_warnings()`, which
# drops any filter they add.
warnings.filterwarnings("ignore", message=r"Argument ``(group|constant_liar)`` is an experimental")

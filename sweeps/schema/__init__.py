"""Every value of the job config checked at the boundary, before anything runs.

- :mod:`sweeps.schema.job`: the ``objective`` and ``doctor`` nodes, registered in Hydra's
  ConfigStore (typed at compose time).
- :mod:`sweeps.schema.knobs`: every knob group and the trainer, data and logger settings,
  one declaration per key with its type and range (:mod:`sweeps.schema.rules`).

:mod:`sweeps.schema.checks`: ``check_config`` runs on every composed job config (a single
run, each trial of a sweep, and the sweep's base config before its study exists);
``check_space`` runs on a sweep's search space, so a space that would sample a value outside
a key's range stops the sweep at its start, from the space's bounds, not trials later.

The knob groups are not ConfigStore schemas on purpose: their nodes stay open, so a user's
own ``_target_`` can take extra arguments (``+optimizer.betas=[0.9,0.99]``), which the
target itself judges; the keys plateau ships are the ones checked here.
"""

from __future__ import annotations

from sweeps.schema.job import SCHEMAS, ObjectiveConf, register_job_schemas

# check_config/check_space live in sweeps.schema.checks, imported by their users: Hydra
# imports this package with the sweeper plugin at every start, --help included.
__all__ = ["SCHEMAS", "ObjectiveConf", "register_job_schemas"]

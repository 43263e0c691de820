"""``hydra/launcher=slurm``: Hydra's submitit SLURM launcher, waiting on job states through
:mod:`sweeps.slurm` (imported when the launcher is set up, as plugins stay light).

Without job accounting submitit cannot read a job's state, and a job that ended without a
result (``scancel``) kept the sweep waiting forever; :func:`sweeps.slurm.watch_queue` reads it
from slurmctld instead. Hydra loads launchers from the ``hydra_plugins`` package only, hence
this module.
"""

from __future__ import annotations

from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hydra_plugins.hydra_submitit_launcher import submitit_launcher


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """Hydra's ``SlurmLauncher`` whose jobs are waited on by :class:`sweeps.slurm.QueueWatcher`."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from sweeps.slurm import watch_queue

        watch_queue()
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

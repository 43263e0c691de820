"""DDP trials inside a sweep: the extra ranks re-run the trial's job, not the sweep.

Lightning starts ranks 1..n-1 of a DDP fit (``trainer.devices=2`` and more) by running the
main process's command line again with Hydra's run directory appended. Under
``python sweep.py -m`` that command line is the whole sweep: every rank would start a study
of its own. While a trial's fit runs, :func:`ranks_rerun_this_job` makes the command line the
job's own saved config (``<job dir>/.hydra/config.yaml``, which holds every override and the
``trial`` number), so each extra rank composes exactly this trial. Such a rank
(:func:`ddp_rank` > 0) trains its shard and joins rank zero's stop decision; only rank zero
reports to the study, logs to MLflow and tells the outcome.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from errors import PlateauError

#: The GPUs a DDP trial's rank zero holds (sweeps.devices), for the ranks it starts.
DEVICES_ENV = "PLATEAU_DDP_DEVICES"


def ddp_rank() -> int:
    """This process's rank among a DDP fit's processes on this node; 0 outside DDP."""
    return int(os.environ.get("LOCAL_RANK") or 0)


@contextlib.contextmanager
def ranks_rerun_this_job(trainer_cfg: DictConfig) -> Iterator[None]:
    """For the block, point the command line DDP ranks re-run at this job's saved config.

    Does nothing outside a multirun job. The GPUs in ``trainer_cfg.devices`` (when plateau
    assigned them) go to the ranks through :data:`DEVICES_ENV`: the saved config predates
    the assignment. The ranks log into the job's folder. Afterwards the process is ready for
    the next trial's fit: Lightning's ``MASTER_PORT`` and friends are taken out of the
    environment again and the finished fit's process group is destroyed (its other ranks
    have exited; the next DDP fit must form a new group, not reuse this one).
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hydra = cast(DictConfig, HydraConfig.get())  # a DictConfig at run time
    if not hydra.output_subdir:
        raise PlateauError("a DDP trial's extra ranks start from the job's saved config, but "
                           "hydra.output_subdir is null: leave it at its default (.hydra)")
    saved = Path(hydra.runtime.output_dir) / hydra.output_subdir
    argv, env, run_dir = sys.argv, dict(os.environ), hydra.run.dir
    devices = trainer_cfg.get("devices")
    sys.argv = [argv[0], f"--config-path={saved}", "--config-name=config"]
    if isinstance(devices, ListConfig):
        os.environ[DEVICES_ENV] = ",".join(str(d) for d in devices)
    with read_write(hydra):
        hydra.run.dir = hydra.runtime.output_dir  # where Lightning points the ranks' Hydra
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hydra):
            hydra.run.dir = run_dir
        for key in set(os.environ) - set(env):
            del os.environ[key]
        os.environ.update(env)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def as_extra_rank(cfg: DictConfig) -> None:
    """Turn the job config an extra rank composed into that rank's share of the trial.

    No MLflow run and no preflight (rank zero has them), and the GPUs rank zero holds.
    """
    with open_dict(cfg):
        cfg.logger = None
        OmegaConf.update(cfg, "doctor.preflight.enabled", False, force_add=True)
        devices = os.environ.get(DEVICES_ENV)
        if devices:
            cfg.trainer.devices = [int(d) for d in devices.split(",")]

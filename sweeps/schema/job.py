"""Schemas of the job config's nodes the orchestration reads: ``objective`` and ``doctor``.

Registered in Hydra's ConfigStore (by the sweeper plugin, which Hydra imports before it
composes any config) and listed first in ``conf/config.yaml``'s defaults, so a misspelled
key (``objective.metrc=...``) or a value of the wrong type fails at compose time, as
plateau's one-line error (:mod:`sweeps.hydra_errors`). Lightweight: dataclasses only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

from doctor.settings import DoctorConf


@dataclass
class ObjectiveConf:
    """``objective``: what a trial returns, the best epoch's value of ``metric``.

    Attributes:
        metric: any ``val/*`` metric trials log: ``val/loss``, ``val/acc``,
            ``val/balanced_acc``, ``val/f1_macro`` (the default: on imbalanced data plain
            accuracy hides the minority classes); or a list of metrics for a
            multi-objective sweep, whose later entries may be the model's serving cost
            (``model/latency_ms`` ...; see :mod:`sweeps.objectives`).
        direction: ``maximize`` or ``minimize``, or one per metric; must match
            ``hydra.sweeper.direction``.
    """

    metric: Any = "val/f1_macro"
    direction: Any = "maximize"


#: ConfigStore names of the schemas, as ``conf/config.yaml``'s defaults list names them.
SCHEMAS = {"objective_schema": ("objective", ObjectiveConf),
           "doctor_schema": ("doctor", DoctorConf)}


def register_job_schemas() -> None:
    """Store :data:`SCHEMAS` in Hydra's ConfigStore, each under its own package."""
    store = ConfigStore.instance()
    for name, (package, node) in SCHEMAS.items():
        store.store(name=name, node=node, package=package, provider="plateau")

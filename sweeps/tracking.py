"""The MLflow store: where it is, a client on it, and what a trial's run is named and tagged.

Lightning-free, so the sweeper and the report use it without importing the trial stack; a
trial's own run goes through Lightning's logger (:mod:`sweeps.job.logger`).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sweeps.races import creating_sqlite, retrying, sqlite_file
from sweeps.storage import launch_dir
from sweeps.writable import check_folder

#: Config groups whose choice is tagged on every run, so the MLflow UI can filter and group.
KNOBS = ("data", "backbone", "freeze", "augment", "class_weight", "regularization",
         "lr_schedule", "optimizer")


def absolute_tracking_uri(uri: str) -> str:
    """Anchor a relative ``sqlite:///file.db`` at the launch directory; other URIs unchanged."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_absolute():
        return prefix + str((launch_dir() / uri[len(prefix):]).resolve())
    return uri


def knob_choices(cfg: DictConfig) -> dict[str, str]:
    """The chosen option of each knob group: Hydra's choices, or what the config itself says."""
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    found = {}
    for knob in KNOBS:
        choice = choices.get(knob)
        if choice is None and knob == "backbone":
            choice = cfg.backbone.name
        elif choice is None:
            target = OmegaConf.select(cfg, f"{knob}._target_") or OmegaConf.select(
                cfg, f"{knob}.scheduler._target_")
            choice = str(target).rsplit(".", 1)[-1] if target else None
        if choice is not None:
            found[knob] = str(choice)
    return found


def run_name(choices: dict[str, str]) -> str:
    """Readable and unique: ``<backbone>-<freeze>-<6 random hex>``.

    The suffix comes from ``uuid4`` (the OS's randomness), so seeding Python's ``random`` for a
    reproducible trial does not give every run the same name.
    """
    parts = [choices.get("backbone", "trial"), choices.get("freeze", "")]
    return "-".join(p for p in parts if p) + f"-{uuid.uuid4().hex[:6]}"


def flatten_config(cfg: DictConfig) -> dict[str, str]:
    """Every resolved config value under its dotted key, as MLflow param strings."""
    flat: dict[str, str] = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                visit(f"{prefix}.{key}" if prefix else str(key), value)
        elif isinstance(node, str):
            flat[prefix] = node
        else:
            flat[prefix] = json.dumps(node)

    visit("", OmegaConf.to_container(cfg, resolve=True))
    return flat


def mlflow_config(cfg: DictConfig) -> DictConfig | None:
    """``cfg.logger`` when it is MLflow's, None for ``logger=none``."""
    logger_cfg = cfg.get("logger")
    return logger_cfg if logger_cfg and logger_cfg.get("_target_") is not None else None


def check_store(cfg: DictConfig) -> None:
    """A local MLflow store (sqlite file or ``file:`` folder) must be creatable: a mistake
    there is a one-line error before a study or run exists. Servers are not contacted."""
    logger_cfg = mlflow_config(cfg)
    if logger_cfg is None:
        return
    uri = absolute_tracking_uri(logger_cfg.tracking_uri)
    database = sqlite_file(uri)
    parsed = urlparse(uri)
    folder = (database.parent if database is not None
              else Path(parsed.path) if parsed.scheme in ("", "file") else None)
    if folder is not None:
        check_folder(folder, "logger.tracking_uri", logger_cfg.tracking_uri)


def knob_tags(choices: dict[str, str]) -> dict[str, str]:
    return {f"plateau.{knob}": choice for knob, choice in choices.items()}


#: Study user attribute holding the MLflow run id of the study's parent run.
STUDY_RUN_ATTR = "mlflow_parent_run_id"
#: Study user attribute set by the worker that created the study and is making that run.
STUDY_RUN_PENDING_ATTR = "mlflow_parent_run_pending"


def tracking_client(cfg: DictConfig) -> tuple[Any, str] | None:
    """(MlflowClient, experiment id) for the config's logger; None for ``logger=none``."""
    logger_cfg = mlflow_config(cfg)
    if logger_cfg is None:
        return None
    from mlflow.tracking import MlflowClient

    uri = absolute_tracking_uri(logger_cfg.tracking_uri)
    with creating_sqlite(uri):  # the client creates or migrates a sqlite store's tables
        client = retrying("opening the MLflow store", lambda: MlflowClient(uri))
    name = logger_cfg.experiment_name

    def experiment_id() -> str:  # workers starting together may both create it
        experiment = client.get_experiment_by_name(name)
        return str(experiment.experiment_id if experiment is not None
                   else client.create_experiment(name))

    return client, retrying(f"opening MLflow experiment {name}", experiment_id)


def record_failed_run(cfg: DictConfig, tags: dict[str, str], message: str) -> str | None:
    """A FAILED run for a sweep trial that failed before its own run was created.

    Single runs never get one (a mistake leaves nothing behind), but a study's trial exists
    in the study, and MLflow should show it and why it failed. Returns the run id.
    """
    found = tracking_client(cfg)
    if found is None:
        return None
    client, experiment_id = found
    choices = knob_choices(cfg)
    run = client.create_run(experiment_id, run_name=run_name(choices), tags={
        **knob_tags(choices), **tags,
        "plateau.state": "FAIL", "plateau.error": message,
    })
    client.set_terminated(run.info.run_id, status="FAILED")
    return str(run.info.run_id)

"""The MLflow store: where it is, a client on it, and what a trial's run is named and tagged.

Lightning-free, so the sweeper and the report use it without importing the trial stack; a
trial's own run goes through Lightning's logger (:mod:`sweeps.job.logger`).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from errors import PlateauError, one_line
from sweeps.races import creating_sqlite, retrying, sqlite_file
from sweeps.storage import launch_dir, mask_password
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


def run_name(choices: dict[str, str], tags: dict[str, str] | None = None) -> str:
    """A name a list of runs can be read by.

    A sweep's trial: ``t005 gradual adamw`` (its Optuna trial number, freezing, optimizer),
    with its role when it has one (``t000 depth adamw (base)``). A single run:
    ``<backbone>-<freeze>-<6 random hex>``; the suffix comes from ``uuid4`` (the OS's
    randomness), so seeding Python's ``random`` does not give every run the same name.
    """
    tags = tags or {}
    number = tags.get("plateau.trial_number")
    if number is not None:
        knobs = " ".join(choices[k] for k in ("freeze", "optimizer") if k in choices)
        role = tags.get("plateau.role", "").removeprefix("portfolio:")
        return f"t{int(number):03d} {knobs}".rstrip() + (f" ({role})" if role else "")
    parts = [choices.get("backbone", "trial"), choices.get("freeze", "")]
    return "-".join(p for p in parts if p) + f"-{uuid.uuid4().hex[:6]}"


#: Settings logged as params of every run, beside the knobs' choices and the searched
#: values: what a user filters and compares runs by. The whole resolved config is the run's
#: ``config/config.yaml`` artifact.
RUN_SETTINGS = (
    "seed", "backbone.pretrained", "trainer.max_epochs", "data.batch_size", "data.image_size",
    "objective.metric",
    "optimizer.lr", "lr_schedule.backbone_lr_mult", "regularization.dropout",
    "regularization.weight_decay", "regularization.label_smoothing",
    "regularization.drop_path", "freeze.depth",
)


def param_text(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return value if isinstance(value, str) else json.dumps(value)


def run_params(cfg: DictConfig, searched: dict[str, Any] | None = None) -> dict[str, str]:
    """A run's MLflow params: each knob's choice by name (``freeze=gradual``), the
    :data:`RUN_SETTINGS` the config has, and the trial's searched values under their own
    names (which win: they are what the sampler chose)."""
    params = dict(knob_choices(cfg))
    for key in RUN_SETTINGS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            params[key] = param_text(value)
    for key, value in (searched or {}).items():
        params[key] = param_text(value)
    return params


def experiment_name(cfg: DictConfig) -> str:
    """The MLflow experiment of this run: a sweep's trials and study run go to the experiment
    named after the study (``hydra.sweeper.study_name``), so each study lists, sorts and
    compares on its own (trial numbers restart in every study); single runs, and sweeps
    without a study name, go to ``logger.experiment_name``."""
    logger_cfg = mlflow_config(cfg)
    assert logger_cfg is not None
    # the sweeper's config holds its hydra node; a job's is in HydraConfig
    hydra_cfg = cfg.get("hydra") or (HydraConfig.get() if HydraConfig.initialized() else None)
    if hydra_cfg is not None and hydra_cfg.mode != RunMode.RUN:
        study = hydra_cfg.sweeper.get("study_name")
        if study:
            return str(study)
    return str(logger_cfg.experiment_name)


def mlflow_config(cfg: DictConfig) -> DictConfig | None:
    """``cfg.logger`` when it is MLflow's, None for ``logger=none``."""
    logger_cfg = cfg.get("logger")
    return logger_cfg if logger_cfg and logger_cfg.get("_target_") is not None else None


#: MLflow's HTTP retries, unless the user set them: its defaults (7 retries, backoff factor
#: 2, 120 s timeout) keep a trial waiting about 4 minutes on a server that went away.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
#: Seconds the one check of a tracking server or database waits for an answer.
PROBE_TIMEOUT_S = 5.0


def check_store(cfg: DictConfig) -> None:
    """The MLflow store must be usable before a study or run exists: a local one (sqlite file
    or ``file:`` folder) creatable, a tracking server or database answering within
    :data:`PROBE_TIMEOUT_S`. Otherwise one line naming the URI. Bounds MLflow's own retries
    (:data:`HTTP_RETRY_DEFAULTS`) for this process and the trials it starts."""
    logger_cfg = mlflow_config(cfg)
    if logger_cfg is None:
        return
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    uri = absolute_tracking_uri(logger_cfg.tracking_uri)
    if urlparse(uri).scheme in ("http", "https"):
        _probe_server(uri)
        return
    if sqlite_file(uri) is None and "://" in uri and not uri.startswith("file:"):
        _probe_database(uri)
        return
    database = sqlite_file(uri)
    parsed = urlparse(uri)
    folder = (database.parent if database is not None
              else Path(parsed.path) if parsed.scheme in ("", "file") else None)
    if folder is not None:
        check_folder(folder, "logger.tracking_uri", logger_cfg.tracking_uri)


def _unreachable(uri: str, reason: str) -> PlateauError:
    return PlateauError(
        f"logger.tracking_uri={mask_password(uri)}: no MLflow tracking store answers there "
        f"({reason}); start the server or database, point logger.tracking_uri at one that "
        "runs, or log locally with logger.tracking_uri=sqlite:///mlflow.db")


def _probe_server(uri: str) -> None:
    """GET the server's ``/health`` once (MLflow's server answers ``OK``)."""
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=PROBE_TIMEOUT_S) as response:
            response.read(64)
    except urllib.error.HTTPError as err:  # it answers: a server (perhaps behind a proxy)
        if err.code >= 500:
            raise _unreachable(uri, f"HTTP {err.code} from {health}") from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise _unreachable(uri, one_line(reason, 160)) from err


def _probe_database(uri: str) -> None:
    """Connect once to a database store (``postgresql://``, ``mysql://`` ...)."""
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    connect_args = {"connect_timeout": int(PROBE_TIMEOUT_S)} if uri.startswith(
        ("postgresql", "mysql")) else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ImportError):
        return  # not a database URL: MLflow's own store plugins judge it
    try:
        with engine.connect():
            pass
    except ImportError as err:  # the dialect's driver is loaded on first connect
        raise PlateauError(
            f"logger.tracking_uri={mask_password(uri)}: its database driver is not installed "
            f"({one_line(err, 120)}); install it (e.g. pip install psycopg2-binary for "
            "postgresql+psycopg2://), or log locally with logger.tracking_uri=sqlite:///mlflow.db"
        ) from err
    except SQLAlchemyError as err:
        raise _unreachable(uri, one_line(getattr(err, "orig", err), 160)) from err
    finally:
        engine.dispose()


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
    name = experiment_name(cfg)

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
    run = client.create_run(experiment_id, run_name=run_name(choices, tags), tags={
        **knob_tags(choices), **tags,
        "plateau.state": "FAIL", "plateau.error": message,
    })
    client.set_terminated(run.info.run_id, status="FAILED")
    return str(run.info.run_id)

"""Publish a study's report: its files in a folder, a copy on the study's MLflow run.

At the end of a sweep the sweeper calls :func:`publish`; ``python -m doctor report`` calls
:func:`report_existing` for any study in a storage.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from doctor.settings import Thresholds
from errors import one_line
from sweeps import ledger, tracking
from sweeps.objectives import Objectives
from sweeps.report import files, pareto
from sweeps.report.diagnoses import changed, thresholds_of
from sweeps.report.model import StudyReport, build
from sweeps.report.terminal import print_summary
from sweeps.storage import DEFAULT_STUDY_NAME, load_study, resolve_storage_url

log = logging.getLogger(__name__)


def publish(study: optuna.Study, folder: Path, client: Any = None, run_id: str | None = None,
            objective: str = "objective", monitor: str = "val/loss",
            thresholds: Thresholds | None = None) -> StudyReport:
    """Write the report to ``folder``; with an MLflow ``client``, tag the parent run
    ``run_id`` (``plateau.top_knobs``, ``plateau.dominant_failure``), log the folder as its
    ``report/`` artifacts, and re-tag the trial runs whose label changed against the final
    field (:mod:`sweeps.report.diagnoses`)."""
    report = build(study, objective, monitor, thresholds)
    report.folder = files.write(report, folder)
    if client is None or not run_id:
        return report
    _retag(client, report)
    if report.pareto is not None:
        pareto.tag_runs(client, report.pareto)
    dominant = report.dominant_failure
    try:
        client.set_tag(run_id, "plateau.top_knobs", ",".join(report.top_knobs) or "none")
        client.set_tag(run_id, "plateau.dominant_failure", dominant[0] if dominant else "none")
        _log_reruns(client, run_id, report)
        if report.pareto is not None:
            client.set_tag(run_id, "plateau.knee_trial", str(report.pareto.knee.number))
            client.set_tag(run_id, "plateau.pareto_trials",
                           ",".join(str(t.number) for t in report.pareto.front))
        client.log_artifacts(run_id, str(report.folder), files.REPORT_DIR)
    except Exception as err:  # the files are written; MLflow only gets a copy
        log.warning("study report not logged to MLflow run %s: %s", run_id, one_line(err))
    else:
        report.run_id = run_id
    return report


def _log_reruns(client: Any, run_id: str, report: StudyReport) -> None:
    """The reruns' pick on the study run (the table itself is in ``report/reruns.csv``):
    metrics ``rerun_best_mean``, ``rerun_best_sd``, ``rerun_best_n``, tags
    ``plateau.rerun_pick`` and ``plateau.rerun_order_changed``."""
    if report.reruns is None:
        return
    pick = report.reruns.pick
    client.log_metric(run_id, "rerun_best_mean", pick.mean)
    if pick.sd is not None:
        client.log_metric(run_id, "rerun_best_sd", pick.sd)
    client.log_metric(run_id, "rerun_best_n", pick.n)
    client.set_tag(run_id, "plateau.rerun_pick", str(pick.trial.number))
    client.set_tag(run_id, "plateau.rerun_order_changed", str(report.reruns.changed).lower())


def _retag(client: Any, report: StudyReport) -> None:
    """``plateau.diagnosis`` and its reason on the runs of trials whose label changed."""
    for trial in changed(report.trials, report.labels):
        trial_run = trial.user_attrs.get(ledger.ATTR_RUN_ID)
        if not trial_run:
            continue
        label = report.labels[trial.number]
        try:
            client.set_tag(trial_run, "plateau.diagnosis", label.label)
            client.set_tag(trial_run, "plateau.diagnosis_reason", label.explained())
        except Exception as err:  # the report still says it
            log.warning("trial %d: MLflow run %s not re-tagged: %s", trial.number, trial_run,
                        one_line(err))


def objective_label(cfg: DictConfig) -> str:
    """What a trial returns: the best epoch's ``objective.metric`` (``<metric>_best``; the
    first of several)."""
    if OmegaConf.select(cfg, "objective.metric") is None:
        return "objective"
    return f"{Objectives.of(cfg).first}_best"


def report_existing(cfg: DictConfig, out_dir: str | Path) -> Path:
    """Write the report of the study ``cfg.hydra.sweeper`` names to ``out_dir``.

    ``cfg`` is a config composed from ``conf/`` with its ``hydra`` node. With an MLflow
    logger, the study's parent run gets the report too. Returns the report folder.

    Raises:
        PlateauError: when the storage holds no such study.
    """
    sweeper = cfg.hydra.sweeper
    study = load_study(resolve_storage_url(sweeper.storage),
                       sweeper.study_name or DEFAULT_STUDY_NAME)
    run_id = study.user_attrs.get(tracking.STUDY_RUN_ATTR)
    found = tracking.tracking_client(cfg) if run_id else None
    report = publish(study, Path(out_dir), found[0] if found else None, run_id,
                     objective_label(cfg), str(sweeper.get("monitor", "val/loss")),
                     thresholds_of(cfg))
    print_summary(report)
    assert report.folder is not None
    return report.folder

"""The study's MLflow parent run: one per study, whoever created the study.

Real stores: an Optuna sqlite study and an MLflow sqlite store in tmp dirs.
"""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import compose_config
from sweeps import tracking
from sweeps.report import study_run
from sweeps.report.study_run import StudyRun


@pytest.fixture
def cfg(tmp_path: Path):
    return compose_config([f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    return optuna.create_study(study_name="plateau", storage=f"sqlite:///{tmp_path / 's.db'}",
                               direction="maximize")


def parent_runs(tmp_path: Path) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("plateau")
    return client.search_runs([experiment.experiment_id])


def open_in_thread(cfg, study: optuna.Study, created: bool) -> dict[str, StudyRun]:
    """``StudyRun.open`` in a thread, given 60 s to return (its wait is made 1 hour)."""
    opened: dict[str, StudyRun] = {}
    thread = threading.Thread(target=lambda: opened.setdefault(
        "run", StudyRun.open(cfg, study, "sqlite:///s.db", None, None, created)))
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "waited for a parent run nobody makes"
    return opened


def test_study_made_outside_plateau_gets_its_parent_run_without_waiting(
        cfg, study: optuna.Study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """e.g. ``optuna.create_study`` to enqueue known-good configs, then ``sweep.py -m``."""
    monkeypatch.setattr(study_run, "PARENT_WAIT_S", 3600.0)
    study.enqueue_trial({"optimizer.lr": 0.01})
    opened = open_in_thread(cfg, study, created=False)
    (parent,) = parent_runs(tmp_path)
    assert opened["run"].run_id == parent.info.run_id
    assert study.user_attrs[tracking.STUDY_RUN_ATTR] == parent.info.run_id


def test_worker_loading_a_new_study_waits_for_its_creators_parent_run(
        cfg, study: optuna.Study, tmp_path: Path) -> None:
    creator = StudyRun.open(cfg, study, "sqlite:///s.db", None, None, created=True)
    assert study.user_attrs[tracking.STUDY_RUN_PENDING_ATTR] is True
    study.set_user_attr(tracking.STUDY_RUN_ATTR, "")  # as between the mark and the run
    opened: dict[str, StudyRun] = {}
    loader = threading.Thread(target=lambda: opened.setdefault(
        "run", StudyRun.open(cfg, study, "sqlite:///s.db", None, None, created=False)))
    loader.start()
    loader.join(timeout=2 * study_run.MARK_WAIT_S)
    assert loader.is_alive(), "a marked study's loader made a parent run of its own"
    study.set_user_attr(tracking.STUDY_RUN_ATTR, creator.run_id)
    loader.join(timeout=60)
    assert opened["run"].run_id == creator.run_id
    assert [r.info.run_id for r in parent_runs(tmp_path)] == [creator.run_id]


def test_logger_none_makes_no_parent_run_and_no_mark(study: optuna.Study) -> None:
    run = StudyRun.open(compose_config(["logger=none"]), study, "sqlite:///s.db", None, None,
                        created=True)
    assert run.run_id is None
    assert tracking.STUDY_RUN_PENDING_ATTR not in study.user_attrs

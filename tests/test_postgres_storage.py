"""A sweep against a real PostgreSQL server (``postgres_url`` in conftest): the study lives
there, its password nowhere else -- whether it is typed in the storage URL or comes from an
environment variable through ``${oc.env:...}``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from benchmarks.throwaway_postgres import PASSWORD
from conftest import ROOT

PASSWORD_ENV = "PLATEAU_TEST_DB_PASSWORD"


@pytest.mark.slow
@pytest.mark.parametrize("given", ["in_url", "from_env"])
def test_sweep_on_postgres_keeps_the_password_out_of_output_and_mlflow(
        postgres_url: str, tmp_path: Path, given: str) -> None:
    study_name = f"secret-{given}"
    storage = postgres_url
    if given == "from_env":
        storage = postgres_url.replace(PASSWORD, f"${{oc.env:{PASSWORD_ENV}}}")
        assert PASSWORD not in storage
    result = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "-m", "data=synthetic", "backbone=test_resnet",
         "trainer=cpu", "trainer.max_epochs=1", "hydra.sweeper.n_trials=2",
         f"hydra.sweeper.study_name={study_name}", f"hydra.sweeper.storage={storage}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, PASSWORD_ENV: PASSWORD})
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name=study_name, storage=postgres_url)
    assert len(study.trials) == 2
    assert PASSWORD not in result.stdout + result.stderr
    assert "plateau:***@127.0.0.1" in result.stdout + result.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(study_name).experiment_id])
    assert len(runs) == 3  # the study's run and two trials, in the study's experiment
    for run in runs:
        values = [*run.data.params.values(), *run.data.tags.values()]
        assert not any(PASSWORD in str(v) for v in values), run.info.run_name
    # every file the sweep wrote: Hydra's saved configs and logs, best_trial.yaml, the report,
    # the MLflow database and every artifact (config/config.yaml of each run, report plots)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "hydra.yaml" for p in written)
    assert any(p.name == "mlflow.db" for p in written)
    assert any(p.name == "config.yaml" and "artifacts" in p.parts for p in written)
    for path in written:
        assert PASSWORD.encode() not in path.read_bytes(), path

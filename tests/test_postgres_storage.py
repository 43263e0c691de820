"""A sweep against a real PostgreSQL server (``postgres_url`` in conftest): the study lives
there, its password nowhere else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import PG_PASSWORD as PASSWORD
from conftest import ROOT


@pytest.mark.slow
def test_sweep_on_postgres_keeps_the_password_out_of_output_and_mlflow(
        postgres_url: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "sweep.py"), "-m", "data=synthetic", "backbone=test_resnet",
         "trainer=cpu", "trainer.max_epochs=1", "hydra.sweeper.n_trials=2",
         f"hydra.sweeper.storage={postgres_url}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="plateau", storage=postgres_url)
    assert len(study.trials) == 2
    assert PASSWORD not in result.stdout + result.stderr
    assert "plateau:***@127.0.0.1" in result.stdout + result.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("plateau").experiment_id])
    assert len(runs) == 3  # the study's run and two trials
    for run in runs:
        values = [*run.data.params.values(), *run.data.tags.values()]
        assert not any(PASSWORD in str(v) for v in values), run.info.run_name
        for artifact in client.list_artifacts(run.info.run_id, "config"):
            path = client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path))
            assert PASSWORD not in Path(path).read_text()
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".yaml", ".log")]
    assert any(p.name == "hydra.yaml" for p in written)
    for path in written:  # Hydra's saved configs, logs, best_trial.yaml
        assert PASSWORD not in path.read_text(errors="replace"), path

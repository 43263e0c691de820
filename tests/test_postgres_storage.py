"""A sweep against a real PostgreSQL server: the study lives there, its password nowhere else.

The fixture starts a throwaway server (initdb + pg_ctl from Debian's postgresql package,
which .ci/run installs when missing) on a free loopback port, as the ``postgres`` user when
run as root (PostgreSQL refuses to run as root), and stops it afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT

PASSWORD = "s3cr3t-Pa55"


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    assert found, f"{name} not found: install Debian's postgresql package (.ci/run does)"
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="plateau-pg-"))
    (home / "pw").write_text(PASSWORD)
    if as_user:
        shutil.chown(home, "postgres")
        shutil.chown(home / "pw", "postgres")
    data, port = home / "data", _free_port()
    subprocess.run([*as_user, _pg_bin("initdb"), "-D", str(data), "-U", "plateau",
                    f"--pwfile={home / 'pw'}", "--auth=scram-sha-256"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-w",
                    "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://plateau:{PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


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

"""Parallel launchers keep every slot busy, and the SLURM launcher config composes.

hydra-optuna-sweeper hands its launcher batches of ``n_jobs`` trials and waits for the
slowest of each batch (Hydra #3091). plateau's slots each hand the launcher one trial and ask
the next as soon as it ends, so a long trial never holds the others back.
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from test_sweep import TINY, run_sweep, search_config, storage_url, study_trials

from conftest import compose_config
from sweeps.slurm import QueueWatcher

LONG, SHORT = 300, 1  # a tiny epoch takes ~0.05 s, a job's start-up ~10 s


@pytest.mark.slow
def test_parallel_slots_run_short_trials_beside_a_long_one(tmp_path: Path) -> None:
    # Trial 0 runs 300 epochs, trials 1-3 one epoch each, on 2 joblib slots. In batches of
    # two, trials 2 and 3 would wait for trial 0 to end; with slots they start beside it.
    conf = search_config(tmp_path / "conf", "epochs", {
        "trainer.max_epochs": f"choice({LONG}, {SHORT})", "freeze": "head_only"})
    study = optuna.create_study(study_name="plateau", storage=storage_url(tmp_path),
                                direction="maximize")
    for epochs in (LONG, SHORT, SHORT, SHORT):
        study.enqueue_trial({"trainer.max_epochs": epochs})
    sweep = run_sweep("-m", f"--config-dir={conf}", "search=epochs", *TINY, "logger=none",
                      "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=4",
                      "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=2", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.output[-3000:]
    trials = sorted(study_trials(tmp_path), key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert [len(t.intermediate_values) for t in trials] == [LONG, SHORT, SHORT, SHORT]
    long_end = trials[0].datetime_complete
    assert long_end is not None
    for short in trials[1:]:
        assert short.datetime_start is not None
        assert short.datetime_start < long_end, f"trial {short.number} waited for trial 0"
    # each job is its own process, told its trial by the sweeper
    assert len({t.user_attrs["owner"] for t in trials}) >= 2


def test_slurm_launcher_config_composes_with_cluster_settings() -> None:
    cfg = compose_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                         keep_hydra=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert isinstance(launcher, dict)
    # Hydra's SLURM launcher, waiting on job states through sweeps.slurm
    assert launcher["_target_"] == "hydra_plugins.plateau_sweeper.slurm_launcher.SlurmLauncher"
    assert launcher["partition"] == "gpu"
    assert launcher["gpus_per_task"] == 1
    assert launcher["cpus_per_task"] >= 1
    assert launcher["mem_gb"] >= 1
    assert launcher["timeout_min"] >= 1
    assert launcher["array_parallelism"] >= 1
    # a preempted or timed-out trial is requeued, not lost
    assert launcher["max_num_timeout"] >= 1
    assert launcher["additional_parameters"]["requeue"] is True
    # the sweeper is still plateau's, so the trials report to the study from the cluster
    assert cfg.hydra.sweeper._target_.endswith("PlateauSweeper")


def test_slurm_launcher_off_a_cluster_is_one_line_before_any_study(tmp_path: Path) -> None:
    # off a cluster: no srun on the PATH (this machine may have SLURM: tests/test_slurm.py)
    sweep = run_sweep("-m", *TINY, "logger=none", "hydra/launcher=slurm",
                      "hydra.sweeper.n_trials=1", cwd=tmp_path,
                      env={"PATH": str(Path(sys.executable).parent)})
    assert sweep.returncode == 2
    assert "Traceback" not in sweep.output
    assert "hydra/launcher=slurm" in sweep.output
    assert "submitit_local" in sweep.output
    assert not (tmp_path / "plateau.db").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_slurm_job_state_stays_unknown_while_slurm_cannot_be_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # neither sacct nor squeue answers (here: not on the PATH): the job is not declared ended
    monkeypatch.setenv("PATH", str(tmp_path))
    watcher = QueueWatcher()
    assert watcher.get_state("12", mode="force") == "UNKNOWN"
    assert not watcher.is_done("12", mode="cache")

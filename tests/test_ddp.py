"""A DDP trial inside a sweep (``trainer.devices=2``, two CPU processes over gloo).

Lightning starts the second rank by re-running the command line; plateau points it at the
job's own saved config, so the rank trains its shard of this trial instead of starting a sweep
of its own. Only rank zero reports to the study and to MLflow; both ranks stop together when
the trial is pruned.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState
from test_sweep import (
    FLAT_LR,
    GOOD_LR,
    TINY,
    mlflow_runs,
    run_sweep,
    search_config,
)
from test_workers import storage_url

from sweeps.devices import processes as processes_of
from sweeps.storage import open_storage

EPOCHS = 4


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_ddp_trials_report_once_and_stop_together(tmp_path: Path, storage: str) -> None:
    url = storage_url(storage, tmp_path, postgres=lambda: '')  # file storages only
    conf = search_config(tmp_path / "conf", "prune", {
        "optimizer.lr": f"choice({GOOD_LR}, {FLAT_LR})", "freeze": "head_only"})
    study = optuna.create_study(study_name="plateau", storage=open_storage(url),
                                direction="maximize")
    for lr in (GOOD_LR, FLAT_LR):
        study.enqueue_trial({"optimizer.lr": lr})
    sweep = run_sweep("-m", f"--config-dir={conf}", "search=prune", *TINY, "trainer.devices=2",
                      f"trainer.max_epochs={EPOCHS}", "trainer.deterministic=true",
                      f"hydra.sweeper.storage={url}", "hydra.sweeper.n_trials=2",
                      "hydra.sweeper.pruner.patience=1", "hydra.sweeper.pruner.n_startup_trials=1",
                      # Lightning's info lines name each rank as it starts (below)
                      "verbose=true", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.output[-3000:]
    assert "Traceback" not in sweep.output
    assert "already reported" not in sweep.output  # one report per epoch: rank zero's

    trials = {t.params["optimizer.lr"]: t for t in study.get_trials(deepcopy=False)}
    good, flat = trials[GOOD_LR], trials[FLAT_LR]
    assert good.state == TrialState.COMPLETE
    assert sorted(good.intermediate_values) == list(range(EPOCHS))
    assert flat.state == TrialState.PRUNED
    assert len(flat.intermediate_values) < EPOCHS

    # a real second rank trained each trial, quietly, in the trial's own job folder
    rank_logs = sorted(tmp_path.glob("multirun/*/*/*/train_ddp_process_1.log"))
    assert len(rank_logs) == 2
    for log in rank_logs:
        assert "GLOBAL_RANK: 1" in log.read_text()
    assert not (tmp_path / "outputs").exists()
    # one MLflow run per trial (rank zero's) under the study's run, none from rank one
    runs = mlflow_runs(tmp_path)
    assert len(runs) == 3
    assert sorted(r.data.tags.get("plateau.state", "") for r in runs) == [
        "", "COMPLETE", "PRUNED"]


@pytest.mark.parametrize(("devices", "processes"), [
    ("auto", 1), (1, 1), (2, 2), ("2", 2), ([3], 1), ([0, 1], 2), ("0,1,2", 3), ("[0,1]", 2),
    (-1, 1),
])
def test_ddp_processes_counts_the_ranks_a_trial_trains_in(devices: object,
                                                           processes: int) -> None:
    """What decides whether a sweep's trials are DDP trials (which the basic launcher alone
    can run: their extra ranks re-run sweep.py)."""
    assert processes_of(OmegaConf.create({"devices": devices})) == processes

"""``python sweep.py -m`` end to end: pruning in launched jobs, MLflow nesting, the budget, the
storage URL's password, lightning-hydra-template search files, and the best trial's export.

Trials are tiny (generated stripes, timm's ``test_resnet``, CPU); each sweep runs in a tmp
launch directory, so its study (``plateau.db``) and runs (``mlflow.db``) land there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from conftest import ROOT
from sweeps.storage import mask_password

TINY = ["data=synthetic", "backbone=test_resnet", "trainer=cpu"]

#: Head-only training at this LR lowers val loss every epoch; at FLAT_LR it stays flat.
GOOD_LR, FLAT_LR = 0.01, 1e-9
PRUNE_EPOCHS = 5
LR_SEARCH = {"optimizer.lr": "tag(log, interval(1e-4, 1e-2))"}
LAUNCHERS = {
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local"],
}


@dataclass
class Sweep:
    """A finished ``sweep.py`` process: where it ran, its pid, exit code and output."""

    cwd: Path
    pid: int
    returncode: int
    output: str


def run_sweep(*args: str, cwd: Path, timeout: float = 300,
              env: dict[str, str] | None = None) -> Sweep:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}
    with subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    return Sweep(cwd, proc.pid, proc.returncode, output)


def write_config(conf_dir: Path, group: str, name: str, body: str) -> Path:
    """``<conf_dir>/<group>/<name>.yaml`` holding a ``@package _global_`` overlay."""
    path = conf_dir / group / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# @package _global_\n{body}")
    return conf_dir


def search_config(conf_dir: Path, name: str, params: dict[str, str]) -> Path:
    """A search file ``search=<name>`` that replaces conf/search/default.yaml."""
    lines = "".join(f"      {key}: {value}\n" for key, value in params.items())
    return write_config(conf_dir, "search", name, f"hydra:\n  sweeper:\n    params:\n{lines}")


def storage_url(cwd: Path) -> str:
    return f"sqlite:///{cwd / 'plateau.db'}"


def study_trials(cwd: Path, study_name: str = "plateau") -> list[FrozenTrial]:
    return optuna.load_study(study_name=study_name, storage=storage_url(cwd)).trials


def finished(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state.is_finished()]


def mlflow_runs(cwd: Path) -> list:
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("plateau")
    return client.search_runs([experiment.experiment_id])


def owner_pid(trial: FrozenTrial) -> int:
    return int(trial.user_attrs["owner"].rpartition(":")[2])


# -- pruning under launchers that run each job in another process -------------------------


def run_pruning_sweep(launcher: str, cwd: Path) -> Sweep:
    """Two head-only trials, enqueued so the improving one finishes before the flat one."""
    conf = search_config(cwd / "conf", "prune", {"optimizer.lr": f"choice({GOOD_LR}, {FLAT_LR})",
                                                 "freeze": "head_only"})
    study = optuna.create_study(study_name="plateau", storage=storage_url(cwd),
                                direction="maximize")
    for lr in (GOOD_LR, FLAT_LR):
        study.enqueue_trial({"optimizer.lr": lr})
    sweep = run_sweep("-m", f"--config-dir={conf}", "search=prune", *TINY,
                      f"trainer.max_epochs={PRUNE_EPOCHS}", "trainer.deterministic=true",
                      "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner.patience=1",
                      "hydra.sweeper.pruner.n_startup_trials=1", *LAUNCHERS[launcher], cwd=cwd)
    assert sweep.returncode == 0, sweep.output[-3000:]
    return sweep


#: Tests reading the pruning sweeps: on one test worker (conftest), so each sweep runs once.
ON_PRUNING_SWEEPS = pytest.mark.xdist_group("pruning_sweeps")


@pytest.fixture(scope="module")
def pruning_sweeps(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Sweep]:
    """``pruning_sweeps(launcher)``: the pruning sweep under that launcher, run once."""
    done: dict[str, Sweep] = {}

    def get(launcher: str) -> Sweep:
        if launcher not in done:
            done[launcher] = run_pruning_sweep(launcher, tmp_path_factory.mktemp(launcher))
        return done[launcher]

    return get


@pytest.fixture(scope="module", params=list(LAUNCHERS))
def pruning_sweep(request: pytest.FixtureRequest,
                  pruning_sweeps: Callable[[str], Sweep]) -> Sweep:
    return pruning_sweeps(request.param)


@ON_PRUNING_SWEEPS
@pytest.mark.slow
def test_flat_trial_is_pruned_inside_the_launched_child_process(pruning_sweep: Sweep) -> None:
    trials = {t.params["optimizer.lr"]: t for t in study_trials(pruning_sweep.cwd)}
    flat, good = trials[FLAT_LR], trials[GOOD_LR]
    assert flat.state == TrialState.PRUNED
    assert len(flat.intermediate_values) < PRUNE_EPOCHS
    # why, with the rule and its numbers: its val/loss against the complete trial's
    assert " vs the median " in flat.user_attrs["prune_reason"]
    assert "StagnationPruner after 3 warm-up epochs" in flat.user_attrs["prune_reason"]
    # A pruned trial carries its diagnosis (a flat loss: no progress) and its stopping epoch.
    assert flat.user_attrs["diagnosis"] == "no_progress"
    assert flat.user_attrs["stopped_epoch"] == len(flat.intermediate_values) - 1
    assert owner_pid(flat) != pruning_sweep.pid  # reported and pruned by the job's process
    # its value, as Optuna's tools show it, is its best F1 so far, not the last -val/loss
    assert flat.value == pytest.approx(flat.user_attrs["best_objective"])
    assert 0.0 <= flat.value <= 1.0
    assert good.state == TrialState.COMPLETE
    values = [good.intermediate_values[epoch] for epoch in sorted(good.intermediate_values)]
    assert values[-1] > values[0]  # improving (reported as -val/loss in a maximized study)


@ON_PRUNING_SWEEPS
@pytest.mark.slow
def test_trial_runs_nest_under_one_study_run_tagged_with_their_state(
        pruning_sweep: Sweep) -> None:
    runs = mlflow_runs(pruning_sweep.cwd)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == "study-plateau"
    assert parent.info.status == "FINISHED"
    for tag in ("plateau.study", "plateau.sampler", "plateau.pruner", "plateau.storage"):
        assert parent.data.tags[tag], tag
    trials = study_trials(pruning_sweep.cwd)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1 == len(trials) == 2
    trial_of_run = {t.user_attrs["mlflow_run_id"]: t for t in trials}
    assert {c.info.run_id for c in children} == set(trial_of_run)
    status_of = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    for child in children:
        state = trial_of_run[child.info.run_id].state.name
        assert child.data.tags["plateau.state"] == state
        assert child.info.status == status_of[state]  # none left RUNNING
    metrics = parent.data.metrics
    best = max(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert metrics["best_value"] == pytest.approx(best)
    assert (metrics["trials_complete"], metrics["trials_pruned"], metrics["trials_fail"],
            metrics["trials_running"]) == (1, 1, 0, 0)


# -- the storage URL's password ------------------------------------------------------------

MASKED = [
    ("postgresql://user:secret@host:5432/db", "postgresql://user:***@host:5432/db"),
    ("mysql+pymysql://optuna:p%40ss:w0rd@db.example.com/optuna",
     "mysql+pymysql://optuna:***@db.example.com/optuna"),
    ("postgresql://:secret@host/db", "postgresql://:***@host/db"),  # empty user name
    ("postgresql://user@host/db", "postgresql://user@host/db"),
    ("postgresql://host:5432/db", "postgresql://host:5432/db"),
    ("sqlite:////tmp/plateau.db", "sqlite:////tmp/plateau.db"),
    ("journal:///tmp/plateau.log", "journal:///tmp/plateau.log"),
    ("copy postgresql://a:x1@h1/db to mysql://b:y2@h2/db",
     "copy postgresql://a:***@h1/db to mysql://b:***@h2/db"),
]


@pytest.mark.parametrize(("text", "expected"), MASKED)
def test_mask_password_replaces_only_the_password(text: str, expected: str) -> None:
    assert mask_password(text) == expected


@ON_PRUNING_SWEEPS
@pytest.mark.slow
def test_study_run_tags_the_storage_url_masked(pruning_sweep: Sweep) -> None:
    runs = mlflow_runs(pruning_sweep.cwd)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.tags["plateau.storage"] == mask_password(storage_url(pruning_sweep.cwd))


@pytest.mark.slow
def test_unreachable_storage_error_masks_the_password_and_leaves_no_run(
        tmp_path: Path) -> None:
    sweep = run_sweep("-m", "hydra.sweeper.storage=postgresql://user:secret@127.0.0.1:1/db",
                      *TINY, "trainer.max_epochs=1", "hydra.sweeper.n_trials=1", cwd=tmp_path,
                      timeout=120)
    assert sweep.returncode == 2, sweep.output[-3000:]
    assert "postgresql://user:***@127.0.0.1:1/db" in sweep.output
    assert "secret" not in sweep.output
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_preflight_error_stops_the_sweep_before_its_study_or_runs_exist(tmp_path: Path) -> None:
    sweep = run_sweep("-m", *TINY, "freeze=none",
                      "freeze._target_=tests.faulty_parts.FreezeEverything",
                      "trainer.max_epochs=1", "hydra.sweeper.n_trials=2", cwd=tmp_path,
                      timeout=120)
    assert sweep.returncode == 2, sweep.output[-3000:]
    assert "plateau: error: preflight: trainable: no parameter trains" in sweep.output
    assert "Traceback" not in sweep.output
    assert not (tmp_path / "plateau.db").exists()
    assert not (tmp_path / "mlflow.db").exists()


# -- the budget ----------------------------------------------------------------------------


@pytest.mark.slow
def test_n_trials_is_the_studys_total_budget_across_reruns(tmp_path: Path) -> None:
    conf = search_config(tmp_path / "conf", "lr", LR_SEARCH)
    args = ["-m", f"--config-dir={conf}", "search=lr", *TINY, "trainer.max_epochs=1"]
    first = run_sweep(*args, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert first.returncode == 0, first.output[-3000:]
    assert len(finished(study_trials(tmp_path))) == 3

    again = run_sweep(*args, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert again.returncode == 0, again.output[-3000:]
    assert len(study_trials(tmp_path)) == 3  # nothing asked, nothing launched
    assert "3 complete, 0 pruned, 0 fail" in again.output  # the table is still printed

    more = run_sweep(*args, "hydra.sweeper.n_trials=5", cwd=tmp_path)
    assert more.returncode == 0, more.output[-3000:]
    trials = study_trials(tmp_path)
    assert len(trials) == len(finished(trials)) == 5


@pytest.mark.slow
def test_null_study_name_runs_trials_in_the_default_study_beside_other_studies(
        tmp_path: Path) -> None:
    optuna.create_study(study_name="other", storage=storage_url(tmp_path))
    conf = search_config(tmp_path / "conf", "lr", LR_SEARCH)
    sweep = run_sweep("-m", f"--config-dir={conf}", "search=lr", *TINY, "trainer.max_epochs=1",
                      "hydra.sweeper.study_name=null", "hydra.sweeper.n_trials=1", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.output[-3000:]
    assert [t.state for t in study_trials(tmp_path)] == [TrialState.COMPLETE]


# -- lightning-hydra-template's hparams_search files ---------------------------------------

LHT_SEARCH = """
defaults:
  - override /hydra/sweeper: plateau

optimized_metric: "val/acc"

hydra:
  mode: "MULTIRUN"
  sweeper:
    storage: null
    study_name: null
    n_jobs: 1
    direction: maximize
    n_trials: 3
    sampler:
      _target_: optuna.samplers.TPESampler
      seed: 1234
      n_startup_trials: 2
    params:
      optimizer.lr: interval(0.0001, 0.1)
      data.batch_size: choice(8, 16)
      regularization.weight_decay: tag(log, interval(1e-5, 1e-2))
"""


@pytest.mark.slow
def test_lht_hparams_search_file_runs_its_own_search_space(tmp_path: Path) -> None:
    conf = write_config(tmp_path / "conf", "hparams_search", "lht", LHT_SEARCH)
    sweep = run_sweep(f"--config-dir={conf}", "hparams_search=lht", *TINY,
                      "trainer.max_epochs=2", cwd=tmp_path)
    assert sweep.returncode == 0, sweep.output[-3000:]
    trials = finished(study_trials(tmp_path))
    assert len(trials) == 3
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for trial in trials:  # the file's params replace the default search space
        assert set(trial.params) == {"optimizer.lr", "data.batch_size",
                                     "regularization.weight_decay"}
        # optimized_metric: "val/acc" is the objective: each trial's value is its best val/acc
        history = client.get_metric_history(trial.user_attrs["mlflow_run_id"], "val/acc")
        assert trial.value == pytest.approx(max(m.value for m in history))


# -- the best trial's config ---------------------------------------------------------------


@ON_PRUNING_SWEEPS
@pytest.mark.slow
def test_best_trial_config_reruns_to_the_best_value(
        pruning_sweeps: Callable[[str], Sweep], tmp_path: Path) -> None:
    sweep = pruning_sweeps("joblib")
    (best_config,) = (sweep.cwd / "multirun").glob("*/*/best_trial.yaml")
    rerun = run_sweep(f"--config-path={best_config.parent}", "--config-name=best_trial",
                      cwd=tmp_path)
    assert rerun.returncode == 0, rerun.output[-3000:]
    found = re.search(r"objective val/f1_macro_best = ([0-9.]+)", rerun.output)
    assert found, rerun.output[-3000:]
    best = optuna.load_study(study_name="plateau", storage=storage_url(sweep.cwd))
    assert float(found[1]) == pytest.approx(best.best_value, abs=0.02)

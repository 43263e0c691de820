"""What a user sees of a real 3-trial sweep: its console, the MLflow UI's data, optuna-dashboard.

One sweep of tiny trials (head-only, twice at a learning rate that learns, then once at one
that leaves the loss flat and is pruned) runs once in a named study; the tests read its
captured console output, its MLflow store through MLflow's client, and its study through
Optuna and optuna-dashboard's own WSGI application.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import optuna
import optuna_dashboard
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from test_sweep import (
    FLAT_LR,
    GOOD_LR,
    TINY,
    Sweep,
    run_sweep,
    search_config,
    storage_url,
    write_config,
)

STUDY = "viewers"
EPOCHS = 5
ON_VIEWER_SWEEP = pytest.mark.xdist_group("viewer_sweep")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    cwd = tmp_path_factory.mktemp("viewers")
    conf = search_config(cwd / "conf", "lrs", {
        "optimizer.lr": f"choice({GOOD_LR}, {FLAT_LR})", "freeze": "head_only"})
    study = optuna.create_study(study_name=STUDY, storage=storage_url(cwd),
                                direction="maximize")
    for lr in (GOOD_LR, GOOD_LR, FLAT_LR):  # the flat one last: the others set the median
        study.enqueue_trial({"optimizer.lr": lr})
    done = run_sweep("-m", f"--config-dir={conf}", "search=lrs", *TINY,
                     f"trainer.max_epochs={EPOCHS}", "trainer.deterministic=true",
                     f"hydra.sweeper.study_name={STUDY}", "hydra.sweeper.n_trials=3",
                     "hydra.sweeper.pruner.patience=1", "hydra.sweeper.pruner.n_startup_trials=1",
                     cwd=cwd, env={"COLUMNS": "80"})
    assert done.returncode == 0, done.output[-3000:]
    return done


def trials(sweep: Sweep) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY, storage=storage_url(sweep.cwd)).trials


def runs(sweep: Sweep) -> tuple[MlflowClient, list[Any]]:
    client = MlflowClient(f"sqlite:///{sweep.cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(STUDY)  # one experiment per study
    assert experiment is not None
    return client, client.search_runs([experiment.experiment_id])


# -- the console ----------------------------------------------------------------------------

PROGRESS = re.compile(r"^trial (\d) (COMPLETE|PRUNED|FAIL) [0-9.]+, \d/5 epochs · (\d)/3 finished "
                      r"· best [0-9.]+ \(trial \d\) · \d complete, \d pruned, \d failed · "
                      r"\S+ elapsed", re.MULTILINE)


@ON_VIEWER_SWEEP
@pytest.mark.slow
def test_console_has_one_progress_line_per_trial_and_no_library_chatter(sweep: Sweep) -> None:
    lines = PROGRESS.findall(sweep.output)
    assert [(number, done) for number, _, done in lines] == [("0", "1"), ("1", "2"), ("2", "3")]
    assert dict((n, state) for n, state, _ in lines)["2"] == "PRUNED"
    for chatter in ("litlogger", "LeafSpec", "GPU available", "Launching 1 jobs", "trial_id",
                    "Epoch 0", "Creating initial MLflow database"):
        assert chatter not in sweep.output, chatter


@ON_VIEWER_SWEEP
@pytest.mark.slow
def test_commands_to_copy_are_whole_lines(sweep: Sweep) -> None:
    rerun = re.search(r"^re-run it: (python sweep\.py .*)$", sweep.output, re.MULTILINE)
    assert rerun is not None
    assert "--config-name=best_trial" in rerun.group(1)
    assert len(rerun.group(0)) > 80  # longer than the terminal, and still one line
    db = sweep.cwd / "mlflow.db"
    assert (f"mlflow ui --backend-store-uri sqlite:///{db} --host 127.0.0.1 --port 5000"
            in sweep.output.splitlines()[-2])
    assert sweep.output.splitlines()[-1].strip() == (
        f"optuna-dashboard {storage_url(sweep.cwd)} --host 127.0.0.1 --port 8080")


# -- MLflow ---------------------------------------------------------------------------------


@ON_VIEWER_SWEEP
@pytest.mark.slow
def test_trial_runs_are_named_and_carry_the_searched_values_by_name(sweep: Sweep) -> None:
    _, found = runs(sweep)
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3
    for run in children:
        number = int(run.data.tags["plateau.trial_number"])
        assert run.info.run_name == f"t{number:03d} head_only adamw"
        params = run.data.params
        assert params["freeze"] == "head_only"
        assert params["optimizer"] == "adamw"
        assert float(params["optimizer.lr"]) in (GOOD_LR, FLAT_LR)
        assert params["backbone"] == "test_resnet"
        assert params["data"] == "synthetic"
        assert params["trainer.max_epochs"] == str(EPOCHS)
        assert not [k for k in params if "_target_" in k or k.startswith(("doctor.", "logger."))]
        assert "trial_id" not in params
        assert len(params) < 30


@ON_VIEWER_SWEEP
@pytest.mark.slow
def test_a_pruned_trial_is_apart_in_the_runs_table_and_metrics_step_by_epoch(
        sweep: Sweep) -> None:
    client, found = runs(sweep)
    by_number = {t.number: t for t in trials(sweep)}
    for run in (r for r in found if "mlflow.parentRunId" in r.data.tags):
        trial = by_number[int(run.data.tags["plateau.trial_number"])]
        assert run.info.status == ("KILLED" if trial.state == TrialState.PRUNED else "FINISHED")
        history = client.get_metric_history(run.info.run_id, "val/loss")
        assert [m.step for m in history] == list(range(len(trial.intermediate_values)))
    assert sum(t.state == TrialState.PRUNED for t in by_number.values()) == 1


@ON_VIEWER_SWEEP
@pytest.mark.slow
def test_study_run_holds_the_search_space_and_a_summary_with_a_link_to_the_best(
        sweep: Sweep) -> None:
    _, found = runs(sweep)
    (study_run,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    params = study_run.data.params
    assert params["space.optimizer.lr"] == f"choice({GOOD_LR}, {FLAT_LR})"
    assert params["space.freeze"] == "head_only"
    assert (params["sampler"], params["pruner"]) == ("TPESampler", "StagnationPruner")
    assert (params["n_trials"], params["objective"]) == ("3", "val/f1_macro")
    description = study_run.data.tags["mlflow.note.content"]
    best = max((t for t in trials(sweep) if t.state == TrialState.COMPLETE),
               key=lambda t: t.value or 0.0)
    assert f"Best: **{best.value:.4f}**" in description
    assert f"runs/{best.user_attrs['mlflow_run_id']})" in description
    assert "2 complete, 1 pruned, 0 fail" in description


# -- Optuna and optuna-dashboard --------------------------------------------------------------


@ON_VIEWER_SWEEP
@pytest.mark.slow
def test_every_value_is_in_objective_units_and_the_study_says_what_it_plots(
        sweep: Sweep) -> None:
    study = optuna.load_study(study_name=STUDY, storage=storage_url(sweep.cwd))
    assert all(0.0 <= t.value <= 1.0 for t in study.trials)  # F1, pruned trials too
    assert study.user_attrs["objective"] == "val/f1_macro"
    assert "val/loss" in study.user_attrs["intermediate_values"]
    assert "negated" in study.user_attrs["intermediate_values"]


def dashboard_get(app: Any, path: str) -> tuple[str, Any]:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SERVER_NAME": "127.0.0.1",
               "SERVER_PORT": "8080", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
               "wsgi.errors": io.StringIO(), "QUERY_STRING": ""}
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, *_: status.append(s)))
    return status[0], json.loads(body)


@ON_VIEWER_SWEEP
@pytest.mark.slow
def test_optuna_dashboard_serves_the_study_in_objective_units(sweep: Sweep) -> None:
    app = optuna_dashboard.wsgi(storage_url(sweep.cwd))
    status, listing = dashboard_get(app, "/api/studies")
    assert status.startswith("200"), listing
    (summary,) = [s for s in listing["study_summaries"] if s["study_name"] == STUDY]
    status, detail = dashboard_get(app, f"/api/studies/{summary['study_id']}")
    assert status.startswith("200"), detail
    assert detail["objective_names"] == ["val/f1_macro"]
    assert len(detail["trials"]) == 3
    for trial in detail["trials"]:
        assert 0.0 <= trial["values"][0] <= 1.0, trial
    assert "Intermediate values: val/loss" in detail["note"]["body"]


def test_unknown_optimized_metric_is_one_line_naming_the_metrics(tmp_path: Path) -> None:
    conf = write_config(tmp_path / "conf", "hparams_search", "bad", 'optimized_metric: "val/mAP"')
    done = run_sweep(f"--config-dir={conf}", "hparams_search=bad", *TINY, cwd=tmp_path)
    assert done.returncode == 2
    assert done.output.strip().splitlines() == [
        "plateau: error: optimized_metric=val/mAP is not a metric plateau logs: use one of "
        "val/loss, val/acc, val/balanced_acc, val/f1_macro (a _best suffix is dropped: "
        "val/acc_best optimizes val/acc)"]


def test_verbose_must_be_null_true_or_false(tmp_path: Path) -> None:
    done = run_sweep(*TINY, "verbose=loud", cwd=tmp_path)
    assert done.returncode == 2
    assert done.output.strip().splitlines() == [
        "plateau: error: verbose=loud is not one of null, true, false: give verbose=true to see "
        "what Lightning, Hydra and the libraries print"]

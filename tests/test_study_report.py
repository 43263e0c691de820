"""The post-sweep report: numbers from a real study in a tmp sqlite file, files written, the
parent MLflow run's artifacts, the on-demand entry, and one ``python sweep.py -m`` end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from conftest import ROOT, compose_config
from errors import PlateauError
from sweeps import tracking
from sweeps.report import files as report_files
from sweeps.report import model, publish, terminal

DISTRIBUTIONS = {
    "freeze": CategoricalDistribution(["head_only", "depth", "none"]),
    "class_weight": CategoricalDistribution(["none", "balanced"]),
    "optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True),
}
BEST_CONFUSION = [[9, 1, 0], [0, 10, 0], [2, 2, 6]]  # rows: true class
PLOTS = [report_files.IMPORTANCES, report_files.BY_CHOICE, report_files.CURVES,
         report_files.DIAGNOSES, report_files.RECALL]

#: state, value, freeze, class_weight, lr, diagnosis, extra user attrs
Row = tuple[TrialState, float | None, str, str, float, str | None, dict[str, Any]]
TRIALS: list[Row] = [
    (TrialState.COMPLETE, 0.80, "head_only", "none", 1e-3, "healthy", {}),
    (TrialState.COMPLETE, 0.60, "head_only", "balanced", 1e-4, "underfitting", {}),
    (TrialState.COMPLETE, 0.90, "depth", "none", 5e-3, "healthy",
     {"val_confusion": BEST_CONFUSION, "classes": ["ant", "bee", "cat"]}),
    (TrialState.PRUNED, None, "depth", "balanced", 1e-2, "no_progress", {}),
    (TrialState.PRUNED, None, "none", "none", 1e-2, "no_progress", {}),
    (TrialState.FAIL, None, "none", "balanced", 1e-3, None, {"error": "RuntimeError: boom"}),
    (TrialState.COMPLETE, 0.70, "none", "balanced", 2e-3, "majority_collapse", {}),
    # cut off by a stopped sweep and re-queued: not counted anywhere
    (TrialState.FAIL, None, "head_only", "none", 1e-3, "diverged", {"interrupted": True}),
]


def make_study(tmp_path: Path, rows: list[Row] = TRIALS, name: str = "plateau") -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path / 'plateau.db'}",
                                direction="maximize", load_if_exists=True)
    for state, value, freeze, weight, lr, diagnosis, attrs in rows:
        epochs = 3 if state == TrialState.COMPLETE else 1
        study.add_trial(create_trial(
            state=state, value=value,
            params={"freeze": freeze, "class_weight": weight, "optimizer.lr": lr},
            distributions=DISTRIBUTIONS,
            intermediate_values={e: -1.0 + 0.1 * e for e in range(epochs)},
            user_attrs={**({"diagnosis": diagnosis} if diagnosis else {}), **attrs}))
    return study


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    return make_study(tmp_path)


def test_objective_per_choice_counts_complete_pruned_and_failed_trials(
        study: optuna.Study) -> None:
    rows = {r.choice: r for r in model.build(study).choices["freeze"]}
    assert list(rows) == ["head_only", "depth", "none"]
    assert (rows["head_only"].values, rows["head_only"].pruned, rows["head_only"].failed) == (
        [0.80, 0.60], 0, 0)  # the interrupted head_only trial is not counted
    assert rows["head_only"].mean == pytest.approx(0.70)
    assert rows["head_only"].best == pytest.approx(0.80)
    assert (rows["depth"].mean, rows["depth"].pruned) == (pytest.approx(0.90), 1)
    assert (len(rows["none"].values), rows["none"].pruned, rows["none"].failed) == (1, 1, 1)


def test_best_is_the_minimum_in_a_minimized_study(tmp_path: Path) -> None:
    rows = model.choice_stats(make_study(tmp_path).trials, maximize=False)
    assert {r.choice: r.best for r in rows["freeze"]}["head_only"] == pytest.approx(0.60)


def test_dominant_failure_is_the_most_common_non_healthy_diagnosis(
        study: optuna.Study) -> None:
    report = model.build(study)
    assert report.diagnoses == {"healthy": 2, "underfitting": 1, "no_progress": 2,
                                "majority_collapse": 1}
    assert report.dominant_failure == ("no_progress", 2)


def test_dominant_failure_is_none_when_every_trial_is_healthy(tmp_path: Path) -> None:
    rows = [r for r in TRIALS if r[5] in ("healthy", None)]
    assert model.build(make_study(tmp_path, rows)).dominant_failure is None


def test_only_failures_count_and_notes_do_not(tmp_path: Path) -> None:
    rows: list[Row] = [(TrialState.COMPLETE, 0.9, "depth", "none", 1e-3, "healthy", {}),
                       (TrialState.PRUNED, None, "none", "none", 1e-2, "too_early", {}),
                       (TrialState.PRUNED, None, "none", "none", 1e-2, "too_early", {}),
                       (TrialState.COMPLETE, 0.8, "none", "none", 1e-2,
                        "diverged_after_best", {}),
                       (TrialState.COMPLETE, 0.5, "none", "none", 1e-4, "underfitting", {})]
    report = model.build(make_study(tmp_path, rows))
    assert report.dominant_failure == ("underfitting", 1)
    assert report.failure_line().startswith("underfitting (1 of 5 diagnosed trials) -- fix: ")


#: A trial's stored curves: learned to 0.9 by epoch 2, then both losses climbed back and
#: its validation accuracy fell to 0.45 (the LR too high for the later epochs).
RISING = {"train_loss": [0.9, 0.4, 0.6], "val_loss": [0.5, 0.3, 0.9],
          "train_acc": [0.7, 0.9, 0.5], "val_acc": [0.8, 0.9, 0.45]}


def test_labels_are_read_again_against_the_final_field_and_retagged(tmp_path: Path) -> None:
    # When trial 1 was pruned, it trailed; trial 0 ended 3rd of 3 when it was labelled
    # "diverged" then. In the final field of 4, with a quarter of 1, it is the best.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("plateau", artifact_location=str(tmp_path / "art"))
    trial_run = client.create_run(experiment).info.run_id
    parent = client.create_run(experiment).info.run_id
    curves = {"curves": RISING, "classes": ["ant", "bee", "cat"]}
    rows: list[Row] = [
        (TrialState.COMPLETE, 0.95, "depth", "none", 1e-2, "diverged",
         {**curves, "mlflow_run_id": trial_run}),
        (TrialState.PRUNED, 0.9, "depth", "none", 1e-2, "diverged", curves),
        (TrialState.COMPLETE, 0.90, "none", "none", 1e-3, "healthy", {}),
        (TrialState.COMPLETE, 0.85, "none", "none", 1e-3, "healthy", {})]
    report = publish.publish(make_study(tmp_path, rows), tmp_path / "report", client, parent)
    assert report.labels[0].label == "diverged_after_best"
    assert "best epoch 2 (among the study's best quarter)" in report.labels[0].reason
    assert report.labels[1].label == "diverged"  # pruned, and not among the best
    assert client.get_run(trial_run).data.tags["plateau.diagnosis"] == "diverged_after_best"
    table = (tmp_path / "report" / report_files.REPORT_MD).read_text()
    assert "| 0 | diverged_after_best | diverged after its best epoch 2" in table


def test_best_trials_per_class_recall_comes_from_its_confusion_matrix(
        study: optuna.Study) -> None:
    report = model.build(study)
    assert report.best is not None
    assert report.best.number == 2
    assert [(r.name, r.recall, r.support) for r in report.recall] == [
        ("ant", pytest.approx(0.9), 10), ("bee", pytest.approx(1.0), 10),
        ("cat", pytest.approx(0.6), 10)]


def test_importances_rank_every_varied_knob_and_are_reproducible(study: optuna.Study) -> None:
    first = model.build(study).importances
    assert set(first) == set(DISTRIBUTIONS)
    assert sum(first.values()) == pytest.approx(1.0)
    assert list(first.values()) == sorted(first.values(), reverse=True)
    assert model.build(study).importances == first  # the evaluator is seeded


def test_report_folder_holds_every_plot_and_the_markdown_linking_them(
        study: optuna.Study, tmp_path: Path) -> None:
    folder = publish.publish(study, tmp_path / "report").folder
    assert folder == tmp_path / "report"
    for name in PLOTS:
        assert (folder / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"]({name})" in (folder / report_files.REPORT_MD).read_text()
    text = (folder / report_files.REPORT_MD).read_text()
    assert "| `head_only` | 2 | 0.7000 | 0.8000 | 0 | 0 |" in text
    assert "| cat | 0.6000 | 10 |" in text
    assert "| no_progress | 2 |" in text


def test_html_report_is_one_page_with_its_plots_inlined(study: optuna.Study,
                                                         tmp_path: Path) -> None:
    folder = publish.publish(study, tmp_path / "report").folder
    assert folder is not None
    page = (folder / report_files.REPORT_HTML).read_text()
    assert page.count('src="data:image/png;base64,') == len(PLOTS)
    assert ".png\"" not in page  # no link to a file beside it: MLflow shows the page alone
    assert "<td><code>head_only</code></td>" in page  # Markdown tables became HTML tables
    assert "<h2>Learning curves</h2>" in page


def test_importances_from_fewer_complete_trials_than_knobs_carry_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = publish.publish(make_study(tmp_path, [TRIALS[0], TRIALS[2], TRIALS[3]]),
                             tmp_path / "report")
    assert report.importances  # computed, but from 2 complete trials for 3 knobs
    assert report.importance_warning.startswith("2 complete trials for 3 searched knobs")
    assert report.folder is not None
    assert f"**Warning: {report.importance_warning}.**" in (
        report.folder / report_files.REPORT_MD).read_text()
    terminal.print_summary(report)
    assert "warning: 2 complete trials for 3 searched knobs" in capsys.readouterr().err
    (tmp_path / "all").mkdir()
    assert model.build(make_study(tmp_path / "all")).importance_warning == ""  # 4 for 3


def test_learning_curves_show_the_monitored_metric_in_its_own_units(
        study: optuna.Study) -> None:
    report = model.build(study)  # maximized: trials reported -val/loss
    trial = next(t for t in report.trials if len(t.intermediate_values) == 3)
    assert report_files.monitored(report, trial) == ([0, 1, 2], pytest.approx([1.0, 0.9, 0.8]))


def test_one_diverged_epoch_does_not_set_the_curves_range() -> None:
    losses = [2.0, 1.5, 1.2, 1.0, 0.9, 1.8, 1.1, 0.7, 0.6, 31.0]
    low, high, outside = report_files.robust_range(losses)
    assert outside == 1
    assert low < 0.6
    assert 2.0 < high < 10.0


@pytest.mark.parametrize("complete", [0, 1])
def test_report_with_fewer_than_two_complete_trials_says_why_importances_are_missing(
        tmp_path: Path, complete: int, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [TRIALS[0]][:complete] + [TRIALS[3], TRIALS[5]]
    report = publish.publish(make_study(tmp_path, rows), tmp_path / "report")
    assert report.importances == {}
    assert f"{complete} complete trial(s)" in report.importance_note
    assert report.folder is not None
    assert not (report.folder / report_files.IMPORTANCES).exists()
    assert "Not computed: " in (report.folder / report_files.REPORT_MD).read_text()
    terminal.print_summary(report)
    assert "most important knobs: not computed: " in capsys.readouterr().err


def test_importances_missing_when_no_knob_varies(tmp_path: Path) -> None:
    rows: list[Row] = [(TrialState.COMPLETE, v, "depth", "none", 1e-3, "healthy", {})
                       for v in (0.5, 0.6)]
    report = model.build(make_study(tmp_path, rows))
    assert report.importances == {}
    assert "no knob took more than one value" in report.importance_note


def test_importances_missing_when_every_objective_is_equal(tmp_path: Path) -> None:
    rows: list[Row] = [(TrialState.COMPLETE, 0.5, f, "none", 1e-3, "healthy", {})
                       for f in ("depth", "none", "head_only")]
    report = model.build(make_study(tmp_path, rows))
    assert report.importances == {}
    assert "same objective value" in report.importance_note


def test_summary_names_the_top_three_knobs_and_the_dominant_failure(
        study: optuna.Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = publish.publish(study, tmp_path / "report")
    terminal.print_summary(report)
    err = capsys.readouterr().err
    assert f"most important knobs: {report.top_knobs[0]} (" in err
    assert len(report.top_knobs) == 3
    assert ("most common fixable cause: no_progress (2 of 6 diagnosed trials) -- fix: raise "
            "the learning rate") in err
    assert "best trial's diagnosis: trial 2: healthy" in err


def artifacts(client: MlflowClient, run_id: str) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id, report_files.REPORT_DIR)}


def test_publish_logs_the_report_to_the_parent_run_and_tags_it(
        study: optuna.Study, tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("plateau", artifact_location=str(tmp_path / "art"))
    run_id = client.create_run(experiment).info.run_id
    report = publish.publish(study, tmp_path / "report", client, run_id)
    assert report.run_id == run_id
    assert artifacts(client, run_id) == {*PLOTS, report_files.REPORT_MD,
                                         report_files.REPORT_HTML}
    tags = client.get_run(run_id).data.tags
    assert tags["plateau.dominant_failure"] == "no_progress"
    assert tags["plateau.top_knobs"].split(",") == report.top_knobs


def test_report_existing_writes_the_stored_studys_report_and_logs_it(tmp_path: Path) -> None:
    cfg = compose_config([f"hydra.sweeper.storage=sqlite:///{tmp_path / 'plateau.db'}",
                          f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"],
                         keep_hydra=True)
    found = tracking.tracking_client(cfg)
    assert found is not None
    client, experiment = found
    run_id = client.create_run(experiment).info.run_id
    make_study(tmp_path).set_user_attr(tracking.STUDY_RUN_ATTR, run_id)
    folder = publish.report_existing(cfg, tmp_path / "out")
    assert folder == tmp_path / "out"
    assert (folder / report_files.REPORT_MD).exists()
    assert report_files.CURVES in artifacts(client, run_id)


def test_report_existing_on_a_missing_study_raises_one_line(tmp_path: Path) -> None:
    make_study(tmp_path)  # the storage exists, with another study
    cfg = compose_config([f"hydra.sweeper.storage=sqlite:///{tmp_path / 'plateau.db'}",
                          "hydra.sweeper.study_name=absent", "logger=none"], keep_hydra=True)
    with pytest.raises(PlateauError, match="no study 'absent'.*hydra.sweeper.study_name"):
        publish.report_existing(cfg, tmp_path / "out")


def doctor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-m", "doctor", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_doctor_report_command_writes_an_existing_studys_report(tmp_path: Path) -> None:
    make_study(tmp_path)
    done = doctor("report", "--out", str(tmp_path / "out"),
                  f"hydra.sweeper.storage=sqlite:///{tmp_path / 'plateau.db'}", "logger=none",
                  cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / report_files.REPORT_MD).exists()
    assert "most common fixable cause: no_progress" in done.stderr


def test_doctor_report_command_on_a_missing_study_exits_2_with_one_line(tmp_path: Path) -> None:
    done = doctor("report", f"hydra.sweeper.storage=sqlite:///{tmp_path / 'plateau.db'}",
                  "hydra.sweeper.study_name=absent", "logger=none", cwd=tmp_path)
    assert done.returncode == 2
    assert "plateau: error: no study storage at" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "plateau-report").exists()
    assert not (tmp_path / "plateau.db").exists()


# -- end to end ----------------------------------------------------------------------------

#: The embedded default search space, shrunk: tiny trials of 2 epochs, a budget of 4.
E2E = ["-m", "data=synthetic", "backbone=test_resnet", "trainer=cpu", "trainer.max_epochs=2",
       "hydra.sweeper.n_trials=4"]


@pytest.mark.slow
def test_default_sweep_writes_the_report_and_logs_it_to_the_parent_run(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run([sys.executable, str(ROOT / "sweep.py"), *E2E], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    (folder,) = tmp_path.glob(f"multirun/*/*/{report_files.REPORT_DIR}")
    written = {p.name for p in folder.iterdir()}
    assert {report_files.REPORT_MD, report_files.CURVES, report_files.DIAGNOSES} <= written
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("plateau")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert artifacts(client, parent.info.run_id) == written
    assert parent.data.tags["plateau.dominant_failure"]
    children = [r for r in runs if r is not parent]
    assert len(children) == 4
    assert all(r.data.tags.get("plateau.diagnosis") for r in children)
    assert "most important knobs: " in output
    assert "most common fixable cause: " in output

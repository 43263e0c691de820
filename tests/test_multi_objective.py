"""Multi-objective sweeps: accuracy against serving cost, the Pareto front, its knee, the
exported configs and the MLflow tags, with pruning on the first objective only.

The sweeps are real ``python sweep.py -m`` runs on generated images (timm's ``test_resnet``);
the front is checked against a domination test written here, not Optuna's.
"""

from __future__ import annotations

import math

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.pruners import MedianPruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from test_sweep import TINY, mlflow_runs, run_sweep, search_config, study_trials

from errors import PlateauError
from sweeps import ledger
from sweeps.objectives import (
    FirstObjective,
    MultiObjectiveSampler,
    Objectives,
    first_objective,
)
from sweeps.report.pareto import knee_of

F1_LATENCY = ["objective.metric=[val/f1_macro,model/latency_ms]",
              "objective.direction=[maximize,minimize]"]


def dominates(a: list[float], b: list[float], maximize: list[bool]) -> bool:
    better = [(x >= y) if up else (x <= y) for x, y, up in zip(a, b, maximize, strict=True)]
    strictly = [(x > y) if up else (x < y) for x, y, up in zip(a, b, maximize, strict=True)]
    return all(better) and any(strictly)


def front_numbers(trials: list[FrozenTrial], maximize: list[bool]) -> set[int]:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return {t.number for t in complete
            if not any(dominates(o.values, t.values, maximize) for o in complete if o is not t)}


# -- the objectives as configured -----------------------------------------------------------

@pytest.mark.parametrize(("metric", "direction", "says"), [
    (["val/f1_macro", "model/latency_ms"], ["maximize"], "one direction per metric"),
    (["model/latency_ms", "val/f1_macro"], ["minimize", "maximize"], "cannot be the first"),
    (["val/f1_macro", "model/latency_ms"], ["maximize", "maximize"], "is a cost"),
    (["val/f1_macro", "model/speed"], ["maximize", "minimize"], "not a metric trials log"),
    (["val/f1_macro", "val/f1_macro"], ["maximize", "maximize"], "names a metric twice"),
    ("val/f1_macro", ["max"], "must be one of maximize, minimize"),
])
def test_objectives_that_cannot_be_optimized_are_named(metric: list[str], direction: list[str],
                                                       says: str) -> None:
    with pytest.raises(PlateauError, match=says):
        Objectives.parse(metric, direction)


def test_one_metric_is_a_single_objective() -> None:
    single = Objectives.parse("val/acc", "maximize")
    assert not single.multi
    assert single.metrics == ("val/acc",)
    assert not single.needs_cost
    both = Objectives.parse(["val/f1_macro", "model/macs"], ["maximize", "minimize"])
    assert both.multi
    assert both.needs_cost
    assert both.first == "val/f1_macro"


def test_the_knee_is_the_front_trial_nearest_the_ideal_point() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for values in ([0.90, 100.0], [0.85, 20.0], [0.50, 5.0]):
        study.add_trial(optuna.trial.create_trial(values=values))
    # scaled over the front: (0, 1), (0.125, 0.158), (1, 0): the middle one gives up least
    assert knee_of(study.best_trials, list(study.directions)).values == [0.85, 20.0]


def test_the_pruner_judges_the_first_objective_of_a_multi_objective_study() -> None:
    """Optuna's Trial.report refuses multi-objective studies; through the first-objective
    view a real MedianPruner prunes the trial that trails on the first objective."""
    study = optuna.create_study(directions=["minimize", "minimize"],
                                pruner=MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    for loss in (0.2, 0.3):
        trial = ledger.live_trial(first_objective(study), ledger.trial_id(study.ask()))
        trial.report(loss, 0)
        study.tell(trial.number, [loss, 5.0])
    judged = first_objective(study)
    assert isinstance(judged, FirstObjective)
    assert judged.direction == StudyDirection.MINIMIZE
    trailing = ledger.live_trial(judged, ledger.trial_id(study.ask()))
    trailing.report(0.9, 0)
    assert trailing.should_prune()
    leading = ledger.live_trial(judged, ledger.trial_id(study.ask()))
    leading.report(0.1, 0)
    assert not leading.should_prune()
    assert judged.best_trial.values == [0.2]  # the first objective's best, as a single value


def test_tpe_draws_after_pruned_trials_of_a_multi_objective_study() -> None:
    """A pruned trial holds the epoch values the pruner judged; Optuna's TPE reads them by a
    single direction a two-objective study lacks. The sweep's sampler hides them."""
    def study_with_a_pruned_trial(sampler: optuna.samplers.BaseSampler) -> optuna.Study:
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        for i in range(3):
            trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
            if i == 0:
                ledger.live_trial(first_objective(study), ledger.trial_id(trial)).report(0.4, 0)
                ledger.tell_pruned(study, ledger.trial_id(trial), [0.4, 9.0])
            else:
                study.tell(trial, [0.5 + i / 10, 5.0 - i])
        return study

    def draw(study: optuna.Study) -> float:
        return study.ask().suggest_float("x", 0, 1)

    with pytest.raises(RuntimeError, match="multi-objective"):
        draw(study_with_a_pruned_trial(optuna.samplers.TPESampler(n_startup_trials=1, seed=0)))
    wrapped = MultiObjectiveSampler(optuna.samplers.TPESampler(n_startup_trials=1, seed=0))
    study = study_with_a_pruned_trial(wrapped)
    assert 0 <= draw(study) <= 1
    assert study.trials[0].intermediate_values == {0: 0.4}  # the study keeps them


# -- sweeps end to end ------------------------------------------------------------------------

def test_a_two_objective_sweep_reports_exports_and_tags_its_pareto_front(tmp_path) -> None:
    conf = search_config(tmp_path / "conf", "cost", {
        "optimizer.lr": "tag(log, interval(1e-3, 3e-2))", "data.image_size": "choice(32, 64)"})
    sweep = run_sweep("-m", f"--config-dir={conf}", "search=cost", *TINY, *F1_LATENCY,
                      "trainer.max_epochs=2", "hydra.sweeper.n_trials=4",
                      "hydra.sweeper.base_trial=false", cwd=tmp_path, timeout=600)
    assert sweep.returncode == 0, sweep.output[-3000:]
    assert "the pruner judges val/f1_macro only" in sweep.output

    study = optuna.load_study(study_name="plateau", storage=f"sqlite:///{tmp_path}/plateau.db")
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    trials = study_trials(tmp_path)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    for trial in complete:
        assert len(trial.values) == 2
        assert 0 <= trial.values[0] <= 1
        assert trial.values[1] > 0
        assert len(trial.intermediate_values) == 2  # each epoch reported, for the pruner
    front = front_numbers(trials, [True, False])

    sweep_dir = next((tmp_path / "multirun").glob("*/*"))
    exported = {int(p.stem.removeprefix("trial_")) for p in (sweep_dir / "pareto").glob("*.yaml")}
    assert exported == front
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    knee = int(results.best_trial)
    assert knee in front
    assert set(results.pareto_trials) == front
    best = OmegaConf.load(sweep_dir / "best_trial.yaml")
    knee_trial = next(t for t in trials if t.number == knee)
    assert best.data.image_size == knee_trial.params["data.image_size"]
    assert list(best.objective.metric) == ["val/f1_macro", "model/latency_ms"]

    runs = {int(r.data.tags["plateau.trial_number"]): r for r in mlflow_runs(tmp_path)
            if "plateau.trial_number" in r.data.tags}
    assert {n for n, r in runs.items() if r.data.tags.get("plateau.pareto") == "true"} == front
    assert [n for n, r in runs.items() if r.data.tags.get("plateau.knee") == "true"] == [knee]
    for number, run in runs.items():
        trial = next(t for t in trials if t.number == number)
        assert run.data.metrics["model/latency_ms"] == pytest.approx(trial.values[1])
        assert run.data.metrics["model/macs"] > 0
    parent = next(r for r in mlflow_runs(tmp_path) if "plateau.trial_number" not in r.data.tags)
    assert parent.data.tags["plateau.knee_trial"] == str(knee)

    report = (sweep_dir / "report" / "report.md").read_text()
    assert "## Pareto front" in report
    assert f"The knee, trial {knee}" in report
    assert (sweep_dir / "report" / "pareto_front.png").stat().st_size > 0
    assert "Pareto front:" in sweep.output
    assert f"trial {knee}" in sweep.output


def test_nsga2_with_a_second_validation_metric_read_at_the_best_epoch(tmp_path) -> None:
    """``[val/f1_macro, val/loss]``: the loss is the one logged at the epoch whose F1 is the
    trial's best, so both values describe the same model."""
    conf = search_config(tmp_path / "conf", "lr", {
        "optimizer.lr": "tag(log, interval(1e-3, 3e-2))"})
    sweep = run_sweep("-m", f"--config-dir={conf}", "search=lr", *TINY,
                      "objective.metric=[val/f1_macro,val/loss]",
                      "objective.direction=[maximize,minimize]", "hydra/sweeper/sampler=nsgaii",
                      "trainer.max_epochs=3", "hydra.sweeper.n_trials=2", cwd=tmp_path,
                      timeout=600)
    assert sweep.returncode == 0, sweep.output[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for trial in study_trials(tmp_path):
        assert trial.state == TrialState.COMPLETE
        run_id = trial.user_attrs[ledger.ATTR_RUN_ID]
        f1 = [m.value for m in sorted(client.get_metric_history(run_id, "val/f1_macro"),
                                      key=lambda m: m.step)]
        loss = [m.value for m in sorted(client.get_metric_history(run_id, "val/loss"),
                                        key=lambda m: m.step)]
        best_epoch = f1.index(max(f1))  # the first epoch at the best value
        assert trial.values[0] == pytest.approx(f1[best_epoch])
        assert trial.values[1] == pytest.approx(loss[best_epoch])
        assert not math.isnan(trial.values[1])


@pytest.mark.parametrize(("override", "says"), [
    ("hydra/sweeper/sampler=cmaes", "optimizes one objective"),
    ("hydra/sweeper/pruner=hyperband", "single-objective studies"),
    ("hydra.sweeper.direction=maximize", "gives 1 directions for 2 objectives"),
])
def test_settings_that_cannot_serve_two_objectives_stop_the_sweep(tmp_path, override: str,
                                                                   says: str) -> None:
    sweep = run_sweep("-m", *TINY, *F1_LATENCY, override, cwd=tmp_path)
    assert sweep.returncode == 2
    errors = [line for line in sweep.output.splitlines() if line.startswith("plateau: error:")]
    assert len(errors) == 1, sweep.output[-2000:]
    assert says in errors[0]
    assert "Traceback" not in sweep.output
    assert not (tmp_path / "plateau.db").exists()
    assert not (tmp_path / "mlflow.db").exists()

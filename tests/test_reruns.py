"""Top-k reruns (``hydra.sweeper.rerun_top_k``, ``rerun_seeds``): the best configs of the
search run again with new seeds after it, outside ``n_trials``, exactly once each under
resume and across workers; the pick is the best mean over seeds.

The planning and taking of reruns run on a real sqlite study; the sweeps are real
``python sweep.py -m`` processes on tiny data (generated stripes, timm's ``test_resnet``).
"""

from __future__ import annotations

import csv
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from conftest import ROOT, Exited
from sweeps import ending, ledger
from sweeps.report.reruns import rerun_table
from sweeps.sweeper.reruns import Reruns, new_seeds, seed_of, top_configs

TINY = ["data=synthetic", "backbone=test_resnet", "trainer=cpu"]
RERUNS = ["hydra.sweeper.n_trials=3", "hydra.sweeper.rerun_top_k=2",
          "hydra.sweeper.rerun_seeds=2"]
# wide: the end tables keep each value on one line
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
LR = FloatDistribution(1e-4, 1e-1, log=True)


# -- planning and taking reruns, on a real study -------------------------------------------


@pytest.mark.parametrize(("original", "count", "seeds"), [
    (42, 2, [43, 44]), (0, 3, [1, 2, 3]), (7, 1, [8])])
def test_new_seeds_follow_the_original_and_never_repeat_it(original: int, count: int,
                                                           seeds: list[int]) -> None:
    assert new_seeds(original, count) == seeds


@pytest.mark.parametrize(("overrides", "seed"), [
    (["optimizer.lr=0.01"], 42), (["seed=7", "optimizer.lr=0.01"], 7), (["++seed=9"], 9)])
def test_a_trials_own_seed_override_wins_over_the_sweeps(overrides: list[str],
                                                         seed: int) -> None:
    assert seed_of(overrides, 42) == seed


def searched(study: optuna.Study, lr: float, value: float | None,
             state: TrialState = TrialState.COMPLETE) -> FrozenTrial:
    """A finished search trial of ``study`` with ``optimizer.lr=lr`` as its config."""
    trial = study.ask()
    ledger.suggest(trial, "optimizer.lr", LR)
    trial.set_user_attr(ledger.ATTR_OVERRIDES, [f"optimizer.lr={lr}"])
    if state == TrialState.COMPLETE:
        study.tell(trial, value)
    else:
        study.tell(trial, state=state)
    return study.trials[-1]


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'plateau.db'}"


@pytest.fixture
def searched_study(storage: str) -> optuna.Study:
    """Three complete search trials (0.5, 0.9, 0.7), one pruned and one failed."""
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for lr, value in ((1e-3, 0.5), (1e-2, 0.9), (3e-3, 0.7)):
        searched(study, lr, value)
    searched(study, 5e-2, None, TrialState.PRUNED)
    searched(study, 2e-2, None, TrialState.FAIL)
    return study


def test_top_configs_are_the_best_complete_search_trials(searched_study: optuna.Study) -> None:
    assert [t.number for t in top_configs(searched_study.trials, 2, True)] == [1, 2]
    assert [t.number for t in top_configs(searched_study.trials, 2, False)] == [0, 2]
    assert [t.number for t in top_configs(searched_study.trials, 9, True)] == [1, 2, 0]


def take_all(workers: list[optuna.Study], n_trials: int) -> list[FrozenTrial]:
    """Each worker in turn takes a rerun and completes it, until none is left."""
    taken: list[FrozenTrial] = []
    planner = Reruns(2, 2, 42, 600.0)
    while True:
        got = [planner.take(w, n_trials) for w in workers]
        if not any(got):
            return taken
        for worker, trial in zip(workers, got, strict=True):
            if trial is not None:
                worker.tell(trial, 0.8)
                taken.append(ledger.frozen_trial(worker, ledger.trial_id(trial)))


def test_two_workers_run_each_rerun_once(searched_study: optuna.Study, storage: str) -> None:
    other = optuna.load_study(study_name="s", storage=storage)
    taken = take_all([searched_study, other], n_trials=5)
    pairs = [(t.user_attrs[ledger.ATTR_RERUN_OF], t.user_attrs[ledger.ATTR_RERUN_SEED])
             for t in taken]
    assert sorted(pairs) == [(1, 43), (1, 44), (2, 43), (2, 44)]
    assert all(t.user_attrs[ledger.ATTR_ROLE] == ledger.ROLE_RERUN for t in taken)
    assert take_all([searched_study, other], n_trials=5) == []  # a re-run queues nothing


def test_reruns_wait_for_the_search_budget(searched_study: optuna.Study) -> None:
    assert Reruns(2, 2, 42, 600.0).take(searched_study, n_trials=6) is None
    assert not searched_study.get_trials(states=(TrialState.WAITING,))


def test_a_rerun_takes_its_configs_params_and_no_seed_param(
        searched_study: optuna.Study) -> None:
    from sweeps.sweeper.reruns import overrides_for

    trial = Reruns(2, 2, 42, 600.0).take(searched_study, n_trials=5)
    assert trial is not None
    overrides = overrides_for(searched_study, trial)
    assert overrides == ["optimizer.lr=0.01", "seed=43"]
    assert trial.params == searched_study.trials[1].params  # the sampler's space: no seed


def test_reruns_count_outside_the_budget(searched_study: optuna.Study) -> None:
    take_all([searched_study], n_trials=5)
    trials = searched_study.trials
    assert sum(map(ledger.spends_budget, trials)) == 5
    assert sum(map(ledger.claims_budget, trials)) == 5
    asked = searched_study.ask()  # a sixth search trial still fits a budget of 6
    assert ledger.within_budget(searched_study.trials, asked.number, 6)


def test_an_interrupted_rerun_is_queued_again_as_the_same_rerun(
        searched_study: optuna.Study) -> None:
    planner = Reruns(2, 2, 42, 600.0)
    trial = planner.take(searched_study, n_trials=5)
    assert trial is not None
    from sweeps.sweeper.reruns import overrides_for

    overrides_for(searched_study, trial)
    cut = ledger.frozen_trial(searched_study, ledger.trial_id(trial))
    assert ending.abandon(searched_study, ledger.trial_id(trial))
    (again,) = [t for t in searched_study.get_trials(states=(TrialState.WAITING,))
                if t.user_attrs.get(ledger.ATTR_RERUN_SEED) == cut.user_attrs[
                    ledger.ATTR_RERUN_SEED] and t.user_attrs[ledger.ATTR_RERUN_OF] ==
                cut.user_attrs[ledger.ATTR_RERUN_OF]]
    assert again.user_attrs[ledger.ATTR_ROLE] == ledger.ROLE_RERUN
    assert ledger.queued_params(again) == cut.params
    taken = take_all([searched_study], n_trials=5)
    assert len(taken) == 4  # the cut one once more, and the three others


def test_the_pick_is_the_best_mean_and_the_order_change_is_said(
        searched_study: optuna.Study) -> None:
    """Trial 1 (0.9) reruns at 0.5 and 0.6; trial 2 (0.7) at 0.7 and 0.8."""
    planner = Reruns(2, 2, 42, 600.0)
    values = {(1, 43): 0.5, (1, 44): 0.6, (2, 43): 0.7, (2, 44): 0.8}
    while (trial := planner.take(searched_study, n_trials=5)) is not None:
        key = (trial.user_attrs[ledger.ATTR_RERUN_OF], trial.user_attrs[ledger.ATTR_RERUN_SEED])
        searched_study.tell(trial, values[key])
    found = rerun_table(searched_study.trials,
                        searched_study.user_attrs[ledger.STUDY_RERUN_PLAN], maximize=True)
    assert found is not None
    assert found.pick.trial.number == 2
    assert found.pick.mean == pytest.approx(statistics.fmean([0.7, 0.7, 0.8]))
    assert found.pick.sd == pytest.approx(statistics.stdev([0.7, 0.7, 0.8]))
    assert found.changed
    assert found.verdict().startswith("The order changed: by the mean over seeds trial 2's")


# -- bad settings: one line, exit 2, nothing written ---------------------------------------


BAD = {
    "negative k": (["hydra.sweeper.rerun_top_k=-1", "hydra.sweeper.rerun_seeds=2"],
                   "hydra.sweeper.rerun_top_k=-1 is negative"),
    "negative seeds": (["hydra.sweeper.rerun_top_k=2", "hydra.sweeper.rerun_seeds=-3"],
                       "hydra.sweeper.rerun_seeds=-3 is negative"),
    "k without seeds": (["hydra.sweeper.rerun_top_k=2"],
                        "hydra.sweeper.rerun_top_k=2 needs hydra.sweeper.rerun_seeds"),
    "seeds without k": (["hydra.sweeper.rerun_seeds=2"],
                        "hydra.sweeper.rerun_seeds=2 needs hydra.sweeper.rerun_top_k"),
    "two objectives": (["hydra.sweeper.rerun_top_k=2", "hydra.sweeper.rerun_seeds=2",
                        "hydra.sweeper.direction=[maximize,minimize]"],
                       "hydra.sweeper.rerun_top_k=2: reruns rank configs by one objective"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_rerun_settings_are_one_line_exit_2_nothing_written(
        case: str, tmp_path: Path, sweep_here: Callable[..., Exited]) -> None:
    args, start = BAD[case]
    result = sweep_here("-m", *TINY, *args, cwd=tmp_path)
    assert result.returncode == 2, result.output[-3000:]
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"plateau: error: {start}"), errors[0]
    assert not (tmp_path / "plateau.db").exists()
    assert not (tmp_path / "mlflow.db").exists()


# -- a real sweep with reruns --------------------------------------------------------------


def command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "sweep.py"), "-m", *args]


def study_trials(cwd: Path) -> list[FrozenTrial]:
    assert (cwd / "plateau.db").exists()
    return optuna.load_study(study_name="plateau",
                             storage=f"sqlite:///{cwd / 'plateau.db'}").trials


def reruns_of(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.user_attrs.get(ledger.ATTR_ROLE) == "rerun"]


def run_sweep(args: list[str], cwd: Path) -> Exited:
    done = subprocess.run(command(*args), cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=600)
    return Exited(done.returncode, done.stdout, done.stderr)


@dataclass
class Reran:
    cwd: Path
    sweep: Exited
    trials: list[FrozenTrial]

    def report(self) -> str:
        return next(self.cwd.glob("multirun/*/*/report/report.md")).read_text()


@pytest.fixture(scope="module")
def reran(tmp_path_factory: pytest.TempPathFactory) -> Reran:
    """n_trials=3 (the base and two portfolio recipes), then the top 2 with 2 seeds each."""
    cwd = tmp_path_factory.mktemp("reran")
    sweep = run_sweep([*TINY, "trainer.max_epochs=4", "data.images_per_class=32", *RERUNS], cwd)
    assert sweep.returncode == 0, sweep.output[-4000:]
    return Reran(cwd, sweep, study_trials(cwd))


@pytest.mark.slow
def test_a_sweep_runs_three_search_trials_then_four_reruns(reran: Reran) -> None:
    search = [t for t in reran.trials if not ledger.is_rerun(t)]
    assert len(search) == 3
    assert all(map(ledger.spends_budget, search))
    assert [t.state for t in reruns_of(reran.trials)] == [TrialState.COMPLETE] * 4
    assert "3/3 finished + 4 reruns" in reran.sweep.output


@pytest.mark.slow
def test_reruns_repeat_the_top_two_configs_with_new_seeds(reran: Reran) -> None:
    search = [t for t in reran.trials if not ledger.is_rerun(t)]
    top = [t.number for t in sorted(search, key=lambda t: (-t.value, t.number))][:2]
    pairs = sorted((t.user_attrs["rerun_of"], t.user_attrs["rerun_seed"])
                   for t in reruns_of(reran.trials))
    assert pairs == sorted((n, s) for n in top for s in (43, 44))
    for rerun in reruns_of(reran.trials):
        original = reran.trials[rerun.user_attrs["rerun_of"]]
        assert rerun.params == original.params
        assert "seed" not in rerun.distributions
        assert rerun.user_attrs["overrides"][-1] == f"seed={rerun.user_attrs['rerun_seed']}"


@pytest.mark.slow
def test_rerun_runs_are_tagged_and_trained_with_their_seed(reran: Reran) -> None:
    client = MlflowClient(f"sqlite:///{reran.cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("plateau")
    runs = {int(r.data.tags["plateau.trial_number"]): r
            for r in client.search_runs([experiment.experiment_id])
            if "plateau.trial_number" in r.data.tags}
    for rerun in reruns_of(reran.trials):
        run = runs[rerun.number]
        assert run.data.tags["plateau.role"] == "rerun"
        assert run.data.tags["plateau.rerun_of"] == str(rerun.user_attrs["rerun_of"])
        assert run.data.params["seed"] == str(rerun.user_attrs["rerun_seed"])
    assert runs[0].data.params["seed"] == "42"


def independent_stats(trials: list[FrozenTrial]) -> dict[int, tuple[float, float, int]]:
    """Mean, sample sd and n of each rerun config's values, from the trials alone."""
    values: dict[int, list[float]] = {}
    for rerun in reruns_of(trials):
        of = rerun.user_attrs["rerun_of"]
        values.setdefault(of, [trials[of].value]).append(rerun.value)
    return {of: (sum(v) / len(v), (sum((x - sum(v) / len(v)) ** 2 for x in v)
                                   / (len(v) - 1)) ** 0.5, len(v)) for of, v in values.items()}


@pytest.mark.slow
def test_reported_mean_and_sd_are_the_trials_values(reran: Reran) -> None:
    stats = independent_stats(reran.trials)
    table = next(reran.cwd.glob("multirun/*/*/report/reruns.csv"))
    rows = {int(r["trial"]): r for r in csv.DictReader(table.open())}
    assert set(rows) == set(stats)
    for of, (mean, sd, n) in stats.items():
        assert float(rows[of]["mean"]) == pytest.approx(mean)
        assert float(rows[of]["sd"]) == pytest.approx(sd)
        assert int(rows[of]["n"]) == n == 3
        assert f"{mean:.4f} ± {sd:.4f} (n=3)" in reran.report()
        assert f"{mean:.4f} ± {sd:.4f} (n=3)" in reran.sweep.output


@pytest.mark.slow
def test_the_report_and_best_config_name_the_best_mean(reran: Reran) -> None:
    stats = independent_stats(reran.trials)
    by_single = sorted(stats, key=lambda of: (-reran.trials[of].value, of))
    by_mean = sorted(stats, key=lambda of: (-stats[of][0], by_single.index(of)))
    pick = by_mean[0]
    report = reran.report()
    assert "## Reruns" in report
    said = ("The order held" if by_mean == by_single else "The order changed"
            if pick != by_single[0] else "The best config held its place")
    assert f"{said}" in report
    assert said in reran.sweep.output
    assert "best mean over seeds" in reran.sweep.output
    (best,) = reran.cwd.glob("multirun/*/*/best_trial.yaml")
    head = best.read_text().splitlines()[0]
    assert head.startswith(f"# The best mean over seeds after the top-k reruns: trial {pick}'s")
    exported = OmegaConf.load(best)
    assert exported.optimizer.lr == pytest.approx(reran.trials[pick].params["optimizer.lr"])
    assert exported.seed == 42  # the search trial's seed: the config as it was found


# -- interrupted during the reruns, then the same command again ----------------------------

#: Trials of a few seconds, so the sweep can be killed while a rerun runs.
SLOW = [*TINY, "trainer.max_epochs=6", "data.images_per_class=48", "feature_cache=false",
        "hydra.sweeper.default_space.portfolio=null", *RERUNS]


@pytest.fixture(scope="module")
def killed_in_reruns(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[FrozenTrial],
                                                                         Exited]:
    """SIGKILL once a rerun has finished and another is mid-fit; then the same command."""
    cwd = tmp_path_factory.mktemp("killed_in_reruns")
    log = cwd / "first.err"
    with log.open("w") as err, subprocess.Popen(command(*SLOW), cwd=cwd, env=ENV, stderr=err,
                                                stdout=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 400
        while True:
            assert proc.poll() is None, f"the sweep ended before the cut:\n{log.read_text()}"
            assert time.monotonic() < deadline, "no rerun ran in time"
            time.sleep(0.2)
            if not (cwd / "plateau.db").exists() or "budget" not in log.read_text():
                continue
            reruns = reruns_of(study_trials(cwd))
            if (any(t.state == TrialState.COMPLETE for t in reruns)
                    and any(t.state == TrialState.RUNNING and t.intermediate_values
                            for t in reruns)):
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    cut = reruns_of(study_trials(cwd))
    assert any(t.state == TrialState.RUNNING for t in cut)
    resumed = run_sweep(SLOW, cwd)
    assert resumed.returncode == 0, resumed.output[-4000:]
    return study_trials(cwd), resumed


@pytest.mark.slow
def test_resume_during_reruns_finishes_each_config_and_seed_exactly_once(
        killed_in_reruns: tuple[list[FrozenTrial], Exited]) -> None:
    trials, resumed = killed_in_reruns
    done = [t for t in reruns_of(trials) if ledger.is_finished(t)]
    pairs = [(t.user_attrs["rerun_of"], t.user_attrs["rerun_seed"]) for t in done]
    assert len(pairs) == len(set(pairs)) == 4
    assert {seed for _, seed in pairs} == {43, 44}
    (cut,) = [t for t in reruns_of(trials) if t.user_attrs.get("interrupted")]
    assert (cut.user_attrs["rerun_of"], cut.user_attrs["rerun_seed"]) in pairs
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(map(ledger.spends_budget, trials)) == 3
    assert "3/3 finished + 4 reruns" in resumed.output

"""Several ``python sweep.py -m`` workers on one study: together they run exactly its budget.

Three worker processes start at once against the same storage and study name, on each
backend a cluster would use: a sqlite file, Optuna's journal file, and a real PostgreSQL
server. Each asks its next trial as soon as its last one ends; the study must end with
exactly ``n_trials`` finished trials, none run twice, and one MLflow parent run holding every
trial's run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from conftest import ROOT, TINY
from sweeps.ledger import ATTR_ROLE, ATTR_WITHDRAWN, is_finished
from sweeps.storage import open_storage

WORKERS, BUDGET = 3, 9
#: The tests read one run per storage: on one test worker (conftest), so each runs once.
pytestmark = pytest.mark.xdist_group("workers")


@dataclass
class Workers:
    """Worker processes that ran to their end in one launch directory."""

    cwd: Path
    url: str
    study_name: str
    outputs: list[str]
    returncodes: list[int]

    def trials(self) -> list[FrozenTrial]:
        study = optuna.load_study(study_name=self.study_name, storage=open_storage(self.url))
        return study.get_trials(deepcopy=False)

    def runs(self) -> list:
        client = MlflowClient(f"sqlite:///{self.cwd / 'mlflow.db'}")
        experiment = client.get_experiment_by_name(self.study_name)  # one per study
        return client.search_runs([experiment.experiment_id])


def start_workers(cwd: Path, url: str, study_name: str = "plateau", count: int = WORKERS,
                  budget: int = BUDGET, timeout: float = 600) -> Workers:
    """Start ``count`` sweeps at once in ``cwd``; wait for all of them.

    Each worker writes to its own file: a pipe read only after another worker ends would
    fill up and stall the worker writing to it.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [sys.executable, str(ROOT / "sweep.py"), "-m", *TINY,
               f"hydra.sweeper.n_trials={budget}", f"hydra.sweeper.storage={url}",
               f"hydra.sweeper.study_name={study_name}"]
    logs = [cwd / f"worker-{i}.out" for i in range(count)]
    procs = []
    for log in logs:
        with log.open("w") as out:
            procs.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=out,
                                          stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            proc.kill()  # no-op for a worker that ended
    outputs = [log.read_text() for log in logs]
    return Workers(cwd, url, study_name, outputs, [proc.returncode for proc in procs])


def storage_url(backend: str, tmp: Path, postgres: Callable[[], str]) -> str:
    """The storage URL of ``backend`` in ``tmp`` (``postgres()`` gives the server's)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'plateau.db'}"
    if backend == "journal":
        return f"journal:///{tmp / 'plateau.log'}"
    return postgres()


@pytest.fixture(scope="module", params=["sqlite", "journal", "postgres"])
def workers(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Workers:
    cwd = tmp_path_factory.mktemp(request.param)
    url = storage_url(request.param, cwd, lambda: request.getfixturevalue("postgres_url"))
    # the server lives for the whole session: a study name of this test's own
    return start_workers(cwd, url, study_name=f"workers-{cwd.name}")


@pytest.mark.slow
def test_every_worker_exits_cleanly(workers: Workers) -> None:
    for code, output in zip(workers.returncodes, workers.outputs, strict=True):
        assert code == 0, output[-3000:]
        assert "Traceback" not in output, output[-3000:]


@pytest.mark.slow
def test_workers_together_finish_exactly_the_budget(workers: Workers) -> None:
    trials = workers.trials()
    finished = [t for t in trials if is_finished(t)]
    assert len(finished) == BUDGET
    assert len({t.number for t in finished}) == BUDGET
    # anything else is a withdrawn ask (two workers claimed the last unit at once), never run
    for trial in trials:
        if not is_finished(trial):
            assert trial.state == TrialState.FAIL
            assert trial.user_attrs[ATTR_WITHDRAWN]
            assert not trial.intermediate_values


@pytest.mark.slow
def test_the_base_trial_and_each_portfolio_entry_run_once_among_workers(
        workers: Workers) -> None:
    """Three workers started together: only the one that created the study queued them."""
    roles = [t.user_attrs.get(ATTR_ROLE) for t in workers.trials() if is_finished(t)]
    assert roles[0] == "base"
    queued = [role for role in roles if role]
    assert sorted(queued) == sorted({*queued})
    assert len(queued) == 5  # the base and the default space's four recipes
    assert roles.count(None) == BUDGET - 5


@pytest.mark.slow
def test_the_trials_ran_in_more_than_one_worker(workers: Workers) -> None:
    # a job runs in its sweep's process (basic launcher): the owner is that worker
    owners = {t.user_attrs["owner"] for t in workers.trials() if is_finished(t)}
    assert len(owners) > 1


@pytest.mark.slow
def test_no_trial_runs_twice(workers: Workers) -> None:
    finished = [t for t in workers.trials() if is_finished(t)]
    run_ids = [t.user_attrs["mlflow_run_id"] for t in finished]
    assert len(set(run_ids)) == BUDGET
    trial_runs = [r for r in workers.runs() if "plateau.trial_number" in r.data.tags]
    numbers = [int(r.data.tags["plateau.trial_number"]) for r in trial_runs]
    assert sorted(numbers) == sorted(t.number for t in finished)


@pytest.mark.slow
def test_every_trial_run_is_a_child_of_the_one_study_run(workers: Workers) -> None:
    runs = workers.runs()
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.run_name for p in parents] == [f"study-{workers.study_name}"]
    (parent,) = parents
    children = [r for r in runs if r is not parent]
    assert len(children) == BUDGET
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"  # closed by the last worker, after every trial
    for child in children:  # a pruned trial's run ends KILLED, the others FINISHED
        pruned = child.data.tags["plateau.state"] == "PRUNED"
        assert child.info.status == ("KILLED" if pruned else "FINISHED")


@pytest.mark.slow
def test_the_last_worker_writes_the_study_report(workers: Workers) -> None:
    reports = list(workers.cwd.glob("multirun/*/*/report/report.md"))
    assert reports, "no study report"
    # exactly one worker ends the study: the one that ran the trial finished last
    summaries = sum("most important knobs" in output for output in workers.outputs)
    assert summaries == 1, "\n----\n".join(o[-1500:] for o in workers.outputs)


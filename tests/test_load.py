"""Load: 200 tiny trials by 4 workers on one sqlite study and one sqlite MLflow store.

Four ``python sweep.py -m`` processes start at once on the same study, as the README's
multi-worker recipe starts them, and every store takes every write of all of them (asks,
reports, tells, heartbeats, MLflow runs, params, metrics). The sweep must end with exactly
the budget, each trial run by one worker and told once, nothing left RUNNING, no lock error
reaching the user, and the study and MLflow agreeing on every trial. The test also prints
how much of each trial's time was plateau's own (everything but ``trainer.fit``), for the
record; the numbers are not asserted (timings never decide a test here).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter

import pytest
from optuna.trial import TrialState
from test_workers import start_workers

from sweeps.ledger import ATTR_FIT_SECONDS, ATTR_WITHDRAWN, is_finished

BUDGET, WORKERS = 200, 4
#: The tests read one load run: on one test worker (conftest), so it runs once.
pytestmark = pytest.mark.xdist_group("load")
#: A worker's progress line for a trial it ran: ``trial 12 COMPLETE 0.91, ...``,
#: ``trial 3 (portfolio:linear_probe) PRUNED ...``.
RAN = re.compile(r"^trial (\d+)(?: \([^)]*\))? (?:COMPLETE|PRUNED|FAIL)\b", re.MULTILINE)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory):
    cwd = tmp_path_factory.mktemp("load")
    return start_workers(cwd, f"sqlite:///{cwd / 'plateau.db'}", count=WORKERS, budget=BUDGET,
                         timeout=3600)


@pytest.mark.slow
def test_every_worker_exits_cleanly_without_lock_errors(loaded) -> None:
    for code, output in zip(loaded.returncodes, loaded.outputs, strict=True):
        assert code == 0, output[-3000:]
        for sign in ("Traceback", "database is locked", "OperationalError",
                     "UpdateFinishedTrialError", "has already finished"):
            assert sign not in output, output[-3000:]


@pytest.mark.slow
def test_the_workers_together_finish_exactly_the_budget_and_leave_nothing_running(
        loaded) -> None:
    trials = loaded.trials()
    assert sum(map(is_finished, trials)) == BUDGET
    for trial in trials:  # the rest: asks withdrawn when another worker took the last unit
        assert trial.state != TrialState.RUNNING, trial.number
        if not is_finished(trial):
            assert trial.state == TrialState.FAIL
            assert trial.user_attrs[ATTR_WITHDRAWN]
            assert not trial.intermediate_values


@pytest.mark.slow
def test_every_worker_ran_trials_and_no_trial_ran_twice(loaded) -> None:
    finished = sorted(t.number for t in loaded.trials() if is_finished(t))
    ran = Counter(int(n) for output in loaded.outputs for n in RAN.findall(output))
    assert [n for n, times in ran.items() if times > 1] == []
    assert sorted(ran) == finished
    owners = {t.user_attrs["owner"] for t in loaded.trials() if is_finished(t)}
    assert len(owners) == WORKERS


@pytest.mark.slow
def test_study_and_mlflow_agree_on_every_trial(loaded) -> None:
    runs = {r.info.run_id: r for r in loaded.runs()}
    finished = [t for t in loaded.trials() if is_finished(t)]
    assert len(runs) == BUDGET + 1  # and the study's parent run
    assert [r.info.run_name for r in runs.values() if r.info.status == "RUNNING"] == []
    numbers = Counter(r.data.tags.get("plateau.trial_number") for r in runs.values())
    assert [n for n, times in numbers.items() if times > 1] == []  # one run per trial
    for trial in finished:
        run = runs[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags["plateau.trial_number"] == str(trial.number)
        assert run.data.tags["plateau.state"] == trial.state.name
        assert run.info.status == ("KILLED" if trial.state.name == "PRUNED" else "FINISHED")


@pytest.mark.slow
def test_report_plateaus_own_time_per_trial(loaded) -> None:
    finished = sorted((t for t in loaded.trials() if is_finished(t)), key=lambda t: t.number)
    own_ms = []
    for trial in finished:
        assert trial.datetime_start is not None
        assert trial.datetime_complete is not None
        wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
        own_ms.append(1000 * (wall - trial.user_attrs[ATTR_FIT_SECONDS]))
    gaps_ms = []  # a worker's last trial ending -> its next trial starting: ask, sample, launch
    for owner in {t.user_attrs["owner"] for t in finished}:
        mine = [t for t in finished if t.user_attrs["owner"] == owner]
        gaps_ms += [1000 * (b.datetime_start - a.datetime_complete).total_seconds()
                    for a, b in zip(mine, mine[1:], strict=False)]
    assert all(ms >= 0 for ms in own_ms)
    print(f"\n{WORKERS} workers, per trial, plateau's own time (model/data build, MLflow run, "
          f"reports, tell): median {statistics.median(own_ms):.0f} ms, p90 "
          f"{statistics.quantiles(own_ms, n=10)[-1]:.0f} ms; between trials (ask, sample, "
          f"launch): median {statistics.median(gaps_ms):.0f} ms, p90 "
          f"{statistics.quantiles(gaps_ms, n=10)[-1]:.0f} ms")

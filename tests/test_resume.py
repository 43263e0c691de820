"""Faults and their re-run: SIGKILL, Ctrl-C, an exception, a NaN loss, a full disk; sweeper
mistakes.

After every fault, re-running the same command ends with exactly the budget of finished
trials, and the study and MLflow agree on what happened to each trial.

Each scenario runs ``python sweep.py -m`` in a tmp launch directory (study in ``plateau.db``,
runs in ``mlflow.db``) once, in a module-scoped fixture; the tests read what it left behind.
Trials are tiny (generated stripes, timm's ``test_resnet``, CPU), a few seconds each, so a
sweep can be stopped while one of them is between epochs.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from conftest import ROOT, TINY_DISK, Exited
from sweeps.ledger import (
    ATTR_ERROR,
    ATTR_HALT,
    ATTR_OBJECTIVE,
    ATTR_PRUNE_REASON,
    ATTR_RUN_ID,
    is_finished,
    queued_params,
)

pytestmark = pytest.mark.slow

TINY = ["data=synthetic", "backbone=test_resnet", "trainer=cpu"]
#: Trials of a few seconds (6 epochs; the first of a process is slower): long enough to stop
#: one between epochs, short enough that the re-run's whole budget takes seconds.
# Slow enough that a signal lands mid-trial: no frozen-feature cache (a cached linear probe
# runs its 6 epochs in well under a second).
# No portfolio: after the base trial the sampler draws, and a resume must not replay draws.
SLOW_TRIALS = [*TINY, "trainer.max_epochs=6", "data.images_per_class=48", "feature_cache=false",
               "hydra.sweeper.default_space.portfolio=null"]
RESUME_BUDGET = 3
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


@dataclass
class StoppedAndResumed:
    """A sweep stopped by a signal mid-trial, then the same command run again."""

    cwd: Path
    cut: FrozenTrial  # the trial that was running, as the storage held it at the signal
    stopped: Exited
    left: list[FrozenTrial]  # the study's trials right after the stopped sweep ended
    resumed: Exited


def command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "sweep.py"), "-m", *args]


def run_sweep(*args: str, cwd: Path, timeout: float = 240, within: Sequence[str] = ()) -> Exited:
    """``python sweep.py -m *args`` in ``cwd``; ``within`` is a command that runs it (its
    arguments follow)."""
    result = subprocess.run([*within, *command(*args)], cwd=cwd, env=ENV, capture_output=True,
                            text=True, timeout=timeout)
    return Exited(result.returncode, result.stdout, result.stderr)


def storage_url(cwd: Path) -> str:
    return f"sqlite:///{cwd / 'plateau.db'}"


def study_trials(cwd: Path) -> list[FrozenTrial]:
    assert (cwd / "plateau.db").exists()  # load_study would create an empty one
    return optuna.load_study(study_name="plateau", storage=storage_url(cwd)).trials


def trial_runs(cwd: Path) -> dict[int, Run]:
    """The MLflow run of each trial that has one, by trial number."""
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("plateau")
    runs = client.search_runs([experiment.experiment_id])
    return {int(run.data.tags["plateau.trial_number"]): run for run in runs
            if "plateau.trial_number" in run.data.tags}


def study_run(cwd: Path) -> Run:
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("plateau")
    (run,) = client.search_runs([experiment.experiment_id],
                                filter_string="tags.`plateau.study` = 'plateau' and "
                                              "attributes.run_name = 'study-plateau'")
    return run


def error_lines(stderr: str) -> list[str]:
    """plateau's own error lines (the trial table may quote trials' errors too)."""
    return [line for line in stderr.splitlines() if "plateau: error" in line]


def stopped_with_one_line(sweep: Exited) -> str:
    """The one error line of a sweep that stopped on a mistake or fault (exit 2, no
    traceback)."""
    assert sweep.returncode == 2, sweep.stderr[-3000:]
    assert "Traceback" not in sweep.output
    (line,) = error_lines(sweep.stderr)
    assert line.startswith("plateau: error:")
    return line


def interrupted(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and bool(trial.user_attrs.get("interrupted"))


def assert_rerun_from_the_queue(trials: list[FrozenTrial], cut: FrozenTrial) -> None:
    """The trial after the cut one re-ran its params, taken from the study's queue.

    (Optuna keeps an enqueued trial's params as its ``fixed_params`` system attribute: that
    tells a re-queued trial from a sampled one that happens to draw the same values.)
    """
    (rerun,) = [t for t in trials if t.number == cut.number + 1]
    assert is_finished(rerun)
    assert rerun.params == cut.params
    assert queued_params(rerun) == cut.params


def stop_mid_trial_and_resume(args: Sequence[str], cwd: Path, sig: signal.Signals,
                              timeout: float = 120) -> StoppedAndResumed:
    """Start a sweep, send ``sig`` once a trial is RUNNING and has reported an epoch, then
    run the same command again."""
    log = cwd / "first_sweep.err"
    # As from an interactive shell: Ctrl-C at its default. Under a non-interactive shell's
    # background job (`cmd &`) SIGINT is ignored, children inherit that, and Python then
    # installs no KeyboardInterrupt handler at all.
    with log.open("w") as err, subprocess.Popen(
            command(*args), cwd=cwd, env=ENV, stderr=err, stdout=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as proc:
        deadline = time.monotonic() + timeout
        cut = None
        while cut is None:
            assert proc.poll() is None, f"the sweep ended before a trial ran:\n{log.read_text()}"
            assert time.monotonic() < deadline, "no trial reported an epoch in time"
            time.sleep(0.2)
            if "budget" not in log.read_text():  # the study and its tables exist from here on
                continue
            running = [t for t in study_trials(cwd) if t.state == TrialState.RUNNING
                       and t.intermediate_values]
            cut = running[0] if running else None
        proc.send_signal(sig)
        stdout, _ = proc.communicate(timeout=60)
    stopped = Exited(proc.returncode, stdout, log.read_text())
    left = study_trials(cwd)
    return StoppedAndResumed(cwd, cut, stopped, left, run_sweep(*args, cwd=cwd))


# -- SIGKILL, then the same command again --------------------------------------------------


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> StoppedAndResumed:
    args = [*SLOW_TRIALS, f"hydra.sweeper.n_trials={RESUME_BUDGET}"]
    return stop_mid_trial_and_resume(args, tmp_path_factory.mktemp("killed"), signal.SIGKILL)


@pytest.mark.xdist_group("killed")
def test_sigkill_leaves_the_cut_trial_running(killed: StoppedAndResumed) -> None:
    """What a resume has to recover from (no code of the killed sweep ran after the signal)."""
    assert killed.stopped.returncode == -signal.SIGKILL
    (cut,) = [t for t in killed.left if t.number == killed.cut.number]
    assert cut.state == TrialState.RUNNING


@pytest.mark.xdist_group("killed")
def test_resume_after_sigkill_fails_the_killed_trial_as_interrupted(
        killed: StoppedAndResumed) -> None:
    trials = study_trials(killed.cwd)
    assert [t.number for t in trials if interrupted(t)] == [killed.cut.number]


@pytest.mark.xdist_group("killed")
def test_resume_after_sigkill_reruns_the_killed_trials_params(killed: StoppedAndResumed) -> None:
    assert_rerun_from_the_queue(study_trials(killed.cwd), killed.cut)


@pytest.mark.xdist_group("killed")
def test_resume_after_sigkill_runs_the_base_trial_once(killed: StoppedAndResumed) -> None:
    """The cut trial was the base (the study's first): re-run once, not queued anew."""
    trials = study_trials(killed.cwd)
    assert killed.cut.number == 0
    roles = [t.user_attrs.get("role") for t in trials if is_finished(t)]
    assert roles == ["base", None, None]


@pytest.mark.xdist_group("killed")
def test_resume_after_sigkill_samples_params_no_trial_ran_before(
        killed: StoppedAndResumed) -> None:
    """The seeded sampler must not replay the first sweep's draws: with continuous params no
    two finished trials share their params (the killed trial, re-run once, is not finished)."""
    finished = [t for t in study_trials(killed.cwd) if is_finished(t)]
    repeated = [t.number for i, t in enumerate(finished)
                if any(t.params == other.params for other in finished[:i])]
    assert not repeated, f"trials {repeated} re-ran params of an earlier trial"


@pytest.mark.xdist_group("killed")
def test_resume_after_sigkill_leaves_no_mlflow_run_running(killed: StoppedAndResumed) -> None:
    runs = trial_runs(killed.cwd)
    cut = runs.pop(killed.cut.number)
    assert cut.info.status == "KILLED"
    assert cut.data.tags["plateau.state"] == "FAIL"
    assert len(runs) == RESUME_BUDGET
    for run in runs.values():  # ended, as the study recorded the trial
        assert run.info.status == RUN_STATUS[run.data.tags["plateau.state"]]
    assert study_run(killed.cwd).info.status == "FINISHED"


# -- Ctrl-C, then the same command again -----------------------------------------------------


@pytest.fixture(scope="module")
def ctrl_c(tmp_path_factory: pytest.TempPathFactory) -> StoppedAndResumed:
    args = [*SLOW_TRIALS, f"hydra.sweeper.n_trials={RESUME_BUDGET}"]
    return stop_mid_trial_and_resume(args, tmp_path_factory.mktemp("ctrl_c"), signal.SIGINT)


@pytest.mark.xdist_group("ctrl_c")
def test_ctrl_c_exits_130_with_one_line_and_no_traceback(ctrl_c: StoppedAndResumed) -> None:
    stopped = ctrl_c.stopped
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.output
    lines = [line for line in stopped.stderr.splitlines() if "sweep interrupted" in line]
    assert len(lines) == 1, stopped.stderr[-3000:]
    assert "re-run the same command" in lines[0]


@pytest.mark.xdist_group("ctrl_c")
def test_ctrl_c_fails_the_cut_trial_as_interrupted_and_leaves_none_running(
        ctrl_c: StoppedAndResumed) -> None:
    assert not [t for t in ctrl_c.left if t.state == TrialState.RUNNING]
    assert [t.number for t in ctrl_c.left if interrupted(t)] == [ctrl_c.cut.number]


@pytest.mark.xdist_group("ctrl_c")
def test_ctrl_c_ends_the_cut_trials_mlflow_run_killed(ctrl_c: StoppedAndResumed) -> None:
    run = trial_runs(ctrl_c.cwd)[ctrl_c.cut.number]
    assert run.info.status == "KILLED"
    assert run.data.tags["plateau.state"] == "FAIL"


@pytest.mark.xdist_group("ctrl_c")
def test_resume_after_ctrl_c_reruns_the_interrupted_trials_params(
        ctrl_c: StoppedAndResumed) -> None:
    assert_rerun_from_the_queue(study_trials(ctrl_c.cwd), ctrl_c.cut)


# -- faults inside a trial: an exception, a NaN loss, a full disk ---------------------------


def planted_fault(fault: str, cwd: Path) -> list[str]:
    """SLOW_TRIALS whose training batches go bad at epoch 2 of one trial: the first to get
    there while ``cwd/fault`` exists (:class:`tests.faulty_parts.FaultMidFit`)."""
    marker = cwd / "fault"
    marker.touch()
    return [*SLOW_TRIALS, "data._target_=tests.faulty_parts.FaultMidFit", f"+data.fault={fault}",
            f"+data.fault_file={marker}", f"hydra.sweeper.n_trials={RESUME_BUDGET}"]


def fault_and_rerun(args: Sequence[str], cwd: Path, struck: Callable[[FrozenTrial], bool],
                    within: Sequence[str] = ()) -> StoppedAndResumed:
    """Run a sweep that meets a fault (``within`` a command setting the fault up), then the
    same sweep again; ``cut`` is the one trial ``struck`` by the fault."""
    first = run_sweep(*args, cwd=cwd, within=within)
    left = study_trials(cwd)
    (cut,) = [t for t in left if struck(t)]
    return StoppedAndResumed(cwd, cut, first, left, run_sweep(*args, cwd=cwd))


@pytest.fixture(scope="module")
def raised(tmp_path_factory: pytest.TempPathFactory) -> StoppedAndResumed:
    cwd = tmp_path_factory.mktemp("raised")
    return fault_and_rerun(planted_fault("raise", cwd), cwd,
                           lambda t: "planted fault" in t.user_attrs.get(ATTR_ERROR, ""))


@pytest.fixture(scope="module")
def diverged(tmp_path_factory: pytest.TempPathFactory) -> StoppedAndResumed:
    cwd = tmp_path_factory.mktemp("diverged")
    return fault_and_rerun(planted_fault("nan_loss", cwd), cwd,
                           lambda t: "nan" in t.user_attrs.get(ATTR_PRUNE_REASON, ""))


#: Checkpoints of the disk-full sweep go to ``<cwd>/CHECKPOINTS``, a tiny tmpfs during its
#: first run (conftest's TINY_DISK); the re-run finds the real, roomy folder (space freed).
CHECKPOINTS = "checkpoints"


@pytest.fixture(scope="module")
def disk_full(tmp_path_factory: pytest.TempPathFactory) -> StoppedAndResumed:
    cwd = tmp_path_factory.mktemp("disk_full")
    (cwd / CHECKPOINTS).mkdir()
    args = [*SLOW_TRIALS, "trainer.enable_checkpointing=true",
            f"trainer.default_root_dir={cwd / CHECKPOINTS}",
            f"hydra.sweeper.n_trials={RESUME_BUDGET}"]
    return fault_and_rerun(args, cwd, lambda t: ATTR_HALT in t.user_attrs,
                           within=[*TINY_DISK, str(cwd / CHECKPOINTS)])


#: Every way a sweep meets a fault, by the name of its fixture.
FAULTS = ["killed", "ctrl_c", "raised", "diverged", "disk_full"]
#: Each fault's tests on the test worker that runs its fixture (conftest), so it runs once.
ON_FAULTS = [pytest.param(fault, marks=pytest.mark.xdist_group(fault)) for fault in FAULTS]
#: MLflow's end status of a trial's run, by how the study recorded the trial.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED",
              "interrupted": "KILLED"}


@pytest.mark.parametrize("fault", ON_FAULTS)
def test_rerun_after_a_fault_finishes_exactly_the_budget(fault: str,
                                                        request: pytest.FixtureRequest) -> None:
    faulted: StoppedAndResumed = request.getfixturevalue(fault)
    assert faulted.resumed.returncode == 0, faulted.resumed.stderr[-3000:]
    assert "Traceback" not in faulted.resumed.output
    trials = study_trials(faulted.cwd)
    assert sum(map(is_finished, trials)) == RESUME_BUDGET
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.number for t in trials}) == len(trials)


@pytest.mark.parametrize("fault", ON_FAULTS)
def test_after_a_fault_and_rerun_study_and_mlflow_agree_on_every_trial(
        fault: str, request: pytest.FixtureRequest) -> None:
    """One MLflow run per trial of the study and none other, each saying what the study says:
    state, end status, objective; all nested under the study's run, which has ended."""
    faulted: StoppedAndResumed = request.getfixturevalue(fault)
    runs = trial_runs(faulted.cwd)
    trials = study_trials(faulted.cwd)
    assert sorted(runs) == [t.number for t in trials]
    parent = study_run(faulted.cwd)
    assert parent.info.status == "FINISHED"
    for trial in trials:
        run = runs[trial.number]
        how = "interrupted" if interrupted(trial) else trial.state.name
        assert (run.data.tags["plateau.state"], run.info.status) == (
            trial.state.name, RUN_STATUS[how]), f"trial {trial.number} ({how})"
        assert trial.user_attrs[ATTR_RUN_ID] == run.info.run_id
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.metrics.get("objective") == trial.user_attrs.get(ATTR_OBJECTIVE)
        if trial.state == TrialState.COMPLETE:
            assert trial.value == trial.user_attrs[ATTR_OBJECTIVE]


@pytest.mark.xdist_group("raised")
def test_exception_mid_fit_fails_its_trial_and_stops_a_sweep_without_tolerance(
        raised: StoppedAndResumed) -> None:
    """max_failure_rate=0 (the default): the first failure ends the sweep with one line."""
    line = stopped_with_one_line(raised.stopped)
    assert "1 of 1 trials failed, above hydra.sweeper.max_failure_rate=0.0" in line
    assert "RuntimeError: planted fault at epoch 2" in line
    assert raised.cut.state == TrialState.FAIL
    assert len(raised.cut.intermediate_values) == 2  # epochs 0 and 1 reported: mid-fit
    assert raised.cut.user_attrs[ATTR_ERROR] == "RuntimeError: planted fault at epoch 2"
    assert sum(map(is_finished, raised.left)) < RESUME_BUDGET


@pytest.mark.xdist_group("raised")
def test_rerun_after_an_exception_counts_the_failed_trial_and_does_not_repeat_it(
        raised: StoppedAndResumed) -> None:
    """The failure was the trial's own (not an interruption): it keeps its unit of the
    budget, and the re-run's failure rate starts afresh (earlier failures do not stop it)."""
    trials = study_trials(raised.cwd)
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [raised.cut.number]
    # no trial re-ran it from the queue: the one queued trial is the base, the study's first
    assert [t.user_attrs.get("role") for t in trials if queued_params(t)] == ["base"]
    run = trial_runs(raised.cwd)[raised.cut.number]
    assert run.data.tags["plateau.error"] == raised.cut.user_attrs[ATTR_ERROR]


@pytest.mark.xdist_group("diverged")
def test_nan_loss_mid_fit_prunes_its_trial_and_the_sweep_goes_on(
        diverged: StoppedAndResumed) -> None:
    first, cut = diverged.stopped, diverged.cut
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Traceback" not in first.output
    assert cut.state == TrialState.PRUNED
    assert cut.user_attrs[ATTR_PRUNE_REASON] == "val/loss is nan at epoch 3 of 6: diverged"
    assert sorted(cut.intermediate_values) == [0, 1]  # the NaN epoch is not reported
    assert math.isfinite(cut.user_attrs[ATTR_OBJECTIVE])  # its best epoch before the NaN
    run = trial_runs(diverged.cwd)[cut.number]
    assert run.data.tags["plateau.stop_reason"] == cut.user_attrs[ATTR_PRUNE_REASON]
    assert run.data.tags["plateau.diagnosis"] == "diverged"
    assert sum(map(is_finished, diverged.left)) == RESUME_BUDGET


@pytest.mark.xdist_group("diverged")
def test_rerun_of_a_study_that_met_its_budget_runs_nothing(diverged: StoppedAndResumed) -> None:
    assert [(t.number, t.state) for t in study_trials(diverged.cwd)] == [
        (t.number, t.state) for t in diverged.left]
    said = " ".join(diverged.resumed.stderr.split())  # rich wraps long lines
    assert f"budget {RESUME_BUDGET} finished trials, {RESUME_BUDGET} done" in said


@pytest.mark.xdist_group("disk_full")
def test_full_disk_stops_the_sweep_with_one_line_naming_the_file_and_the_fix(
        disk_full: StoppedAndResumed) -> None:
    line = stopped_with_one_line(disk_full.stopped)
    assert f"trial {disk_full.cut.number} ran out of disk space writing " \
           f"{disk_full.cwd / CHECKPOINTS}/" in line
    assert "No space left on device" in line
    assert "re-run the same command to continue the study" in line


@pytest.mark.xdist_group("disk_full")
def test_full_disk_queues_its_trial_again_uncounted_and_leaves_no_partial_checkpoint(
        disk_full: StoppedAndResumed) -> None:
    cut = disk_full.cut
    assert interrupted(cut)
    assert not [t for t in disk_full.left if is_finished(t)]  # the first trial hit it
    assert (disk_full.cwd / f"{CHECKPOINTS}.left").read_text() == ""
    run = trial_runs(disk_full.cwd)[cut.number]
    assert run.data.tags["plateau.error"] == cut.user_attrs[ATTR_HALT]


@pytest.mark.xdist_group("disk_full")
def test_rerun_after_a_full_disk_reruns_the_trial_and_saves_every_checkpoint(
        disk_full: StoppedAndResumed) -> None:
    trials = study_trials(disk_full.cwd)
    assert_rerun_from_the_queue(trials, disk_full.cut)
    saved = sorted((disk_full.cwd / CHECKPOINTS).rglob("*.ckpt"))
    runs = trial_runs(disk_full.cwd)
    assert sorted(path.parent.parent.name for path in saved) == sorted(
        runs[t.number].info.run_id for t in trials if is_finished(t))


# -- trials that raise -----------------------------------------------------------------------

#: A grid of 4 trials; 3 raise: freeze.depth=99 is beyond test_resnet's 5 stages (a config
#: mistake, caught before the trial's MLflow run exists), Nesterov SGD without momentum (each
#: value valid alone; torch refuses the pair when the fit builds the optimizer) fails inside
#: the fit.
FAILING_SEARCH = """\
# @package _global_
hydra:
  sweeper:
    params:
      freeze.depth: choice(2, 99)
      optimizer.momentum: choice(0.5, 0.0)
      trainer.max_epochs: 1
"""


def failing_sweep(cwd: Path, max_failure_rate: float) -> Exited:
    search = cwd / "conf" / "search" / "fails.yaml"
    search.parent.mkdir(parents=True)
    search.write_text(FAILING_SEARCH)
    return run_sweep(f"--config-dir={cwd / 'conf'}", "search=fails", "hydra/sweeper/sampler=grid",
                     *TINY, "freeze=depth", "optimizer=sgd", "hydra.sweeper.n_trials=4",
                     f"hydra.sweeper.max_failure_rate={max_failure_rate}", cwd=cwd)


#: The launch directory and the sweep of FAILING_SEARCH with max_failure_rate=1.0.
Tolerant = tuple[Path, Exited]


@pytest.fixture(scope="module")
def tolerant_sweep(tmp_path_factory: pytest.TempPathFactory) -> Tolerant:
    cwd = tmp_path_factory.mktemp("tolerant")
    return cwd, failing_sweep(cwd, 1.0)


@pytest.mark.xdist_group("tolerant_sweep")
def test_failing_trials_do_not_stop_a_tolerant_sweep(tolerant_sweep: Tolerant) -> None:
    cwd, result = tolerant_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.output
    states = sorted(t.state.name for t in study_trials(cwd))
    assert states == ["COMPLETE", "FAIL", "FAIL", "FAIL"]


@pytest.mark.xdist_group("tolerant_sweep")
def test_failing_trial_is_recorded_fail_with_its_error(tolerant_sweep: Tolerant) -> None:
    cwd, _ = tolerant_sweep
    for trial in study_trials(cwd):
        error = trial.user_attrs.get("error")
        if trial.params["freeze.depth"] == 99:
            assert trial.state == TrialState.FAIL
            assert "freeze.depth=99" in error
        elif trial.params["optimizer.momentum"] == 0:
            assert trial.state == TrialState.FAIL
            assert "Nesterov" in error
        else:
            assert trial.state == TrialState.COMPLETE
            assert error is None


@pytest.mark.xdist_group("tolerant_sweep")
def test_trial_failing_in_the_fit_has_its_mlflow_run_failed_and_tagged(
        tolerant_sweep: Tolerant) -> None:
    cwd, _ = tolerant_sweep
    (trial,) = [t for t in study_trials(cwd) if t.params == {"freeze.depth": 2,
                                                             "optimizer.momentum": 0.0}]
    run = trial_runs(cwd)[trial.number]
    assert run.info.status == "FAILED"
    assert run.data.tags["plateau.state"] == "FAIL"
    assert run.data.tags["plateau.error"] == trial.user_attrs["error"]


@pytest.mark.xdist_group("tolerant_sweep")
def test_every_failing_trial_has_an_mlflow_run_tagged_with_its_error(
        tolerant_sweep: Tolerant) -> None:
    """README "Failures": a trial that raises is recorded with its error as MLflow tag too."""
    cwd, _ = tolerant_sweep
    runs = trial_runs(cwd)
    failed = [t for t in study_trials(cwd) if t.state == TrialState.FAIL]
    untracked = [t.user_attrs["error"] for t in failed if t.number not in runs]
    assert not untracked, f"failed trials without an MLflow run: {untracked}"
    for trial in failed:
        assert runs[trial.number].data.tags["plateau.state"] == "FAIL"
        assert runs[trial.number].data.tags["plateau.error"] == trial.user_attrs["error"]


def test_failure_above_max_failure_rate_stops_the_sweep_with_one_line(tmp_path: Path) -> None:
    line = stopped_with_one_line(failing_sweep(tmp_path, 0.0))
    assert "max_failure_rate=0.0" in line
    trials = study_trials(tmp_path)
    assert sum(map(is_finished, trials)) < 4  # stopped before the budget
    assert [t.state for t in trials if is_finished(t)][-1] == TrialState.FAIL


# -- sweeper settings that cannot work -------------------------------------------------------

#: A password that must never be printed (it is in the storage URL of one case).
SECRET = "secret"
#: case: (overrides, what the one error line says); ``{afile}`` is a regular file (conftest).
SWEEPER_MISTAKES = {
    "zero budget": (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0"),
    "negative budget": (["hydra.sweeper.n_trials=-3"], "hydra.sweeper.n_trials=-3"),
    "budget not a number": (["hydra.sweeper.n_trials=ten"],
                            "hydra.sweeper.n_trials=ten: Value 'ten' of type 'str' could not be "
                            "converted to Integer"),
    "monitor not a reported metric": (["hydra.sweeper.monitor=val/auc"],
                                      "hydra.sweeper.monitor=val/auc is not a metric trials "
                                      "report each epoch; use one of val/loss, val/acc,"),
    "direction against the objective": (["hydra.sweeper.direction=minimize"],
                                        "objective.direction=maximize"),
    "unknown group option": (["augment=nope"],
                             "augment=nope: the config group augment has no option nope; use "
                             "one of heavy, light, none,"),
    "unknown key": (["optimizer.lrr=0.1"], "optimizer.lrr: optimizer has no key lrr"),
    "epochs not a number": (["trainer.max_epochs=abc"],
                            "trainer.max_epochs=abc: trainer.max_epochs (epochs per trial) must "
                            "be an integer >= 1"),
    "batch larger than the data": (["data.batch_size=100000"],
                                   "data.batch_size=100000 is larger than the 39 training images"),
    "interval without its end": (["hydra.sweeper.params.optimizer.lr=interval(1e-2)"],
                                 "cannot parse the override 'hydra.sweeper.params.optimizer.lr="
                                 "interval(1e-2)' (TypeError"),
    "search expression under hydra.sweeper.params": (
        ["hydra.sweeper.params.optimizer.lr=tag(log, choice(a,b))"],
        "sweep optimizer.lr=tag(log, choice(a,b)) on the command line instead"),
    "quoted search expression under hydra.sweeper.params": (
        ["hydra.sweeper.params.optimizer.lr='range(5,1)'"],
        "search parameters cannot be set under hydra.sweeper.params from the command line; "
        "sweep optimizer.lr=range(5,1) instead"),
    "log tag on a choice": (["optimizer.lr=tag(log, choice(a,b))"],
                            "optimizer.lr: tag(log, ...) does nothing on choice(...)"),
    "backwards range": (["optimizer.lr=range(5,1)"], "optimizer.lr: range(5, 1, step=1) is empty"),
    "empty search space": (["hydra.sweeper.params={}"], "the search space is empty"),
    "unreachable storage": (
        [f"hydra.sweeper.storage=postgresql+psycopg2://u:{SECRET}@127.0.0.1:1/db"],
        "cannot open the study storage postgresql+psycopg2://u:***@127.0.0.1:1/db"),
    "MLflow store below a file": (["logger.tracking_uri=sqlite:///{afile}/mlflow.db"],
                                  "logger.tracking_uri=sqlite:///{afile}/mlflow.db: {afile} is "
                                  "a file, not a folder"),
    "multi-node trials": (["+trainer.num_nodes=2"], "trainer.num_nodes=2: a trial of a sweep"),
    "DDP trials under a launcher of other processes": (
        ["trainer.devices=2", "hydra/launcher=joblib"],
        "trainer.devices=2 trains each trial with DDP, whose extra ranks re-run sweep.py, but "
        "hydra/launcher=joblib runs trials in its own processes"),
    "several tasks per trial": (["hydra/launcher=submitit_local",
                                 "hydra.launcher.tasks_per_node=2"],
                                "hydra.launcher.tasks_per_node=2 would run each trial's job 2 "
                                "times at once; set it to 1"),
    "sweep folder below a file": (["hydra.sweep.dir={afile}/sweep"],
                                  "hydra.sweep.dir={afile}/sweep: {afile} is a file, not a folder"),
}


@pytest.mark.parametrize("case", list(SWEEPER_MISTAKES))
def test_sweeper_mistake_gets_one_line_error_and_no_study_or_run(
        case: str, tmp_path: Path, a_file: Path, sweep_here: Callable[..., Exited]) -> None:
    """In the test process (conftest's ``sweep_here``); test_sweep runs such mistakes (the
    preflight's, an unreachable storage) as real processes."""
    overrides, expected = SWEEPER_MISTAKES[case]
    overrides = [o.replace("{afile}", str(a_file)) for o in overrides]  # {} is an override
    result = sweep_here("-m", *TINY, *overrides, cwd=tmp_path)
    line = stopped_with_one_line(result)
    assert SECRET not in result.output
    assert expected.replace("{afile}", str(a_file)) in line
    db = tmp_path / "plateau.db"
    assert not db.exists() or not optuna.get_all_study_summaries(storage_url(tmp_path))
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "multirun").exists()


# -- a time budget -----------------------------------------------------------------------------


@pytest.mark.slow
def test_timeout_stops_launching_and_reruns_end_with_exactly_the_budget(tmp_path: Path) -> None:
    """Each sweep launches trials for one second: a trial takes longer, so each sweep runs
    one trial to its end and stops; the third finds the budget met and runs nothing."""
    args = [*SLOW_TRIALS, "hydra.sweeper.n_trials=2", "hydra.sweeper.timeout=1s"]
    for finished_after, stopped_by_time in ((1, True), (2, False), (2, False)):
        sweep = run_sweep(*args, cwd=tmp_path)
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        trials = study_trials(tmp_path)
        assert sum(map(is_finished, trials)) == finished_after
        assert not [t for t in trials if t.state == TrialState.RUNNING]
        told = "hydra.sweeper.timeout=1s is spent: no new trials; 0 running trial(s) finish"
        assert (told in " ".join(sweep.output.split())) == stopped_by_time, sweep.output[-2000:]
    assert "budget 2 finished trials, 2 done" in sweep.output

"""The sweep: an Optuna study whose trials are Hydra jobs, with pruning, resume and MLflow.

``n_trials`` is the study's total budget of *finished* trials: COMPLETE, PRUNED, and FAIL
raised by the trial itself. Re-running the same command continues the study until the budget
is met. Trials cut off by a killed or interrupted sweep (left RUNNING, or FAIL with
``interrupted``) do not count: they are failed and their parameters re-run.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import shutil
import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, Trial, TrialState

from sweeps import ddp, report, report_files, study_report, study_trial, tracking
from sweeps.errors import PlateauError, console, one_line
from sweeps.pruning import METRICS
from sweeps.search_space import SearchSpace, grid_choices, parse_search_space
from sweeps.storage import (
    DEFAULT_STUDY_NAME,
    hide_storage_password,
    mask_password,
    open_storage,
    resolve_storage_url,
)
from sweeps.study_report import StudyReport
from sweeps.study_runs import StudyRun
from sweeps.study_trial import is_finished

log = logging.getLogger(__name__)

DIRECTIONS = ("maximize", "minimize")
#: SQLAlchemy's "(Background on this error at: https://sqlalche.me/...)" tail of its errors.
_SQLALCHEMY_LINK = re.compile(r"\s*\(Background on this error at: [^)]*\)")


def _plain(node: DictConfig | None) -> dict[str, Any]:
    container = OmegaConf.to_container(node) if node else {}
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


def _params_cleared(config: DictConfig) -> bool:
    """Whether the command line emptied the params (``hydra.sweeper.params={}``) and they are
    still null: OmegaConf merges an empty dict into a null node as a no-op."""
    if OmegaConf.select(config, "hydra.sweeper.params") is not None:
        return False
    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.hydra))
    return any(o.key_or_group == "hydra.sweeper.params" and o.value() == {} for o in overrides)


def _override_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class StudySweeper:
    """Implementation behind ``hydra_plugins.plateau_sweeper.PlateauSweeper``."""

    def __init__(self, sampler: Any, pruner: Any, direction: Any, storage: str | None,
                 study_name: str | None, n_trials: int, n_jobs: int, max_failure_rate: float,
                 params: DictConfig | None, custom_search_space: str | None,
                 conditional_params: DictConfig | None, default_space: DictConfig | None,
                 monitor: str, heartbeat_timeout_s: float, trials_per_gpu: int = 1) -> None:
        self.sampler = sampler
        self.pruner = pruner
        self.direction = str(direction)
        self.storage = storage
        self.study_name = study_name or DEFAULT_STUDY_NAME
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        # The user's params replace the default space (and its conditionals) entirely.
        default = default_space if params is None and default_space is not None else None
        self.params: dict[str, Any] = _plain(params if default is None else default.params)
        self.conditional: dict[str, Any] = _plain(
            conditional_params if default is None else default.conditional_params)
        self.custom_search_space: Callable[[DictConfig, Trial], None] | None = (
            get_method(custom_search_space) if custom_search_space else None)
        self.monitor = monitor
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.trials_per_gpu = trials_per_gpu
        self._in_flight: set[int] = set()
        self._launched: set[int] = set()  # numbers of the trials this worker ran
        self._lock = threading.Lock()
        self._started = time.time()  # when sweep() began: failures before do not count

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = str(config.hydra.sweep.dir)
        if _params_cleared(config):  # empty params replace the default space as any params do
            self.params = {}
            self.conditional = _plain(config.hydra.sweeper.conditional_params)

    # -- study ---------------------------------------------------------------------------

    def _check_settings(self) -> None:
        if self.n_trials <= 0:
            raise PlateauError(f"hydra.sweeper.n_trials={self.n_trials}: the study's budget "
                               "must be at least 1 trial; give it 1 or more, e.g. "
                               "hydra.sweeper.n_trials=10")
        if self.n_jobs <= 0:
            raise PlateauError(f"hydra.sweeper.n_jobs={self.n_jobs}: no trial could run; set "
                               "it to 1 or more")
        if self.trials_per_gpu <= 0:
            raise PlateauError(f"hydra.sweeper.trials_per_gpu={self.trials_per_gpu}: no trial "
                               "could run; set it to 1 or more")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise PlateauError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate} is not "
                               "a share of trials; set it between 0 and 1")
        if self.monitor not in METRICS:
            raise PlateauError(f"hydra.sweeper.monitor={self.monitor} is not a metric trials "
                               f"report each epoch; use one of {', '.join(METRICS)}")
        if self.direction not in DIRECTIONS:
            raise PlateauError(f"hydra.sweeper.direction={self.direction}: plateau optimizes one "
                               "objective; set it to maximize or minimize")

    def _check_launcher(self) -> None:
        """Launcher settings that cannot run the trials: one line before any study or run.

        SLURM's launcher needs SLURM's commands. A DDP trial starts its extra ranks by
        re-running ``sweep.py`` (:mod:`sweeps.ddp`), which only the basic launcher runs in;
        SLURM tasks beyond one per job would each run the whole trial.
        """
        launcher = type(self.launcher).__name__
        if launcher == "SlurmLauncher" and shutil.which("srun") is None:
            raise PlateauError(
                "hydra/launcher=slurm submits each trial with SLURM's sbatch/srun, which are "
                "not on PATH here: start the sweep on the cluster's login node, or use "
                "hydra/launcher=submitit_local to run the same code path on this machine")
        tasks = OmegaConf.select(self.config, "hydra.launcher.tasks_per_node", default=1)
        if isinstance(tasks, int) and tasks > 1:
            raise PlateauError(
                f"hydra.launcher.tasks_per_node={tasks} would run each trial's job {tasks} "
                "times at once; set it to 1 (a DDP trial starts its own ranks: trainer.devices)")
        ranks = ddp.processes(self.config.trainer)
        if ranks > 1 and not isinstance(self.launcher, BasicLauncher):
            raise PlateauError(
                f"trainer.devices={self.config.trainer.devices} trains each trial with DDP, "
                "whose extra ranks re-run sweep.py, but hydra/launcher="
                f"{self.config.hydra.runtime.choices.get('hydra/launcher')} runs trials in its "
                "own processes: keep the default launcher and start more workers (or a SLURM "
                "job array of them) to run DDP trials in parallel")

    def _check_objective(self) -> None:
        objective = OmegaConf.select(self.config, "objective.direction")
        if objective is not None and objective != self.direction:
            raise PlateauError(
                f"hydra.sweeper.direction={self.direction} but objective.direction={objective}: "
                f"the study would optimize {self.config.objective.metric} the wrong way; "
                "set both to the same direction"
            )

    def _check_nodes(self) -> None:
        """DDP trials run on one node: their extra ranks are this job's own processes
        (:mod:`sweeps.ddp`); ranks started by a cluster on other nodes would each run the
        trial's job as if it were theirs."""
        nodes = OmegaConf.select(self.config, "trainer.num_nodes", default=1)
        if nodes not in (None, 1):
            raise PlateauError(
                f"trainer.num_nodes={nodes}: a trial of a sweep trains on one node; use "
                "trainer.devices for DDP on that node's GPUs, and more workers (or "
                "hydra/launcher=slurm) to use more nodes")

    def _create_study(self, space: SearchSpace, url: str) -> tuple[optuna.Study, bool]:
        """The study, and whether this worker created it (other workers load it)."""
        sampler = self.sampler
        if isinstance(sampler, functools.partial):  # GridSampler needs the grid
            grid = grid_choices(space)
            sampler = sampler(grid)
            size = math.prod(len(values) for values in grid.values())
            if size < self.n_trials:
                log.info("grid has %d points: n_trials lowered from %d", size, self.n_trials)
                self.n_trials = size
        try:
            settings = dict(study_name=self.study_name, storage=open_storage(url),
                            sampler=sampler, pruner=self.pruner,
                            direction=StudyDirection[self.direction.upper()])
            try:
                return optuna.create_study(**settings), True
            except optuna.exceptions.DuplicatedStudyError:
                return optuna.create_study(**settings, load_if_exists=True), False
        except ValueError as err:  # e.g. an existing study with another direction
            raise PlateauError(f"study '{self.study_name}' in {mask_password(url)}: {err}; "
                               "use another hydra.sweeper.study_name") from err
        except Exception as err:
            first = one_line(_SQLALCHEMY_LINK.sub("", mask_password(str(err))), 200)
            raise PlateauError(f"cannot open the study storage {mask_password(url)} ({first}); "
                               "check hydra.sweeper.storage and that its server runs") from err

    def _recover_stale(self, study: optuna.Study, run: StudyRun,
                       own: Collection[int] = ()) -> None:
        """Fail trials left RUNNING by a dead sweep (or ``own`` ones) and queue them again."""
        now = time.time()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = trial.user_attrs.get(study_trial.ATTR_OWNER, "")
            # no owner yet: another worker is between asking and suggesting (or died there)
            alive = study_trial.owner_alive(owner) if owner else None
            started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
            beat = trial.user_attrs.get(study_trial.ATTR_HEARTBEAT, started)
            stale = not alive and (alive is not None or now - beat >= self.heartbeat_timeout_s)
            if not stale and trial._trial_id not in own:
                continue
            study_trial.abandon(study, trial)
            run.end_child(trial, "KILLED")
            log.warning("trial %d was cut off by a stopped sweep: marked failed, its params "
                        "queued again", trial.number)

    def _preflight(self) -> None:
        """The doctor's preflight on the base config (each trial runs its own as well): an
        error stops the sweep before its study or MLflow run exists."""
        from sweeps.trial import preflight_config, preflight_settings

        if not preflight_settings(self.config).enabled:
            return
        report = preflight_config(self.config)
        console.print(f"preflight of the base config: {len(report.of('error'))} errors, "
                      f"{len(report.of('warning'))} warnings")
        report.show()
        report.raise_for_errors()

    # -- trials --------------------------------------------------------------------------

    def _suggest(self, trial: Trial, space: SearchSpace) -> list[str]:
        for name, distribution in space.distributions.items():
            trial._suggest(name, distribution)
        for name, (parent, expected, distribution) in space.conditional.items():
            if _override_value(trial.params.get(parent)) == expected:
                trial._suggest(name, distribution)
        if self.custom_search_space is not None:
            self.custom_search_space(self.config, trial)
        overlap = set(trial.params) & set(space.fixed)
        if overlap:
            raise PlateauError(f"{', '.join(sorted(overlap))} is both searched and fixed: "
                               "keep one")
        overrides = [f"{k}={_override_value(v)}" for k, v in trial.params.items()]
        overrides += [f"{k}={_override_value(v)}" for k, v in space.fixed.items()]
        trial.set_user_attr(study_trial.ATTR_OVERRIDES, overrides)
        trial.set_user_attr(study_trial.ATTR_OWNER, study_trial.owner_id())
        trial.set_user_attr(study_trial.ATTR_HEARTBEAT, time.time())
        return overrides

    def _next_trial(self, study: optuna.Study,
                    space: SearchSpace) -> tuple[Trial, list[str]] | None:
        """Ask the next trial of the budget, or None when every unit is claimed.

        Other workers may share the study: a trial asked as the budget ran out elsewhere is
        withdrawn (see :func:`study_trial.within_budget`).
        """
        trials = study.get_trials(deepcopy=False)
        self._check_failures(trials)
        if sum(map(study_trial.claims_budget, trials)) >= self.n_trials:
            return None
        trial = study.ask()
        if not study_trial.within_budget(study.get_trials(deepcopy=False), trial.number,
                                         self.n_trials):
            study_trial.withdraw(study, trial._trial_id)
            return None
        return trial, self._suggest(trial, space)

    def _run_next(self, study: optuna.Study, space: SearchSpace) -> bool:
        """Run one more trial of the budget as a Hydra job; False when there is none to run."""
        with self._lock:
            asked = self._next_trial(study, space)
            if asked is None:
                return False
            trial, overrides = asked
            self._in_flight.add(trial._trial_id)
            self._launched.add(trial.number)
        try:
            try:
                # job number = trial number: unique among workers sharing the sweep folder
                (result,) = self.launcher.launch([(*overrides, f"trial_id={trial._trial_id}")],
                                                 initial_job_idx=trial.number)
            except Exception as err:  # the launcher itself failed: no job ran
                # not the trial's fault: queued again for the next sweep, not counted
                study_trial.abandon(study, study._storage.get_trial(trial._trial_id))
                raise PlateauError(
                    f"hydra/launcher could not start trial {trial.number} "
                    f"({one_line(f'{type(err).__name__}: {err}')}); check the hydra.launcher.* "
                    "settings (python sweep.py -m --cfg hydra prints them)") from err
            self._settle(study, trial, result)
        finally:
            with self._lock:
                self._in_flight.discard(trial._trial_id)
        return True

    def _settle(self, study: optuna.Study, trial: Trial, result: Any) -> None:
        """Fail a trial whose job died before telling the study how it ended; stop the sweep
        when the job says every further trial would fail too (a full disk)."""
        frozen = study._storage.get_trial(trial._trial_id)
        halt = frozen.user_attrs.get(study_trial.ATTR_HALT)
        if halt:
            raise PlateauError(f"{halt} to continue the study (trial {trial.number} runs "
                               "again)")
        if frozen.state != TrialState.RUNNING:
            return
        error = getattr(result, "_return_value", None)
        message = one_line(error) or "the job ended without a result"
        study._storage.set_trial_user_attr(trial._trial_id, study_trial.ATTR_ERROR, message)
        study.tell(trial, state=TrialState.FAIL)

    def sweep(self, arguments: list[str]) -> list[FrozenTrial]:
        self._check_settings()
        self._check_launcher()
        self._check_objective()
        self._check_nodes()
        tracking.check_store(self.config)
        space = parse_search_space(self.params, arguments, self.conditional)
        self._preflight()
        url = resolve_storage_url(self.storage)
        study, created = self._create_study(space, url)
        hide_storage_password(self.config, url)
        if study.trials or not created:
            # resumed, or another worker's study: do not replay the same seeded draws
            study.sampler.reseed_rng()
        run = StudyRun.open(self.config, study, url, self.sampler, self.pruner, created)
        console.print(f"study '{self.study_name}' in {mask_password(url)}: budget "
                      f"{self.n_trials} finished trials, {sum(map(is_finished, study.trials))} "
                      "done")
        started = self._started = time.time()
        status = "FINISHED"
        try:
            self._recover_stale(study, run)
            self._loop(study, space)
        except KeyboardInterrupt:
            status = "KILLED"
            self._recover_stale(study, run, own=self._in_flight)
            console.print("[yellow]plateau: sweep interrupted; re-run the same command to "
                          "continue the study[/]")
            raise
        except PlateauError:
            status = "FAILED"
            raise
        finally:
            trials = study.get_trials(deepcopy=False)
            ended = status != "KILLED"
            closing = self._ends_study(trials, status, started)
            written = self._write_report(study, run) if ended and closing else None
            if closing:
                run.close(study, status)  # after the report: its plots go to the parent run
            if ended:
                report.finish(study, trials, self, time.time() - started)
            if written is not None:
                study_report.print_summary(written)
        return trials

    def _ends_study(self, trials: Sequence[FrozenTrial], status: str, started: float) -> bool:
        """Whether this worker writes the study report and ends the study's MLflow run.

        Of several workers sharing the study, exactly one does: the one that ran the trial
        finished last. A worker that sees trials of the budget still running leaves that to
        their worker; every worker that sees none running sees the same last trial, so they
        agree without talking. A worker that stops on an error or Ctrl-C ends the run itself
        when nothing else runs.
        """
        running = [t for t in trials if t.state == TrialState.RUNNING
                   and study_trial.within_budget(trials, t.number, self.n_trials)]
        if running:
            console.print(f"plateau: this worker is done; {len(running)} trials still run in "
                          "other workers, the last of them writes the study report")
            return False
        if status != "FINISHED":
            return True
        recent = [t for t in trials if is_finished(t) and t.datetime_complete is not None
                  and t.datetime_complete.timestamp() >= started]
        if not recent:  # nothing ran in this round: the study was already complete
            return True
        last = max(recent, key=lambda t: t.datetime_complete or 0)
        if last.number in self._launched:
            return True
        console.print(f"plateau: this worker is done; the worker that ran trial {last.number}, "
                      "the last to finish, writes the study report")
        return False

    def _write_report(self, study: optuna.Study, run: StudyRun) -> StudyReport | None:
        """The post-sweep report in ``<sweep dir>/report``; a failure only warns."""
        try:
            return study_report.publish(
                study, Path(self.sweep_dir) / report_files.REPORT_DIR, run.client, run.run_id,
                study_report.objective_label(self.config), self.monitor)
        except Exception as err:  # the study ran fine: the sweep must not fail for its report
            log.warning("study report not written: %s", one_line(f"{type(err).__name__}: {err}"))
            return None

    def _check_failures(self, trials: Sequence[FrozenTrial]) -> None:
        """Stop when more than ``max_failure_rate`` of the trials finished since this sweep
        started failed (in any worker). Earlier sweeps' failures do not count: re-running the
        command after fixing their cause continues the study."""
        finished = [t for t in trials if is_finished(t) and t.datetime_complete is not None
                    and t.datetime_complete.timestamp() >= self._started]
        failed = [t for t in finished if t.state == TrialState.FAIL]
        if finished and len(failed) / len(finished) > self.max_failure_rate:
            last = failed[-1].user_attrs.get(study_trial.ATTR_ERROR, "")
            raise PlateauError(
                f"{len(failed)} of {len(finished)} trials failed, above hydra.sweeper."
                f"max_failure_rate={self.max_failure_rate} (last error: {last}); fix the "
                "cause or raise max_failure_rate"
            )

    def _loop(self, study: optuna.Study, space: SearchSpace) -> None:
        """Run trials until the budget is claimed, keeping ``n_jobs`` of them in flight.

        Each slot asks its next trial as soon as its last one ends (no batches waiting for
        their slowest trial). Slots are threads that hand one job at a time to the launcher,
        which runs it in another process (joblib, submitit); the in-process basic launcher
        runs one trial at a time whatever ``n_jobs`` says.
        """
        slots = 1 if isinstance(self.launcher, BasicLauncher) else self.n_jobs
        if slots == 1:
            while self._run_next(study, space):
                pass
            return
        stop = threading.Event()
        errors: list[BaseException] = []

        def slot() -> None:
            try:
                while not stop.is_set() and self._run_next(study, space):
                    pass
            except BaseException as err:  # handed to the main thread
                errors.append(err)
                stop.set()

        threads = [threading.Thread(target=slot, name=f"plateau-slot-{i}", daemon=True)
                   for i in range(slots)]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # short joins keep the main thread responsive to Ctrl-C
                thread.join(0.5)
        if errors:
            raise errors[0]

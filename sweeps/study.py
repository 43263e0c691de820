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
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, Trial, TrialState

from sweeps import report, report_files, study_report, study_trial
from sweeps.errors import PlateauError, console, one_line
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


def _plain(node: DictConfig | None) -> dict[str, Any]:
    container = OmegaConf.to_container(node) if node else {}
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


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
                 monitor: str, heartbeat_timeout_s: float) -> None:
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
        self.job_idx = 0
        self._in_flight: list[int] = []

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = str(config.hydra.sweep.dir)

    # -- study ---------------------------------------------------------------------------

    def _check_settings(self) -> None:
        if self.n_trials <= 0:
            raise PlateauError(f"hydra.sweeper.n_trials={self.n_trials}: the study's budget "
                               "must be at least 1 trial")
        if self.n_jobs <= 0:
            raise PlateauError(f"hydra.sweeper.n_jobs={self.n_jobs} must be at least 1")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise PlateauError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate} must be "
                               "between 0 and 1")
        if self.direction not in DIRECTIONS:
            raise PlateauError(f"hydra.sweeper.direction={self.direction} must be maximize or "
                               "minimize (plateau optimizes one objective)")

    def _check_objective(self) -> None:
        objective = OmegaConf.select(self.config, "objective.direction")
        if objective is not None and objective != self.direction:
            raise PlateauError(
                f"hydra.sweeper.direction={self.direction} but objective.direction={objective}: "
                f"the study would optimize {self.config.objective.metric} the wrong way; "
                "set both to the same direction"
            )

    def _create_study(self, space: SearchSpace, url: str) -> optuna.Study:
        sampler = self.sampler
        if isinstance(sampler, functools.partial):  # GridSampler needs the grid
            grid = grid_choices(space)
            sampler = sampler(grid)
            size = math.prod(len(values) for values in grid.values())
            if size < self.n_trials:
                log.info("grid has %d points: n_trials lowered from %d", size, self.n_trials)
                self.n_trials = size
        try:
            return optuna.create_study(study_name=self.study_name, storage=open_storage(url),
                                       sampler=sampler, pruner=self.pruner,
                                       direction=StudyDirection[self.direction.upper()],
                                       load_if_exists=True)
        except ValueError as err:  # e.g. an existing study with another direction
            raise PlateauError(f"study '{self.study_name}' in {mask_password(url)}: {err}; "
                               "use another hydra.sweeper.study_name") from err
        except Exception as err:
            first = one_line(mask_password(str(err)), 200)
            raise PlateauError(f"cannot open the study storage {mask_password(url)} ({first}): "
                               "check hydra.sweeper.storage") from err

    def _recover_stale(self, study: optuna.Study, run: StudyRun,
                       own: Sequence[int] = ()) -> None:
        """Fail trials left RUNNING by a dead sweep (or ``own`` ones) and queue them again."""
        now = time.time()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = trial.user_attrs.get(study_trial.ATTR_OWNER, "")
            alive = study_trial.owner_alive(owner) if owner else False
            beat = trial.user_attrs.get(study_trial.ATTR_HEARTBEAT, 0.0)
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

    def _launch(self, study: optuna.Study, space: SearchSpace, count: int) -> list[FrozenTrial]:
        trials = [study.ask() for _ in range(count)]
        self._in_flight = [t._trial_id for t in trials]
        batch = [(*self._suggest(t, space), f"trial_id={t._trial_id}") for t in trials]
        returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
        self.job_idx += len(returns)
        ended = []
        for trial, result in zip(trials, returns, strict=True):
            frozen = study._storage.get_trial(trial._trial_id)
            if frozen.state == TrialState.RUNNING:  # the job died before telling
                error = getattr(result, "_return_value", None)
                message = one_line(error) or "the job ended without a result"
                study._storage.set_trial_user_attr(trial._trial_id, study_trial.ATTR_ERROR,
                                                   message)
                study.tell(trial, state=TrialState.FAIL)
                frozen = study._storage.get_trial(trial._trial_id)
            ended.append(frozen)
        return ended

    def sweep(self, arguments: list[str]) -> list[FrozenTrial]:
        self._check_settings()
        self._check_objective()
        space = parse_search_space(self.params, arguments, self.conditional)
        self._preflight()
        url = resolve_storage_url(self.storage)
        study = self._create_study(space, url)
        hide_storage_password(self.config, url)
        if study.trials:  # a resumed study: do not replay the first sweep's seeded draws
            study.sampler.reseed_rng()
        run = StudyRun.open(self.config, study, url, self.sampler, self.pruner)
        console.print(f"study '{self.study_name}' in {mask_password(url)}: budget "
                      f"{self.n_trials} finished trials, {sum(map(is_finished, study.trials))} "
                      "done")
        started = time.time()
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
            written = self._write_report(study, run) if ended else None
            run.close(study, status)  # after the report: its plots go to the open parent run
            if ended:
                report.finish(study, trials, self, time.time() - started)
            if written is not None:
                study_report.print_summary(written)
        return trials

    def _write_report(self, study: optuna.Study, run: StudyRun) -> StudyReport | None:
        """The post-sweep report in ``<sweep dir>/report``; a failure only warns."""
        try:
            return study_report.publish(
                study, Path(self.sweep_dir) / report_files.REPORT_DIR, run.client, run.run_id,
                study_report.objective_label(self.config), self.monitor)
        except Exception as err:  # the study ran fine: the sweep must not fail for its report
            log.warning("study report not written: %s", one_line(f"{type(err).__name__}: {err}"))
            return None

    def _loop(self, study: optuna.Study, space: SearchSpace) -> None:
        while True:
            trials = study.get_trials(deepcopy=False)
            finished = [t for t in trials if is_finished(t)]
            running = sum(t.state == TrialState.RUNNING for t in trials)
            failed = sum(t.state == TrialState.FAIL for t in finished)
            if finished and failed / len(finished) > self.max_failure_rate:
                last = next((t.user_attrs.get(study_trial.ATTR_ERROR) for t in reversed(finished)
                             if t.state == TrialState.FAIL), "")
                raise PlateauError(
                    f"{failed} of {len(finished)} trials failed, above hydra.sweeper."
                    f"max_failure_rate={self.max_failure_rate} (last error: {last}); fix the "
                    "cause or raise max_failure_rate"
                )
            todo = self.n_trials - len(finished) - running
            if todo <= 0:
                if running == 0:
                    return
                time.sleep(1.0)  # other workers are finishing the budget
                continue
            self._launch(study, space, min(self.n_jobs, todo))



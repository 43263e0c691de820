"""The sweep: an Optuna study whose trials are Hydra jobs, with pruning, resume and MLflow.

``n_trials`` is the study's total budget of *finished* trials: COMPLETE, PRUNED, and FAIL
raised by the trial itself. Re-running the same command continues the study until the budget
is met. Trials cut off by a killed or interrupted sweep (left RUNNING, or FAIL with
``interrupted``) do not count: they are failed and their parameters re-run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig
from optuna.trial import FrozenTrial

from errors import PlateauError, console
from sweeps import ledger, tracking, verbosity
from sweeps.job import allocator
from sweeps.metrics import apply_optimized_metric
from sweeps.objectives import Objectives, first_objective
from sweeps.report import best, pareto, terminal
from sweeps.report.diagnoses import final_labels, thresholds_of
from sweeps.report.study_run import StudyRun
from sweeps.schema.checks import check_config
from sweeps.storage import hide_storage_password, mask_password, resolve_storage_url, sharing
from sweeps.sweeper import closing, first_trials, settings, top_backbones
from sweeps.sweeper.asking import Asker, Deadline, FailureRate
from sweeps.sweeper.progress import Progress
from sweeps.sweeper.reruns import Reruns
from sweeps.sweeper.search_space import parse_search_space
from sweeps.sweeper.slots import Slots
from sweeps.sweeper.study import create_study, label_for_viewers, recover_stale
from sweeps.sweeper.top_backbones import TopBackbones, candidate_config


class StudySweeper:
    """Implementation behind ``hydra_plugins.plateau_sweeper.PlateauSweeper``: checks the
    settings, opens the study and its MLflow run, runs the slots, and closes the study."""

    def __init__(self, **plugin_settings: Any) -> None:
        self.settings = settings.SweepSettings.from_plugin(**plugin_settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = str(config.hydra.sweep.dir)
        self.settings.apply_command_line(config)

    def _check(self) -> None:
        """Every mistake that can be found before a study or MLflow run exists."""
        apply_optimized_metric(self.config)
        if verbosity.is_quiet(self.config, sweep=True):
            verbosity.quiet_libraries()
        check_config(self.config)  # the base config; the space's bounds: parse_search_space
        self.objectives = Objectives.of(self.config)
        self.settings.follow(self.objectives)
        self.settings.check()
        settings.check_launcher(self.launcher, self.config)
        settings.check_objective(self.objectives, self.settings.directions)
        settings.check_nodes(self.config)
        tracking.check_store(self.config)
        allocator.switched_on()  # the trials' processes read it: a bad value stops them all

    def _open(self, arguments: list[str]) -> tuple[optuna.Study, StudyRun, Asker]:
        """Check, then open (or join) the study and its MLflow run."""
        s = self.settings
        self._check()
        space = parse_search_space(s.params, arguments, s.conditional)
        portfolio = first_trials.check_portfolio(s.portfolio, space, self.config,
                                                 s.default_portfolio)
        settings.preflight_base_config(self.config)
        url = resolve_storage_url(s.storage)
        top = TopBackbones(s.backbone_top_k)
        if top.narrow(space, url, s.study_name, candidate_config(
                self.hydra_context.config_loader, self.config, space)):
            portfolio = first_trials.check_portfolio(s.portfolio, space, self.config,
                                                     s.default_portfolio)
        study, created = create_study(s, space, url)
        top.settle(study, space, created)
        resumed = bool(study.trials) or not created  # before the first trials are queued
        if created:  # once per study: not on resume, not by a second worker
            first_trials.enqueue(study, self.config, space, s.base_trial, portfolio,
                                 s.n_trials)
        if "objective" not in study.user_attrs:  # a study made by the sweep, or by hand
            label_for_viewers(study, self.objectives, s.monitor)
        hide_storage_password(self.config, url)
        self.url = url
        if resumed:  # or another worker's study: do not replay the same seeded draws
            study.sampler.reseed_rng()
        run = StudyRun.open(self.config, study, url, s.sampler, s.pruner, created,
                            s.mlflow_params(space, self.objectives)
                            | top_backbones.mlflow_params(study))
        console.print(f"study '{s.study_name}' in {mask_password(url)}: budget "
                      f"{s.n_trials} finished trials, "
                      f"{sum(map(ledger.spends_budget, study.trials))} done"
                      + (f"; then the {s.rerun_top_k} best configs run again with "
                         f"{s.rerun_seeds} new seeds each" if s.rerun_top_k else ""))
        if self.objectives.multi:
            console.print(f"objectives: {self.objectives.shown()}; the pruner judges "
                          f"{self.objectives.first} only, the report shows the Pareto front",
                          highlight=False)
        self.started = time.time()  # failures before this sweep do not count
        asker = Asker(study, space, s.n_trials, FailureRate(s.max_failure_rate, self.started),
                      self.config, s.custom_search_space,
                      Deadline(s.timeout, s.timeout_s, self.started), self._reruns())
        return study, run, asker

    def _reruns(self) -> Reruns | None:
        """The top-k reruns after the search, when set (:mod:`sweeps.sweeper.reruns`)."""
        s = self.settings
        if not s.rerun_top_k:
            return None
        return Reruns(s.rerun_top_k, s.rerun_seeds, int(self.config.seed),
                      s.heartbeat_timeout_s)

    def sweep(self, arguments: list[str]) -> list[FrozenTrial]:
        study, run, asker = self._open(arguments)
        slots = Slots(study, asker, self.launcher, self.settings.n_jobs,
                      Progress(first_objective(study), self.settings.n_trials, self.started),
                      run.end_child)
        status = "FINISHED"
        trials: list[FrozenTrial] = []
        try:
            recover_stale(study, run, self.settings.heartbeat_timeout_s)
            with sharing(self.url, ledger.open_storage_of(study)):  # for in-process trials
                slots.run()
        except KeyboardInterrupt:
            status = "KILLED"
            recover_stale(study, run, self.settings.heartbeat_timeout_s, own=slots.in_flight)
            console.print("[yellow]plateau: sweep interrupted; re-run the same command to "
                          "continue the study[/]")
            raise
        except PlateauError:
            status = "FAILED"
            raise
        finally:
            trials = self._close(study, run, status, slots.launched)
        return trials

    def _close(self, study: optuna.Study, run: StudyRun, status: str,
               launched: set[int]) -> list[FrozenTrial]:
        """The report, the MLflow run's end and the terminal's tables, by the worker whose
        turn it is (:func:`closing.ends_study`); an interrupted sweep prints no tables."""
        judged = first_objective(study)  # single-objective sections read the first
        trials = judged.get_trials(deepcopy=False)
        ended = status != "KILLED"
        closes = closing.ends_study(trials, status, self.started, self.settings.n_trials,
                                    launched)
        written = closing.write_report(study, run, self.sweep_dir, self.config,
                                       self.settings.monitor) if ended and closes else None
        if closes:
            run.close(judged, status)  # after the report: its plots go to the parent run
        if ended:
            path = best.export_best(study, self.sweep_dir, self.config,
                                    self.hydra_context.config_loader)
            labels = written.labels if written is not None else final_labels(
                trials, judged.direction, thresholds_of(self.config))
            terminal.print_end(judged, trials, time.time() - self.started, path, labels)
            front = pareto.front_of(study, list(self.objectives.metrics))
            if front is not None:
                terminal.print_pareto(front, Path(self.sweep_dir))
        if written is not None:
            terminal.print_summary(written)
        if ended:
            logger_cfg = tracking.mlflow_config(self.config)
            terminal.print_viewers(
                None if logger_cfg is None
                else tracking.absolute_tracking_uri(logger_cfg.tracking_uri),
                mask_password(self.url))
        return trials

"""The sweep's settings (``hydra.sweeper.*``) and the checks that stop a sweep before any
study or MLflow run exists: each mistake is one line."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.launcher import Launcher
from hydra.utils import get_method
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.trial import Trial

from errors import PlateauError, console
from sweeps import devices
from sweeps.metrics import DIRECTIONS, METRICS
from sweeps.objectives import Objectives
from sweeps.report.study_run import class_name
from sweeps.storage import DEFAULT_STUDY_NAME
from sweeps.sweeper.search_space import SearchSpace


def _plain(node: DictConfig | None) -> dict[str, Any]:
    container = OmegaConf.to_container(node) if node else {}
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


@dataclass
class SweepSettings:
    """``hydra.sweeper.*`` as the sweep uses them (see the plugin's ``PlateauSweeperConf``)."""

    sampler: Any
    pruner: Any
    #: one direction per objective (two or more: a multi-objective sweep); empty until
    #: :meth:`follow` when ``hydra.sweeper.direction`` is null
    directions: list[str]
    storage: str | None
    study_name: str
    n_trials: int
    n_jobs: int
    max_failure_rate: float
    monitor: str
    heartbeat_timeout_s: float
    trials_per_gpu: int
    #: the config as given runs first (:mod:`sweeps.sweeper.first_trials`)
    base_trial: bool = True
    #: named override sets of searched params, queued after the base trial
    portfolio: dict[str, Any] = field(default_factory=dict)
    #: the default space's portfolio: entries that do not fit the space as narrowed on the
    #: command line are skipped, not errors (the user never wrote them)
    default_portfolio: dict[str, Any] = field(default_factory=dict)
    #: how long this sweep launches trials, as given (see :func:`parse_duration`)
    timeout: Any = None
    #: the best configs run again after the search, and the new seeds each gets
    #: (:mod:`sweeps.sweeper.reruns`); 0: off
    rerun_top_k: int = 0
    rerun_seeds: int = 0
    #: keep the k backbones LogME ranks best (:mod:`sweeps.sweeper.top_backbones`); None: off
    backbone_top_k: int | None = None

    @property
    def timeout_s(self) -> float | None:
        """Seconds after which this sweep launches no more trials (None: no limit)."""
        return parse_duration(self.timeout)
    #: the search space: params (hydra-optuna-sweeper's) and plateau's conditional params
    params: dict[str, Any] = field(default_factory=dict)
    conditional: dict[str, Any] = field(default_factory=dict)
    custom_search_space: Callable[[DictConfig, Trial], None] | None = None

    def mlflow_params(self, space: SearchSpace, objectives: Objectives) -> dict[str, str]:
        """The study run's params: the search space in the sweep grammar (``space.<name>``),
        sampler, pruner, objective and budget."""
        # a fixed override's key may carry Hydra's +, ++ or ~: MLflow names take no such sign
        params = {f"space.{name.lstrip('+~')}": text
                  for name, text in space.described().items()}
        params |= {
            "sampler": class_name(self.sampler), "pruner": class_name(self.pruner),
            "objective": ", ".join(objectives.metrics),
            "direction": ", ".join(self.directions), "monitor": self.monitor,
            "n_trials": str(self.n_trials), "timeout": str(self.timeout),
            "base_trial": str(self.base_trial).lower(),
            "portfolio": ", ".join(self.portfolio) or "none",
            "backbone_top_k": str(self.backbone_top_k),
        }
        return params

    @classmethod
    def from_plugin(cls, *, params: DictConfig | None, conditional_params: DictConfig | None,
                    default_space: DictConfig | None, custom_search_space: str | None,
                    direction: Any, study_name: str | None, portfolio: DictConfig | None = None,
                    timeout: Any = None, **values: Any) -> SweepSettings:
        """The plugin's keyword arguments; the user's ``params`` replace the default space
        (its conditionals and portfolio too) entirely."""
        default = default_space if params is None and default_space is not None else None
        if isinstance(direction, ListConfig):
            direction = OmegaConf.to_container(direction)
        directions = ([] if direction is None else [str(d) for d in direction]
                      if isinstance(direction, list) else [str(direction)])
        return cls(
            directions=directions, study_name=study_name or DEFAULT_STUDY_NAME,
            params=_plain(params if default is None else default.params),
            conditional=_plain(conditional_params if default is None
                               else default.conditional_params),
            custom_search_space=get_method(custom_search_space) if custom_search_space
            else None, portfolio=_plain(portfolio),
            default_portfolio=_plain(default.get("portfolio") if default is not None else None),
            timeout=timeout, **values)

    def apply_command_line(self, config: DictConfig) -> None:
        """``hydra.sweeper.params={}`` on the command line empties the params, as any params
        replace the default space (OmegaConf merges an empty dict into a null node as a
        no-op, so the override is read back from Hydra's list)."""
        if OmegaConf.select(config, "hydra.sweeper.params") is not None:
            return
        overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.hydra))
        if any(o.key_or_group == "hydra.sweeper.params" and o.value() == {} for o in overrides):
            self.params = {}
            self.conditional = _plain(config.hydra.sweeper.conditional_params)
            self.default_portfolio = {}

    def follow(self, objectives: Objectives) -> None:
        """A null ``hydra.sweeper.direction`` takes the objectives' directions."""
        if not self.directions:
            self.directions = list(objectives.directions)

    def check(self) -> None:
        """Values no sweep can run with."""
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
        parse_duration(self.timeout)
        self.check_reruns()
        if self.backbone_top_k is not None and self.backbone_top_k < 1:
            raise PlateauError(f"hydra.sweeper.backbone_top_k={self.backbone_top_k} would keep "
                               "no backbone; set it to 1 or more, or null to search every "
                               "backbone of the space")
        for direction in self.directions:
            if direction not in DIRECTIONS:
                raise PlateauError(f"hydra.sweeper.direction={direction} must be maximize or "
                                   "minimize, or a list of them, one per objective")
        if len(self.directions) > 1:
            self._check_multi_objective()

    def _check_multi_objective(self) -> None:
        """Samplers and pruners that cannot serve a multi-objective study."""
        sampler, pruner = class_name(self.sampler), class_name(self.pruner)
        if sampler == "CmaEsSampler":
            raise PlateauError("hydra/sweeper/sampler=cmaes optimizes one objective; for "
                               f"{len(self.directions)} objectives use sampler=tpe "
                               "(multi-objective TPE), nsgaii, gp or random")
        if pruner == "HyperbandPruner":
            raise PlateauError("hydra/sweeper/pruner=hyperband runs its brackets as "
                               "single-objective studies; in a multi-objective sweep use "
                               "pruner=stagnation, median, successive_halving or none (they "
                               "judge the first objective)")

    def check_reruns(self) -> None:
        """``rerun_top_k`` and ``rerun_seeds``: both off, or both at least 1."""
        k, s = self.rerun_top_k, self.rerun_seeds
        for name, value in (("rerun_top_k", k), ("rerun_seeds", s)):
            if value < 0:
                raise PlateauError(f"hydra.sweeper.{name}={value} is negative; set it to 0 "
                                   "(no reruns) or more")
        if (k > 0) != (s > 0):
            given, missing = ("rerun_top_k", "rerun_seeds") if k else ("rerun_seeds",
                                                                       "rerun_top_k")
            raise PlateauError(f"hydra.sweeper.{given}={max(k, s)} needs hydra.sweeper."
                               f"{missing} too: set both (e.g. rerun_top_k=3 rerun_seeds=2), "
                               "or neither")
        if k and len(self.directions) > 1:
            raise PlateauError(f"hydra.sweeper.rerun_top_k={k}: reruns rank configs by one "
                               "objective, and hydra.sweeper.direction="
                               f"[{','.join(self.directions)}] "
                               "has several; set rerun_top_k=0 rerun_seeds=0")


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(value: Any) -> float | None:
    """``hydra.sweeper.timeout`` in seconds: a number, or text such as ``90s``, ``30m``,
    ``2h``, ``1h30m``; None for no limit."""
    if value is None:
        return None
    text = str(value).strip().lower().replace(" ", "")
    seconds: float | None = None
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    elif text and re.fullmatch(f"(?:{_DURATION.pattern})+", text):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(text))
    if seconds is None or seconds <= 0:
        raise PlateauError(f"hydra.sweeper.timeout={value} is not a positive duration; give "
                           "seconds (3600) or a duration such as 90s, 30m, 2h or 1h30m")
    return seconds


def check_launcher(launcher: Launcher, config: DictConfig) -> None:
    """Launcher settings that cannot run the trials: one line before any study or run.

    SLURM's launcher needs SLURM's commands. A DDP trial starts its extra ranks by
    re-running ``sweep.py`` (:mod:`sweeps.job.ddp`), which only the basic launcher runs in;
    SLURM tasks beyond one per job would each run the whole trial.
    """
    if type(launcher).__name__ == "SlurmLauncher" and shutil.which("srun") is None:
        raise PlateauError(
            "hydra/launcher=slurm submits each trial with SLURM's sbatch/srun, which are "
            "not on PATH here: start the sweep on the cluster's login node, or use "
            "hydra/launcher=submitit_local to run the same code path on this machine")
    tasks = OmegaConf.select(config, "hydra.launcher.tasks_per_node", default=1)
    if isinstance(tasks, int) and tasks > 1:
        raise PlateauError(
            f"hydra.launcher.tasks_per_node={tasks} would run each trial's job {tasks} "
            "times at once; set it to 1 (a DDP trial starts its own ranks: trainer.devices)")
    ranks = devices.processes(config.trainer)
    if ranks > 1 and not in_process(launcher):
        raise PlateauError(
            f"trainer.devices={config.trainer.devices} trains each trial with DDP, "
            "whose extra ranks re-run sweep.py, but hydra/launcher="
            f"{config.hydra.runtime.choices.get('hydra/launcher')} runs trials in its "
            "own processes: keep the default launcher and start more workers (or a SLURM "
            "job array of them) to run DDP trials in parallel")


def in_process(launcher: Launcher) -> bool:
    """Hydra's basic launcher runs each job in the sweep's own process, one at a time."""
    return isinstance(launcher, BasicLauncher)


def check_objective(objectives: Objectives, directions: list[str]) -> None:
    """The study's directions are the objectives' (``hydra.sweeper.direction`` follows
    ``objective.direction`` in plateau's search configs; another config may set it apart)."""
    if list(objectives.directions) == directions:
        return
    given = directions[0] if len(directions) == 1 else f"[{','.join(directions)}]"
    wanted = (objectives.directions[0] if not objectives.multi
              else f"[{','.join(objectives.directions)}]")
    if len(directions) != len(objectives.metrics):
        raise PlateauError(
            f"hydra.sweeper.direction={given} gives {len(directions)} directions for "
            f"{len(objectives.metrics)} objectives (objective.metric="
            f"{','.join(objectives.metrics)}): list one metric per direction, e.g. "
            "'objective.metric=[val/f1_macro,model/latency_ms]' "
            "'objective.direction=[maximize,minimize]'")
    raise PlateauError(
        f"hydra.sweeper.direction={given} but objective.direction={wanted}: the study would "
        f"optimize {objectives.first} the wrong way; set both to the same direction")


def check_nodes(config: DictConfig) -> None:
    """DDP trials run on one node: their extra ranks are this job's own processes
    (:mod:`sweeps.job.ddp`); ranks started by a cluster on other nodes would each run the
    trial's job as if it were theirs."""
    nodes = OmegaConf.select(config, "trainer.num_nodes", default=1)
    if nodes not in (None, 1):
        raise PlateauError(
            f"trainer.num_nodes={nodes}: a trial of a sweep trains on one node; use "
            "trainer.devices for DDP on that node's GPUs, and more workers (or "
            "hydra/launcher=slurm) to use more nodes")


def preflight_base_config(config: DictConfig) -> None:
    """The doctor's preflight on the base config (each trial runs its own as well): an
    error stops the sweep before its study or MLflow run exists."""
    from sweeps.job.prepare import preflight_config, preflight_settings  # the trial stack

    if not preflight_settings(config).enabled:
        return
    report = preflight_config(config)
    console.print(f"preflight of the base config: {len(report.of('error'))} errors, "
                  f"{len(report.of('warning'))} warnings")
    report.show()
    report.raise_for_errors()

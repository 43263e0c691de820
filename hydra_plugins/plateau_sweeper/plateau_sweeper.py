"""plateau's Optuna sweeper for Hydra: config schema and a thin Sweeper shim.

Hydra imports every module under ``hydra_plugins`` at start-up, so this one holds only the
config dataclasses and a Sweeper that imports the study logic (``sweeps.sweeper``) when a
sweep actually starts. It also registers the job config's schemas (``sweeps.schema``), since
Hydra imports it before composing any config. Keys and search-space grammar follow
hydra-optuna-sweeper (``sampler``, ``direction``, ``study_name``, ``storage``, ``n_trials``,
``n_jobs``, ``max_failure_rate``, ``params``, ``custom_search_space``), so its users switch
by changing only
``override /hydra/sweeper: plateau``.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import MISSING, DictConfig

from sweeps.schema import register_job_schemas


@dataclass
class SamplerConf:
    _target_: str = MISSING
    seed: Optional[int] = 42


@dataclass
class TPESamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.TPESampler"
    n_startup_trials: int = 5
    multivariate: bool = True
    group: bool = True
    constant_liar: bool = True  # parallel workers do not all sample the same point


@dataclass
class RandomSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.RandomSampler"


@dataclass
class CmaEsSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.CmaEsSampler"
    n_startup_trials: int = 1
    consider_pruned_trials: bool = True
    warn_independent_sampling: bool = False


@dataclass
class GPSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.GPSampler"
    n_startup_trials: int = 5


@dataclass
class QMCSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.QMCSampler"
    qmc_type: str = "sobol"
    scramble: bool = True


@dataclass
class GridSamplerConf(SamplerConf):
    """The grid is built from the search space: every param must be discrete."""

    _target_: str = "optuna.samplers.GridSampler"
    _partial_: bool = True


@dataclass
class NSGAIISamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.NSGAIISampler"
    population_size: int = 20


@dataclass
class PrunerConf:
    _target_: str = MISSING


@dataclass
class StagnationPrunerConf(PrunerConf):
    """Prune trials below the median; end competitive ones that stall for ``patience`` epochs;
    neither before ``warmup_share`` of the trial's epochs."""

    _target_: str = "sweeps.pruning.StagnationPruner"
    patience: int = 2
    min_delta: float = 0.0
    n_startup_trials: int = 2
    n_warmup_steps: int = 1
    only_stagnating: bool = False  # true: a trailing trial is pruned only once it stalls too
    # no decision before half of trainer.max_epochs: this space's winners (full fine-tunes,
    # gradual unfreezing) start slowly (benchmarks/strategy_simulator.py)
    warmup_share: float = 0.5
    patience_share: float = 0.25  # patience of at least this share of trainer.max_epochs


@dataclass
class MedianPrunerConf(PrunerConf):
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 2
    n_warmup_steps: int = 1


@dataclass
class SuccessiveHalvingPrunerConf(PrunerConf):
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 3


@dataclass
class HyperbandPrunerConf(PrunerConf):
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3


@dataclass
class NopPrunerConf(PrunerConf):
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class ConditionalParamConf:
    """``space`` is sampled only in trials where the param ``when`` names has that value."""

    when: str = MISSING   # e.g. "freeze=depth"
    space: str = MISSING  # e.g. "range(1, 5)"


@dataclass
class SpaceConf:
    """A search space: hydra-optuna-sweeper's ``params`` plus plateau's conditional params."""

    params: Dict[str, str] = field(default_factory=dict)
    conditional_params: Dict[str, ConditionalParamConf] = field(default_factory=dict)
    # run after the base trial when this space is searched; null turns it off
    portfolio: Optional[Dict[str, List[str]]] = None


@dataclass
class PlateauSweeperConf:
    _target_: str = "hydra_plugins.plateau_sweeper.plateau_sweeper.PlateauSweeper"
    defaults: List[Any] = field(
        default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "stagnation"}]
    )
    sampler: SamplerConf = MISSING
    pruner: PrunerConf = MISSING
    # maximize/minimize, or a list of them (one per objective); null: objective.direction's
    direction: Any = None
    # None: sqlite file plateau.db in the launch directory, so a re-run continues the study.
    storage: Optional[str] = None
    study_name: Optional[str] = "plateau"
    # The study's total budget of finished trials (COMPLETE, PRUNED, FAIL), not "N more".
    n_trials: int = 20
    # Stop launching trials once this sweep has run this long: seconds, or "90s", "30m",
    # "2h", "1h30m"; running trials finish, a re-run continues the budget. null: no limit.
    timeout: Optional[Any] = None
    n_jobs: int = 1
    max_failure_rate: float = 0.0
    # The search space; when null, default_space (set by conf/search/<name>.yaml) is used,
    # so an hparams_search file's params replace plateau's default search entirely.
    params: Optional[Dict[str, str]] = None
    custom_search_space: Optional[str] = None
    # plateau extensions
    # The study's first trial runs the config as given (python sweep.py <same overrides>):
    # the sweep's best is never worse than not sweeping. false: every trial is sampled.
    base_trial: bool = True
    # Named override sets of searched params, run after the base trial (and after the
    # default space's, when that is searched); params an entry leaves out keep the base
    # config's value when the space holds it, else are sampled.
    portfolio: Dict[str, List[str]] = field(default_factory=dict)
    conditional_params: Dict[str, ConditionalParamConf] = field(default_factory=dict)
    default_space: SpaceConf = field(default_factory=SpaceConf)
    # the val/* metric reported to the pruner each epoch (minimized, e.g. val/loss)
    monitor: str = "val/loss"
    # RUNNING trials of another host whose heartbeat is older than this are stale
    heartbeat_timeout_s: float = 600.0
    # trials sharing one GPU when several run in parallel on a machine (sweeps.devices)
    trials_per_gpu: int = 1
    # After the search's n_trials: the rerun_top_k best complete configs run again with
    # rerun_seeds new seeds each (seed + 1 ... + s), outside n_trials; the final pick is the
    # best mean (sweeps.sweeper.reruns). 0: off; set both.
    rerun_top_k: int = 0
    rerun_seeds: int = 0
    # keep only the k backbones of the space's backbone choice that LogME ranks best on
    # frozen features, before the study is created (sweeps.sweeper.top_backbones); null: off
    backbone_top_k: Optional[int] = None


_STORE = ConfigStore.instance()
_STORE.store(group="hydra/sweeper", name="plateau", node=PlateauSweeperConf, provider="plateau")
for _name, _node in {
    "tpe": TPESamplerConf, "random": RandomSamplerConf, "cmaes": CmaEsSamplerConf,
    "gp": GPSamplerConf, "qmc": QMCSamplerConf, "grid": GridSamplerConf,
    "nsgaii": NSGAIISamplerConf,
}.items():
    _STORE.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="plateau")
for _name, _node in {
    "stagnation": StagnationPrunerConf, "median": MedianPrunerConf,
    "successive_halving": SuccessiveHalvingPrunerConf, "hyperband": HyperbandPrunerConf,
    "none": NopPrunerConf,
}.items():
    _STORE.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="plateau")
register_job_schemas()


class PlateauSweeper(Sweeper):
    """Runs an Optuna study whose trials are Hydra jobs; see :mod:`sweeps.sweeper`."""

    def __init__(self, **settings: Any) -> None:
        from sweeps.sweeper.coordinator import StudySweeper

        self._impl = StudySweeper(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        """Run the study; user mistakes end it with one line (exit 2), Ctrl-C with exit 130."""
        import sys

        from errors import PlateauError, report_user_error

        try:
            return self._impl.sweep(arguments)
        except PlateauError as err:
            report_user_error(err)
            sys.exit(2)
        except KeyboardInterrupt:
            sys.exit(130)

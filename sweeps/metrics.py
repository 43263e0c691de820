"""What trials log and which way it gets better: objective and pruning share one convention.

Trials report their ``monitor`` metric every epoch (validation loss by default), but a study
usually *maximizes* its objective (F1, accuracy) while loss is *minimized*. Optuna's pruners
compare intermediate values in the study's direction, so a trial reports the monitored value
**negated** when its own direction differs from the study's (:func:`aligned`): better is then
the same way for both. Forgetting this makes a median pruner keep the worst trials and prune
the best.
"""

from __future__ import annotations

from omegaconf import DictConfig, open_dict
from optuna.study import StudyDirection

#: The validation metrics every trial logs each epoch: objective and monitor candidates.
METRICS = ("val/loss", "val/acc", "val/balanced_acc", "val/f1_macro")
#: What a trained model costs to serve, measured once after its fit
#: (:class:`lightning_modules.cost.ServingCost`): later objectives of a multi-objective sweep.
MODEL_METRICS = ("model/latency_ms", "model/latency_ms_b32", "model/params", "model/macs")
#: The ways an objective (``objective.direction``, ``hydra.sweeper.direction``) can go.
DIRECTIONS = ("maximize", "minimize")


def monitor_direction(monitor: str) -> StudyDirection:
    """Which way ``monitor`` gets better: losses down, every other ``val/*`` metric plateau
    logs (``acc``, ``balanced_acc``, ``f1_macro``) up."""
    return StudyDirection.MINIMIZE if monitor.endswith("loss") else StudyDirection.MAXIMIZE


def aligned(value: float, direction: StudyDirection,
            monitored: StudyDirection = StudyDirection.MINIMIZE) -> float:
    """The value to report for ``value`` of a metric that gets better in the ``monitored``
    direction (a loss by default) in a study of ``direction``."""
    return value if monitored == direction else -value


def is_negated(monitor: str, direction: StudyDirection) -> bool:
    """Whether trials of a ``direction`` study report ``monitor`` negated (:func:`aligned`)."""
    return monitor_direction(monitor) != direction


#: lightning-hydra-template's metric names that are not plateau's under another spelling.
LHT_ALIASES = {"val/f1": "val/f1_macro", "val/accuracy": "val/acc",
               "val/balanced_accuracy": "val/balanced_acc"}


def lht_metric(name: str) -> str:
    """plateau's metric for a lightning-hydra-template ``optimized_metric``: the ``_best``
    suffix dropped (a trial's objective is already its best epoch), aliases mapped."""
    from errors import PlateauError

    base = str(name).removesuffix("_best")
    base = LHT_ALIASES.get(base, base)
    if base not in METRICS:
        raise PlateauError(
            f"optimized_metric={name} is not a metric plateau logs: use one of "
            f"{', '.join(METRICS)} (a _best suffix is dropped: val/acc_best optimizes val/acc)")
    return base


def apply_optimized_metric(cfg: DictConfig) -> None:
    """A lightning-hydra-template ``hparams_search`` file names its objective in the top-level
    ``optimized_metric``: when the config has one, it sets ``objective.metric``."""
    name = cfg.get("optimized_metric")
    if name is None:
        return
    with open_dict(cfg):
        cfg.objective.metric = lht_metric(name)

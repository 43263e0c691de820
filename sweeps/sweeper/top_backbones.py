"""``hydra.sweeper.backbone_top_k``: the search space keeps the k backbones LogME ranks best.

Before the study exists, each option of the space's ``backbone`` choice is scored by LogME on
its frozen features (:mod:`sweeps.job.ranking`, what ``python -m doctor rank`` runs; the
features land in the feature cache, where the sweep's linear probes find them), and the
choice is narrowed to the best k. The worker that creates the study stores the ranking in
the study's user attributes at once; a resumed sweep or another worker reads it instead of
ranking again. An Optuna categorical cannot change its choices within a study, so the
stored ranking wins over the current setting, and a study made without one keeps its
choices.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import optuna
from hydra.core.config_loader import ConfigLoader
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import CategoricalDistribution

from errors import console
from sweeps.sweeper.asking import override_value
from sweeps.sweeper.search_space import SearchSpace
from sweeps.sweeper.study import study_exists

if TYPE_CHECKING:
    from sweeps.job.ranking import Candidate

#: The study's user attribute holding the ranking: ``{"k": k, "candidates": [...]}``.
ATTR = "backbone_ranking"
PARAM = "backbone"
#: How long a worker that joins a study just created waits for its creator's ranking.
WAIT_S = 60.0


@dataclass
class Ranking:
    """The candidates, best first, and how many of them the space keeps."""

    k: int
    candidates: list[Candidate]

    @property
    def kept(self) -> list[str]:
        return [c.backbone for c in self.candidates[:self.k]]

    def stored(self) -> dict[str, Any]:
        return {"k": self.k, "candidates": [asdict(c) for c in self.candidates]}

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> Ranking:
        from sweeps.job.ranking import Candidate

        return cls(int(stored["k"]), [Candidate(**c) for c in stored["candidates"]])


class TopBackbones:
    """Narrows a search space's backbone choice to the ``k`` best by LogME, once per study.

    Args:
        k: backbones to keep; None keeps them all (a study ranked when it was made still
            applies its ranking).
    """

    def __init__(self, k: int | None) -> None:
        self._k = k
        self._choices: list[str] = []  # the space's choice before narrowing
        self._ranking: Ranking | None = None  # made by this worker
        self._deferred = False  # the study existed: its stored ranking, if any, applies

    def narrow(self, space: SearchSpace, url: str, study_name: str,
               compose: Callable[[str], DictConfig]) -> bool:
        """Rank the space's backbones and keep the best ``k`` (``compose(name)``: the config
        a candidate is scored under); False when nothing was ranked. A study that exists
        already is not ranked again: :meth:`settle` applies what it holds."""
        if self._k is None:
            return False
        where = f"hydra.sweeper.backbone_top_k={self._k}"
        distribution = space.distributions.get(PARAM)
        if not isinstance(distribution, CategoricalDistribution):
            console.print(f"{where}: backbone is not a choice of the search space, nothing "
                          "to rank")
            return False
        self._choices = [str(choice) for choice in distribution.choices]
        if len(self._choices) <= self._k:
            console.print(f"{where} keeps all {len(self._choices)} backbones of the search "
                          "space: nothing to rank")
            return False
        if study_exists(url, study_name):
            self._deferred = True
            return False
        from sweeps.job.ranking import print_ranking, rank_backbones  # the trial stack

        self._ranking = Ranking(self._k, rank_backbones(self._choices, compose))
        print_ranking(self._ranking.candidates)
        _narrow(space, self._ranking)
        return True

    def settle(self, study: optuna.Study, space: SearchSpace, created: bool) -> None:
        """Store this worker's ranking in the study it created; else apply the one the study
        holds (waiting up to :data:`WAIT_S` for a creator that is about to store it)."""
        if created:
            if self._ranking is not None:
                study.set_user_attr(ATTR, self._ranking.stored())
            return
        stored = study.user_attrs.get(ATTR)
        waited = time.monotonic() + WAIT_S
        while stored is None and self._ranking is not None and not study.trials \
                and time.monotonic() < waited:
            time.sleep(0.5)
            stored = study.user_attrs.get(ATTR)
        if stored is not None and isinstance(space.distributions.get(PARAM),
                                             CategoricalDistribution):
            found = Ranking.from_stored(stored)
            if self._ranking is None or found.kept != self._ranking.kept:
                from sweeps.job.ranking import print_ranking

                print_ranking(found.candidates, read_from=f"study '{study.study_name}'")
                _narrow(space, found)
        elif stored is None and (self._ranking is not None or self._deferred):
            space.distributions[PARAM] = CategoricalDistribution(self._choices)
            console.print(f"study '{study.study_name}' was made without "
                          "hydra.sweeper.backbone_top_k: its backbone choices stay as they "
                          "are (a study's choices cannot change)")


def candidate_config(loader: ConfigLoader, config: DictConfig,
                     space: SearchSpace) -> Callable[[str], DictConfig]:
    """The job config a backbone is ranked under: the base config with the space's fixed
    overrides, that backbone, and a linear probe's settings (whose trials reuse the features)."""
    def compose(name: str) -> DictConfig:
        from sweeps.job.ranking import PROBE

        fixed = [f"{key}={override_value(value)}" for key, value in space.fixed.items()]
        job = loader.load_sweep_config(config, [*space.command_line, *fixed,
                                                f"{PARAM}={name}", *PROBE])
        return OmegaConf.masked_copy(job, [str(key) for key in job if key != "hydra"])

    return compose


def mlflow_params(study: optuna.Study) -> dict[str, str]:
    """The study run's record of the ranking: each candidate with its LogME, best first."""
    stored = study.user_attrs.get(ATTR)
    if stored is None:
        return {}
    ranking = Ranking.from_stored(stored)
    return {"backbone_ranking": ", ".join(
        f"{c.backbone} {c.score:.4f}" + ("" if c.backbone in ranking.kept else " (dropped)")
        for c in ranking.candidates)}


def _narrow(space: SearchSpace, ranking: Ranking) -> None:
    space.distributions[PARAM] = CategoricalDistribution(ranking.kept)
    console.print(f"hydra.sweeper.backbone_top_k={ranking.k}: the search space keeps "
                  f"{', '.join(ranking.kept)} (of {len(ranking.candidates)} backbones)")

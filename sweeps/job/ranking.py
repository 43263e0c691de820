"""Rank candidate backbones for a task before training any: LogME on frozen features.

Each candidate's features come from the frozen-feature cache (:mod:`data_modules.feature_cache`)
under the same key a linear-probe trial of that backbone (``freeze=head_only augment=none``)
uses, so a sweep's linear probes reuse what the ranking computed, and a second ranking reads
them back in milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from data_modules.cache_dir import cache_root
from data_modules.datamodules import FeatureDataset
from data_modules.feature_cache import FeatureCache, attach_features
from doctor.transferability import logme
from errors import console
from sweeps.job.build import build_parts, first_device
from sweeps.schema.checks import check_config

#: What a candidate is scored under: its frozen features of deterministic training images.
PROBE = ["freeze=head_only", "augment=none"]


@dataclass(frozen=True)
class Candidate:
    """One backbone's LogME score and what it cost."""

    backbone: str
    score: float
    images: int
    width: int
    seconds: float
    cached: bool


def score_backbone(cfg: DictConfig) -> Candidate:
    """LogME of ``cfg.backbone`` on ``cfg.data``'s training split (``cfg`` composed with
    :data:`PROBE`)."""
    started = time.perf_counter()
    check_config(cfg)
    parts = build_parts(cfg)
    cache = FeatureCache(cache_root(cfg.get("cache_dir")) / "features"
                         if cfg.get("feature_cache", True) else None)
    cached = attach_features(parts.datamodule, parts.model.backbone, cache,
                             first_device(cfg.trainer))
    train = parts.datamodule.train_set
    assert isinstance(train, FeatureDataset)
    features = np.asarray(train.features)
    score = logme(features, np.asarray(train.targets))
    return Candidate(str(cfg.backbone.name), score, len(features), features.shape[1],
                     time.perf_counter() - started, cached)


def rank_backbones(names: list[str],
                   compose: Callable[[str], DictConfig]) -> list[Candidate]:
    """Every backbone of ``names`` scored, best first; ``compose(name)`` gives its config."""
    found = [score_backbone(compose(name)) for name in names]
    return sorted(found, key=lambda candidate: candidate.score, reverse=True)


def print_ranking(ranked: list[Candidate], read_from: str | None = None) -> None:
    """The ranking, best first, and what it cost; ``read_from`` names where a ranking made
    earlier was read (its seconds are those it took then)."""
    from rich.table import Table

    table = Table(title="backbones by LogME on frozen features (higher transfers better)")
    for column in ("rank", "backbone", "LogME", "images x width", "seconds", "features"):
        table.add_column(column, justify="right" if column != "backbone" else "left")
    for place, c in enumerate(ranked, 1):
        table.add_row(str(place), c.backbone, f"{c.score:.4f}", f"{c.images} x {c.width}",
                      f"{c.seconds:.1f}", "cached" if c.cached else "computed")
    console.print(table)
    seconds = sum(c.seconds for c in ranked)
    if read_from is not None:
        console.print(f"ranking read from {read_from}, not ranked again (it took {seconds:.1f} s "
                      "when it was made)")
        return
    console.print(f"ranked {len(ranked)} backbones in {seconds:.1f} s without training; "
                  "linear-probe trials (freeze=head_only augment=none) reuse their cached "
                  "features")

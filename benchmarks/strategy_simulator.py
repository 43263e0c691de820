"""Replay search strategies over the recorded learning curves, in seconds per strategy.

Reads the tables of ``benchmarks/learning_curves.py`` (``benchmarks/curves/*.jsonl``) and
runs, for each strategy and seed, an in-memory Optuna study of ``--budget`` trials with a real
Optuna sampler and pruner. Each trial reports the recorded epochs of its config through
plateau's own per-epoch rule (:func:`sweeps.pruning.judge_epoch`, as live trials do: the
validation loss, negated in a maximizing study) until the rule stops it; its value is its
best validation F1 so far (a pruned trial too, as :func:`sweeps.ledger.tell_pruned` stores).

How a sampled config maps to a recorded one: the *nearest* of the table's sampled configs
(the random draws from the space; the base and portfolio rows run only when queued, as
themselves). Distance sums, over the searched params, 1 for each categorical that differs
(or a conditional param present on one side only) and, for a number, the difference scaled
to its search range (on a log scale for log params). The table's best, the target, is over
all its rows.

Strategies: sampler (random, TPE) x stopping (none, Optuna's median, successive halving,
hyperband, plateau's rule, and plateau_v1: that rule as first shipped, deciding from the
first epoch) x first trials (none; the base; the base and the portfolio). Seeds replay side
by side in ``--jobs`` processes.
Compute is counted in trial-epochs. Printed per strategy (median over seeds): trial-epochs
to come within 0.5 points of the table's best, the best at fixed compute, the best after the
budget, the compute spent, and how often a trial of the table's top-5 configs was stopped
before its last epoch. The PNG draws best-so-far against trial-epochs (median, quartiles).

    python benchmarks/strategy_simulator.py                   # 20 seeds, 60 trials, all
    python benchmarks/strategy_simulator.py --seeds 5 --strategies tpe/none/off \
        tpe/plateau/portfolio
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from hydra.utils import instantiate
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curves import (  # noqa: E402
    DATASETS,
    ROOT,
    TABLES,
    compose_config,
    default_space,
    recorded,
)
from strategy_results import PLOTTED, WITHIN, Trace, plot, print_table, summarize, verdict  # noqa: E402

from hydra_plugins.plateau_sweeper import plateau_sweeper as plugin  # noqa: E402
from sweeps import ledger  # noqa: E402
from sweeps.pruning import ATTR_MAX_EPOCHS, judge_epoch  # noqa: E402
from sweeps.sweeper.asking import suggest_overrides  # noqa: E402
from sweeps.sweeper.search_space import SearchSpace  # noqa: E402


@dataclass
class Config:
    role: str
    params: dict[str, Any]
    losses: list[float]  # val/loss per epoch
    scores: list[float]  # val/f1_macro per epoch

    @property
    def best(self) -> float:
        return max(self.scores, default=0.0)


def load(path: Path) -> list[Config]:
    rows = [row for _, row in sorted(recorded(path).items())]
    return [Config(r["role"], r["params"], [e.get("val/loss", math.nan) for e in r["epochs"]],
                   [e.get("val/f1_macro", 0.0) for e in r["epochs"]]) for r in rows]


def _pruner(spec: str, max_epochs: int) -> Any:
    """``name`` of :func:`_pruners`, or ``plateau:key=value,...`` for a variant of plateau's
    default (e.g. ``plateau:warmup_share=0.5,patience=3``)."""
    name, _, changes = spec.partition(":")
    if not changes:
        return _pruners(max_epochs)[name]
    values = dict(item.split("=") for item in changes.split(","))
    conf = OmegaConf.merge(OmegaConf.structured(plugin.StagnationPrunerConf),
                           {k: OmegaConf.create(f"x: {v}").x for k, v in values.items()})
    return instantiate(conf)


def _pruners(max_epochs: int) -> dict[str, Any]:
    """The stopping rules, as the sweeper's config builds them (its defaults)."""
    def build(conf: type, **changes: Any) -> Any:
        return instantiate(OmegaConf.merge(OmegaConf.structured(conf), changes))

    return {
        "none": build(plugin.NopPrunerConf),
        "median": build(plugin.MedianPrunerConf),
        "successive_halving": build(plugin.SuccessiveHalvingPrunerConf),
        "hyperband": build(plugin.HyperbandPrunerConf, max_resource=max_epochs),
        "plateau_v1": build(plugin.StagnationPrunerConf, warmup_share=0.0, patience_share=0.0),
        "plateau": build(plugin.StagnationPrunerConf),
    }


def _sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    conf = {"random": plugin.RandomSamplerConf, "tpe": plugin.TPESamplerConf}[name]
    return instantiate(OmegaConf.merge(OmegaConf.structured(conf), {"seed": seed}))


class Nearest:
    """The table's sampled row nearest to a sampled config. Distance sums, over the searched
    params, 1 per categorical that differs or param present on one side only, and a number's
    difference scaled to its search range (log scale for log params)."""

    def __init__(self, rows: list[Config], space: SearchSpace) -> None:
        self.rows = rows
        self.dists = {**space.distributions,
                      **{k: d for k, (_, _, d) in space.conditional.items()}}
        self.matrix = np.array([self._encode(r.params) for r in rows])

    def _encode(self, params: dict[str, Any]) -> list[float]:
        """Per param: its position on a 0-1 scale of its range (log for log params), the
        index of a categorical's choice, or NaN when absent."""
        out = []
        for name, dist in self.dists.items():
            if name not in params:
                out.append(math.nan)
            elif isinstance(dist, optuna.distributions.CategoricalDistribution):
                out.append(float(dist.to_internal_repr(params[name])))
            else:
                scale = math.log if dist.log else float  # type: ignore[attr-defined]
                low, high = scale(dist.low), scale(dist.high)  # type: ignore[attr-defined]
                out.append((scale(params[name]) - low) / (high - low))
        return out

    def __call__(self, params: dict[str, Any]) -> Config:
        return self.rows[int(np.argmin(self.distances(params)))]

    def distances(self, params: dict[str, Any]) -> np.ndarray:
        """The distance from ``params`` to every row."""
        point = np.array(self._encode(params))
        absent_here, absent_there = np.isnan(point), np.isnan(self.matrix)
        categorical = np.array([isinstance(d, optuna.distributions.CategoricalDistribution)
                                for d in self.dists.values()])
        gap = np.where(categorical, (self.matrix != point).astype(float),
                       np.abs(self.matrix - point))
        gap = np.where(absent_here | absent_there, 0.0, gap)
        gap += (absent_here != absent_there).astype(float)
        return gap.sum(axis=1)


def simulate(table: list[Config], space: SearchSpace, sampler: str, stopping: str, first: str,
             seed: int, budget: int) -> Trace:
    max_epochs = max(len(c.scores) for c in table)
    study = optuna.create_study(direction="maximize", sampler=_sampler(sampler, seed),
                                pruner=_pruner(stopping, max_epochs))
    queued = {c.role: c for c in table if c.role != "sampled"}
    for role, config in queued.items():
        if first == "portfolio" or (first == "base" and role == ledger.ROLE_BASE):
            ledger.enqueue(study, config.params, role)
    nearest = Nearest([c for c in table if c.role == "sampled"], space)  # the space's model
    top = sorted(range(len(table)), key=lambda i: -table[i].best)[:5]
    trace = Trace([], [], 0, 0, 0, {})
    spent, best = 0, -math.inf
    for _ in range(budget):
        trial = study.ask()
        suggest_overrides(trial, space)
        role = str(trial.user_attrs.get(ledger.ATTR_ROLE, ""))
        config = queued[role] if role else nearest(trial.params)
        trial.set_user_attr(ATTR_MAX_EPOCHS, max_epochs)
        reported: list[float] = []
        stop = None
        for epoch, loss in enumerate(config.losses):
            stop = judge_epoch(study, trial, epoch, -loss, reported, "val/loss", max_epochs,
                               exempt=role == ledger.ROLE_BASE,
                               best_so_far=max(config.scores[:epoch + 1]))
            reported.append(-loss)
            if stop is not None:
                break
        spent += len(reported)
        value = max(config.scores[:len(reported)])
        if stop is not None and stop.pruned:
            ledger.tell_pruned(study, ledger.trial_id(trial), value)
        else:
            study.tell(trial, value)
            best = max(best, value)
        if table.index(config) in top:
            trace.top_runs += 1
            trace.top_stopped += len(reported) < max_epochs
            trace.top_lost += value < config.best - WITHIN
            index = table.index(config)
            trace.top_kept[index] = trace.top_kept.get(index, False) or (
                value >= config.best - WITHIN)
        trace.epochs.append(spent)
        trace.best.append(best)
    return trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--tables", type=Path, default=TABLES)
    parser.add_argument("--strategies", nargs="*", default=None,
                        help="sampler/stopping/first, e.g. tpe/plateau/portfolio")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(),
                        help="processes replaying seeds side by side")
    parser.add_argument("--plots", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = default_space(compose_config(["logger=none"]))
    names = args.strategies or [f"{s}/{p}/{f}" for s in ("random", "tpe")
                                for p in _pruners(8) for f in ("off", "base", "portfolio")]
    args.plots.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        tables = [args.tables / f"{name}.jsonl" for name in DATASETS]  # not planted.jsonl
        for path in [table for table in tables if table.exists()]:
            replay(path, space, names, args, pool)


def recorded_space(space: SearchSpace, table: list[Config], name: str) -> SearchSpace:
    """The space as the table was recorded: a searched param that no row holds (``backbone``,
    searched since) ran at the base config's value in every row, so it is not searched."""
    seen = {param for config in table for param in config.params}
    missing = [param for param in space.names() if param not in seen]
    if missing:
        print(f"  {name}: {', '.join(missing)} not in the table (recorded before it was "
              "searched): replayed at the base config's value", file=sys.stderr)
    return dataclasses.replace(
        space, distributions={k: d for k, d in space.distributions.items() if k in seen},
        conditional={k: c for k, c in space.conditional.items() if k in seen})


def replay(path: Path, space: SearchSpace, names: list[str], args: argparse.Namespace,
           pool: ProcessPoolExecutor) -> None:
    table = load(path)
    space = recorded_space(space, table, path.stem)
    table_best = max(c.best for c in table)
    rows, curves = [], {}
    for name in names:
        started = time.perf_counter()
        sampler, stopping, first = name.split("/")  # stopping may hold "/"-free k=v
        run = functools.partial(simulate, table, space, sampler, stopping, first,
                                budget=args.budget)
        traces = list(pool.map(run, range(args.seeds)))
        rows.append(summarize(name, traces, table_best))
        print(f"  {path.stem} {name}: {time.perf_counter() - started:.1f} s for "
              f"{args.seeds} seeds", file=sys.stderr)
        if name in PLOTTED:
            curves[name] = traces
    print_table(f"{path.stem} ({len(table)} configs x {len(table[0].scores)} epochs)",
                rows, table_best, args.seeds)
    for line in verdict(rows, args.budget * max(len(c.scores) for c in table)):
        print(f"  {line}")
    if curves:
        plot(path.stem, curves, args.plots / f"simulator_{path.stem}.png")


if __name__ == "__main__":
    main()

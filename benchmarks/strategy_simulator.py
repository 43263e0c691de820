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
hyperband, plateau's rules) x first trials (none; the base; the base and the portfolio).
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
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curves import ROOT, TABLES, compose_config, default_space, recorded  # noqa: E402

from hydra_plugins.plateau_sweeper import plateau_sweeper as plugin  # noqa: E402
from sweeps import ledger  # noqa: E402
from sweeps.pruning import ATTR_MAX_EPOCHS, judge_epoch  # noqa: E402
from sweeps.sweeper.asking import suggest_overrides  # noqa: E402
from sweeps.sweeper.search_space import SearchSpace  # noqa: E402

WITHIN = 0.005  # half a point of F1
CHECKPOINTS = (60, 120, 240)  # trial-epochs at which strategies are compared at equal compute


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
        "plateau_late": build(plugin.StagnationPrunerConf, warmup_share=0.5,
                              patience_share=0.25),
    }


def _sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    conf = {"random": plugin.RandomSamplerConf, "tpe": plugin.TPESamplerConf}[name]
    return instantiate(OmegaConf.merge(OmegaConf.structured(conf), {"seed": seed}))


def distance(a: dict[str, Any], b: dict[str, Any], space: SearchSpace) -> float:
    dists = {**space.distributions, **{k: d for k, (_, _, d) in space.conditional.items()}}
    total = 0.0
    for name, dist in dists.items():
        if (name in a) != (name in b):
            total += 1.0
        elif name not in a:
            continue
        elif isinstance(dist, optuna.distributions.CategoricalDistribution):
            total += float(a[name] != b[name])
        else:
            scale = math.log if dist.log else float  # type: ignore[attr-defined]
            span = scale(dist.high) - scale(dist.low)  # type: ignore[attr-defined]
            total += abs(scale(a[name]) - scale(b[name])) / span
    return total


@dataclass
class Trace:
    epochs: list[int]  # cumulative trial-epochs after each trial
    best: list[float]  # best COMPLETE value after each trial
    top_runs: int  # trials of a top-5 config
    top_stopped: int  # ... stopped before their last epoch
    top_lost: int  # ... stopped more than WITHIN below what their last epoch would give


def simulate(table: list[Config], space: SearchSpace, sampler: str, stopping: str, first: str,
             seed: int, budget: int) -> Trace:
    max_epochs = max(len(c.scores) for c in table)
    study = optuna.create_study(direction="maximize", sampler=_sampler(sampler, seed),
                                pruner=_pruner(stopping, max_epochs))
    queued = {c.role: c for c in table if c.role != "sampled"}
    for role, config in queued.items():
        if first == "portfolio" or (first == "base" and role == ledger.ROLE_BASE):
            ledger.enqueue(study, config.params, role)
    sampled = [c for c in table if c.role == "sampled"]  # the table's model of the space
    top = sorted(range(len(table)), key=lambda i: -table[i].best)[:5]
    trace = Trace([], [], 0, 0, 0)
    spent, best = 0, -math.inf
    for _ in range(budget):
        trial = study.ask()
        suggest_overrides(trial, space)
        role = str(trial.user_attrs.get(ledger.ATTR_ROLE, ""))
        config = queued[role] if role else min(
            sampled, key=lambda c: distance(trial.params, c.params, space))
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
        trace.epochs.append(spent)
        trace.best.append(best)
    return trace


def best_at(trace: Trace, compute: float) -> float:
    """The best complete value once ``compute`` trial-epochs are spent (or at the end)."""
    done = [b for e, b in zip(trace.epochs, trace.best, strict=True) if e <= compute]
    return done[-1] if done else -math.inf


def to_reach(trace: Trace, target: float) -> float:
    return next((e for e, b in zip(trace.epochs, trace.best, strict=True) if b >= target), math.inf)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def summarize(name: str, traces: list[Trace], table_best: float) -> dict[str, Any]:
    reach = [to_reach(t, table_best - WITHIN) for t in traces]
    runs = sum(t.top_runs for t in traces)
    return {"strategy": name, "to_within": _median(reach),
            "reached": sum(math.isfinite(r) for r in reach),
            **{f"best@{c}": _median([best_at(t, c) for t in traces]) for c in CHECKPOINTS},
            "best": _median([t.best[-1] for t in traces]),
            "epochs": _median([t.epochs[-1] for t in traces]),
            "top5_stopped": sum(t.top_stopped for t in traces) / runs if runs else math.nan,
            "top5_lost": sum(t.top_lost for t in traces) / runs if runs else math.nan}


def print_table(dataset: str, rows: list[dict[str, Any]], table_best: float, seeds: int) -> None:
    print(f"\n{dataset}: table best {table_best:.4f}; medians over {seeds} seeds")
    head = ["strategy", "epochs to within 0.5 pt", "reached", *[f"best@{c}" for c in
            CHECKPOINTS], "best", "epochs", "top-5 stopped", "top-5 lost > 0.5 pt"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print(f"| {r['strategy']} | {r['to_within']:.0f} | {r['reached']}/{seeds} | "
              + " | ".join(f"{r[f'best@{c}']:.4f}" for c in CHECKPOINTS)
              + f" | {r['best']:.4f} | {r['epochs']:.0f} | {r['top5_stopped']:.0%} | "
              f"{r['top5_lost']:.0%} |")


def plot(dataset: str, curves: dict[str, list[Trace]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, traces in curves.items():
        grid = list(range(0, max(t.epochs[-1] for t in traces) + 1, 4))
        values = [[best_at(t, g) for t in traces] for g in grid]
        quartiles = [statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3 for v in values]
        keep = [i for i, q in enumerate(quartiles) if math.isfinite(q[0])]
        xs = [grid[i] for i in keep]
        ax.plot(xs, [quartiles[i][1] for i in keep], label=name)
        ax.fill_between(xs, [quartiles[i][0] for i in keep], [quartiles[i][2] for i in keep],
                        alpha=0.15)
    ax.set(xlabel="trial-epochs", ylabel="best val F1 so far", title=dataset, xscale="log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


PLOTTED = ("random/none/off", "tpe/none/off", "tpe/median/off", "tpe/hyperband/off",
           "tpe/plateau/portfolio")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--tables", type=Path, default=TABLES)
    parser.add_argument("--strategies", nargs="*", default=None,
                        help="sampler/stopping/first, e.g. tpe/plateau/portfolio")
    parser.add_argument("--plots", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = default_space(compose_config(["logger=none"]))
    names = args.strategies or [f"{s}/{p}/{f}" for s in ("random", "tpe")
                                for p in _pruners(8) for f in ("off", "base", "portfolio")]
    args.plots.mkdir(parents=True, exist_ok=True)
    for path in sorted(args.tables.glob("*.jsonl")):
        table = load(path)
        table_best = max(c.best for c in table)
        rows, curves = [], {}
        for name in names:
            started = time.perf_counter()
            sampler, stopping, first = name.split("/")  # stopping may hold "/"-free k=v
            traces = [simulate(table, space, sampler, stopping, first, seed, args.budget)
                      for seed in range(args.seeds)]
            rows.append(summarize(name, traces, table_best))
            print(f"  {path.stem} {name}: {time.perf_counter() - started:.1f} s",
                  file=sys.stderr)
            if name in PLOTTED:
                curves[name] = traces
        print_table(f"{path.stem} ({len(table)} configs x {len(table[0].scores)} epochs)",
                    rows, table_best, args.seeds)
        if curves:
            plot(path.stem, curves, args.plots / f"simulator_{path.stem}.png")


if __name__ == "__main__":
    main()

"""What the strategy simulator prints and draws: per strategy, the compute to come within half
a point of a table's best, the best at equal compute, how often the best configs were stopped;
and whether plateau's default strategy meets its targets against TPE without pruning and
against Optuna's median and Hyperband pruners.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WITHIN = 0.005  # half a point of F1
CHECKPOINTS = (60, 120, 240)  # trial-epochs at which strategies are compared at equal compute
#: plateau's default: the sweeper's TPE, its stopping rule, the base config and the portfolio
DEFAULT = "tpe/plateau/portfolio"
#: what the default is measured against: a sweep without pruning, Optuna's pruners
NO_PRUNING, PRUNERS = "tpe/none/off", ("tpe/median/off", "tpe/hyperband/off")


@dataclass
class Trace:
    epochs: list[int]  # cumulative trial-epochs after each trial
    best: list[float]  # best COMPLETE value after each trial
    top_runs: int  # trials of a top-5 config
    top_stopped: int  # ... stopped before their last epoch
    top_lost: int  # ... stopped more than WITHIN below what their last epoch would give
    #: per top-5 config run: whether any of its trials kept its value (within WITHIN). The
    #: nearest-row mapping runs one recorded config for many sampled ones; stopping a re-run
    #: after the study holds the config's value loses nothing, losing every run of it does.
    top_kept: dict[int, bool]


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
            "top5_lost": sum(t.top_lost for t in traces) / runs if runs else math.nan,
            "top5_missed": (sum(not kept for t in traces for kept in t.top_kept.values())
                            / max(1, sum(len(t.top_kept) for t in traces)))}


def print_table(dataset: str, rows: list[dict[str, Any]], table_best: float, seeds: int) -> None:
    print(f"\n{dataset}: table best {table_best:.4f}; medians over {seeds} seeds")
    head = ["strategy", "epochs to within 0.5 pt", "reached", *[f"best@{c}" for c in
            CHECKPOINTS], "best", "epochs", "top-5 trials stopped", "top-5 trials lost > 0.5 pt",
            "top-5 configs lost"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print(f"| {r['strategy']} | {r['to_within']:.0f} | {r['reached']}/{seeds} | "
              + " | ".join(f"{r[f'best@{c}']:.4f}" for c in CHECKPOINTS)
              + f" | {r['best']:.4f} | {r['epochs']:.0f} | {r['top5_stopped']:.0%} | "
              f"{r['top5_lost']:.0%} | {r['top5_missed']:.0%} |")


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


def verdict(rows: list[dict[str, Any]], budget_epochs: int) -> list[str]:
    """The targets, measured: the default reaches within half a point with at least 5x fewer
    trial-epochs than TPE without pruning, and at equal compute is at least as good as
    Optuna's median and Hyperband pruners (with and without the portfolio)."""
    by_name = {r["strategy"]: r for r in rows}
    if DEFAULT not in by_name:
        return []
    default, lines = by_name[DEFAULT], []
    if NO_PRUNING in by_name:
        mine, theirs = default["to_within"], by_name[NO_PRUNING]["to_within"]
        if not math.isfinite(mine):
            lines.append(f"{DEFAULT} does not reach within 0.5 pt in most seeds (target missed)")
        elif math.isfinite(theirs):
            ratio = theirs / mine
            lines.append(f"{DEFAULT} reaches within 0.5 pt in {mine:.0f} trial-epochs, "
                         f"{NO_PRUNING} in {theirs:.0f}: {ratio:.1f}x fewer "
                         f"({'met' if ratio >= 5 else 'missed'}: target >= 5x)")
        else:
            lines.append(f"{DEFAULT} reaches within 0.5 pt in {mine:.0f} trial-epochs, "
                         f"{NO_PRUNING} not in most seeds within its {budget_epochs}: "
                         f"> {budget_epochs / mine:.1f}x fewer (target >= 5x)")
    lines.append(f"{DEFAULT}: {default['top5_missed']:.0%} of the top-5 configs it ran were "
                 "lost (every run stopped > 0.5 pt below its end)")
    for other in [*PRUNERS, *(p.replace("/off", "/portfolio") for p in PRUNERS)]:
        if other not in by_name:
            continue
        behind = [c for c in CHECKPOINTS if default[f"best@{c}"] < by_name[other][f"best@{c}"]]
        lines.append(f"at equal compute vs {other}: " + (
            "at least as good at " + ", ".join(str(c) for c in CHECKPOINTS) + " trial-epochs"
            if not behind else "behind at " + ", ".join(
                f"{c} ({default[f'best@{c}'] - by_name[other][f'best@{c}']:+.4f})"
                for c in behind)))
    return lines

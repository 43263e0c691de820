"""Does LP-FT earn a place in the default search space? Curves of the recorded configs with
``freeze=lp_ft``, compared with the freeze strategies the space already has.

Recording (``--record``): the configs of ``benchmarks/curves/<dataset>.jsonl`` (the base
config, then the random draws of the default space, in table order) again, with their
``freeze`` replaced by ``lp_ft`` (``freeze.depth``/``freeze.milestones`` dropped; LP-FT's own
keys keep their ``conf/freeze/lp_ft.yaml`` defaults) and the table's epochs, recorded as
``benchmarks/learning_curves.py`` records (same row format, same resumable claims) into
``benchmarks/curves/lp_ft/<dataset>.jsonl``. The original tables stay as they are. Every
other param of a row is a draw from the default space, so an LP-FT row is a draw from the
space with ``freeze`` fixed to ``lp_ft``, and it pairs with the original row of that index:
same learning rate, optimizer, schedule, augmentation and regularization, another freeze.

Report (default): per dataset, the objective (best val F1 over the epochs, what a trial
returns) and the last epoch's val F1 of the LP-FT rows against each freeze strategy's rows
of the original table (count, best, median), the paired differences, and replayed sweeps
(``benchmarks/strategy_simulator.py``'s ``simulate``: TPE, plateau's pruner, the portfolio,
60 trials, 20 seeds) with ``lp_ft`` among the space's freeze choices and without. In both
arms a drawn config trains as the nearest recorded draw *of its own freeze strategy*
(recorded LP-FT rows are few; a nearest row of another strategy would credit LP-FT with
another strategy's curve).

    python benchmarks/lp_ft_curves.py --record lp_ft --datasets digits_imbalanced digits
    python benchmarks/lp_ft_curves.py --record lp_ft_train_bn --datasets digits_imbalanced \
        --rows 0 6 7
    python benchmarks/lp_ft_curves.py                      # the comparison, from the tables
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import strategy_simulator as sim  # noqa: E402
from learning_curves import (  # noqa: E402
    DATASETS,
    TABLES,
    _claim,
    compose_config,
    default_space,
    record_one,
    recorded,
)

from sweeps.sweeper.search_space import parse_search_space  # noqa: E402

#: Recorded variants: table folder under ``benchmarks/curves/`` -> overrides beside
#: ``freeze=lp_ft``. ``lp_ft_train_bn`` lets BatchNorm train through the probe as well, so its
#: statistics do not switch from the pretrained ones to the batch's at the unfreezing.
VARIANTS = {"lp_ft": [], "lp_ft_train_bn": ["freeze.train_bn=true"]}
CONDITIONAL = ("freeze.depth=", "freeze.milestones=")


def lp_ft_rows(name: str, extra: list[str]) -> list[dict[str, Any]]:
    """The original table's base and sampled rows, in order, with ``freeze=lp_ft`` and
    ``extra``."""
    rows = []
    for index, row in sorted(recorded(TABLES / f"{name}.jsonl").items()):
        if row["role"] not in ("base", "sampled"):
            continue
        overrides = [o for o in row["overrides"]
                     if not o.startswith(("freeze=", *CONDITIONAL))]
        params = {k: v for k, v in row["params"].items()
                  if k not in ("freeze.depth", "freeze.milestones")}
        rows.append({"index": index, "role": row["role"],
                     "params": {**params, "freeze": "lp_ft"},
                     "overrides": ["freeze=lp_ft", *extra, *overrides],
                     "max_epochs": row["max_epochs"]})
    return rows


def record(name: str, variant: str, rows: list[int] | None) -> None:
    """Record the LP-FT rows of ``name`` (those of ``rows``, else all) missing from the
    variant's table (resumable, shareable)."""
    out = TABLES / variant
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.jsonl"
    for row in lp_ft_rows(name, VARIANTS[variant]):
        if row["index"] in recorded(path) or (rows is not None and row["index"] not in rows):
            continue
        claim = out / f".{name}.{row['index']}.claim"
        if not _claim(claim):
            continue
        result = record_one(DATASETS[name], row["overrides"], row["max_epochs"])
        line = {"dataset": name, **row, **result, "seed": 0,
                "machine": f"{platform.node()} {platform.processor()}",
                "threads": os.environ.get("OMP_NUM_THREADS")}
        with path.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        claim.unlink()
        print(f"{name} row {row['index']} {variant}: best {result['best_objective']} in "
              f"{result['seconds']:.0f} s {result['error'] or ''}", flush=True)


def _scores(row: dict[str, Any]) -> tuple[float, float]:
    """(best val F1 over the epochs, the last epoch's val F1); 0 for a failed row."""
    f1 = [e.get("val/f1_macro", 0.0) for e in row["epochs"]] or [0.0]
    return max(f1), f1[-1]


def compare(name: str, seeds: int, budget: int, pool: ProcessPoolExecutor) -> None:
    original = recorded(TABLES / f"{name}.jsonl")
    variants = {v: recorded(TABLES / v / f"{name}.jsonl") for v in VARIANTS}
    variants = {v: rows for v, rows in variants.items() if rows}
    if "lp_ft" not in variants:
        print(f"{name}: no LP-FT rows recorded yet")
        return
    groups: dict[str, list[tuple[float, float]]] = {}
    for row in original.values():
        groups.setdefault(row["params"]["freeze"], []).append(_scores(row))
    for variant, rows in variants.items():
        groups[variant] = [_scores(row) for row in rows.values()]
    print(f"\n{name}: " + ", ".join(f"{len(rows)} {v} rows" for v, rows in variants.items())
          + f" ({len(original)} original rows), {original[0]['max_epochs']} epochs; val F1 "
          "(best: the best epoch's, a trial's value; last: the last epoch's)")
    print(f"  {'freeze':<15} {'rows':>4} {'best':>7} {'median':>7} {'best last':>9} "
          f"{'median last':>11}")
    for freeze, values in sorted(groups.items(), key=lambda kv: -max(v[0] for v in kv[1])):
        best, last = [v[0] for v in values], [v[1] for v in values]
        print(f"  {freeze:<15} {len(values):>4} {max(best):7.4f} "
              f"{statistics.median(best):7.4f} {max(last):9.4f} {statistics.median(last):11.4f}")
    print("  paired (same other params), best val F1 (last epoch's):")
    for index in sorted(set().union(*variants.values())):
        was = original[index]
        line = (f"    row {index:>2} ({was['role']}, {was['params']['freeze']:<9}) "
                f"{_scores(was)[0]:.4f} ({_scores(was)[1]:.4f})")
        for variant, rows in variants.items():
            if index in rows:
                top, end = _scores(rows[index])
                line += f" | {variant} {top:.4f} ({end:.4f}) {top - _scores(was)[0]:+.4f}"
        print(line)
    probe = int(compose_config(["freeze=lp_ft", "logger=none"]).freeze.probe_epochs)
    for variant, rows in variants.items():
        f1 = [[e.get("val/f1_macro", 0.0) for e in row["epochs"]] for row in rows.values()]
        in_probe = sum(int(np.argmax(curve)) < probe for curve in f1)
        drops = [curve[probe - 1] - curve[probe] for curve in f1 if len(curve) > probe]
        print(f"  {variant}: best epoch within the linear probe (epochs 0-{probe - 1}) in "
              f"{in_probe} of {len(f1)} rows; val F1 from the probe's last epoch to the first "
              f"fine-tuning epoch: median {-statistics.median(drops):+.4f}, "
              f"{sum(d > 0 for d in drops)} of {len(drops)} rows drop")
    simulated(name, original, variants["lp_ft"], seeds, budget, pool)


def simulated(name: str, original: dict[int, dict[str, Any]], lp_ft: dict[int, dict[str, Any]],
              seeds: int, budget: int, pool: ProcessPoolExecutor) -> None:
    """Replayed sweeps (TPE, plateau's pruner, the portfolio) with and without ``lp_ft``."""
    from strategy_results import WITHIN

    cfg = compose_config(["logger=none"])
    without = default_space(cfg)
    space = cfg.hydra.sweeper.default_space
    params = OmegaConf.to_container(space.params)
    assert isinstance(params, dict)
    assert "lp_ft" not in params["freeze"]
    params["freeze"] = params["freeze"].rstrip(")") + ", lp_ft)"
    with_lp_ft = parse_search_space(params, [],  # type: ignore[arg-type]
                                    OmegaConf.to_container(space.conditional_params))  # type: ignore[arg-type]

    def table(rows: list[dict[str, Any]]) -> list[sim.Config]:
        return [sim.Config(r["role"], r["params"], [e.get("val/loss", float("nan"))
                                                     for e in r["epochs"]],
                           [e.get("val/f1_macro", 0.0) for e in r["epochs"]]) for r in rows]

    base = table([row for _, row in sorted(original.items())])
    extra = table([{**row, "role": "sampled"} for _, row in sorted(lp_ft.items())])
    target = max(c.best for c in base + extra)
    print(f"  replayed sweeps (tpe/plateau/portfolio, {budget} trials, {seeds} seeds; "
          f"target {target:.4f} = best of both tables), medians:")
    sim.Nearest = SameFreezeNearest  # type: ignore[misc]  # simulate() builds this; forked workers inherit it
    for label, rows, space in (("without lp_ft", base, without),
                               ("with lp_ft", base + extra, with_lp_ft)):
        run = functools.partial(sim.simulate, rows, space, "tpe", "plateau", "portfolio",
                                budget=budget)
        traces = list(pool.map(run, range(seeds)))
        reach = [next((e for e, b in zip(t.epochs, t.best, strict=True)
                       if b >= target - WITHIN), None) for t in traces]
        reached = [r for r in reach if r is not None]
        at = {n: float(np.median([max([b for e, b in zip(t.epochs, t.best, strict=True)
                                       if e <= n],
                                      default=float("nan")) for t in traces]))
              for n in (60, 120, 240)}
        print(f"    {label:<14} best {np.median([t.best[-1] for t in traces]):.4f}, "
              f"@60/120/240 trial-epochs {at[60]:.4f}/{at[120]:.4f}/{at[240]:.4f}, "
              f"within {WITHIN * 100:g} points of the target in {len(reached)}/{seeds} "
              f"(median {statistics.median(reached) if reached else 'inf'} trial-epochs)")


class SameFreezeNearest(sim.Nearest):
    """:class:`strategy_simulator.Nearest` restricted to the rows of the drawn freeze strategy."""

    def __call__(self, params: dict[str, Any]) -> sim.Config:
        other = np.array([row.params["freeze"] != params["freeze"] for row in self.rows])
        return self.rows[int(np.argmin(self.distances(params) + 1e6 * other))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", choices=VARIANTS, help="record this variant's curves")
    parser.add_argument("--rows", type=int, nargs="+", help="only these rows of the tables")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    args = parser.parse_args()
    if args.record:
        from sweeps.job.allocator import keep_freed_memory

        keep_freed_memory()
        for name in args.datasets:
            record(name, args.record, args.rows)
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with ProcessPoolExecutor(args.jobs) as pool:
        for name in args.datasets:
            compare(name, args.seeds, args.budget, pool)


if __name__ == "__main__":
    main()

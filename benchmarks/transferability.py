"""How well does the LogME ranking (``python -m doctor rank``) predict the fine-tuned order of
the backbones, and what does it cost next to fine-tuning them?

For each shipped dataset (``data=digits``, and with ``data.imbalance=10``) and the three
offline backbones: the LogME score of each through :func:`sweeps.job.ranking.rank_backbones`
(into a fresh cache folder, so every backbone's features are really computed; timed), then
each backbone fine-tuned with a few recipes of the default portfolio
(``conf/search/default.yaml``) for ``--epochs`` epochs, through the path a trial takes
(``prepare_trial``, ``logger=none``), in the same process, side by side. A backbone's
fine-tuned value is its best over the recipes of the objective (``objective.metric``,
default ``val/f1_macro``: the best epoch's value, as a trial returns it; the best epoch's
``val/acc`` is printed too). Printed per dataset: the scores and values, Kendall's tau between
them (with three backbones tau is one of -1, -1/3, 1/3, 1: one swapped pair moves it by 2/3),
and the ranking's seconds against one fine-tuning run of each backbone. The linear-probe recipe
(``freeze=head_only augment=none``) reads the features the ranking cached: its seconds are
a cached trial's, not an uncached one's.

    python benchmarks/transferability.py                   # 53 min on 2 cores at load 5-9
    python benchmarks/transferability.py --epochs 1 --recipes linear_probe --datasets digits
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from omegaconf import DictConfig, OmegaConf  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curves import DATASETS, ROOT, compose_config, record_one  # noqa: E402

from sweeps.job.ranking import PROBE, rank_backbones  # noqa: E402

BACKBONES = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
RESULTS = ROOT / "benchmarks" / "results" / "transferability.txt"


class Tee:
    """Print to the console and keep every line for the results file."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)


def ranking(dataset: list[str], cache: str) -> tuple[dict[str, float], float]:
    """LogME per backbone and the wall seconds of ranking all of them."""
    def compose(name: str) -> DictConfig:
        cfg = compose_config([*dataset, f"backbone={name}", *PROBE, "logger=none",
                              f"cache_dir={cache}"])
        return OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"])

    started = time.perf_counter()
    ranked = rank_backbones(BACKBONES, compose)
    seconds = time.perf_counter() - started
    assert not any(c.cached for c in ranked), "the ranking read cached features"
    return {c.backbone: c.score for c in ranked}, seconds


def fine_tune(dataset: list[str], backbone: str, recipe: list[str], epochs: int,
              cache: str) -> dict[str, Any]:
    """One run of ``recipe`` on ``backbone``: best objective, best val/acc, seconds."""
    result = record_one(dataset, [f"backbone={backbone}", f"cache_dir={cache}", *recipe],
                        epochs)
    if result["error"]:
        raise SystemExit(f"{backbone} {recipe}: {result['error']}")
    acc = max(e.get("val/acc", 0.0) for e in result["epochs"])
    return {"objective": result["best_objective"], "acc": acc, "seconds": result["seconds"]}


def tau(scores: dict[str, float], values: dict[str, float]) -> float:
    return float(kendalltau([scores[b] for b in BACKBONES], [values[b] for b in BACKBONES])[0])


def measure(name: str, cache: str, portfolio: dict[Any, Any], args: argparse.Namespace,
            metric: str, out: Tee) -> tuple[float, float]:
    """Rank, fine-tune and print one dataset; Kendall's tau against the best objective and
    against the best val/acc."""
    dataset = DATASETS[name]
    scores, rank_seconds = ranking(dataset, cache)
    runs = {(b, r): fine_tune(dataset, b, portfolio[r], args.epochs, cache)
            for b in BACKBONES for r in args.recipes}
    best = {b: max(runs[b, r]["objective"] for r in args.recipes) for b in BACKBONES}
    best_acc = {b: max(runs[b, r]["acc"] for r in args.recipes) for b in BACKBONES}
    out()
    out(f"{name}: ranking {rank_seconds:.1f} s for {len(BACKBONES)} backbones "
        f"(features computed)")
    head = f"  {'backbone':<22} {'LogME':>7}"
    for r in args.recipes:
        head += f" {r[:17]:>17} {'s':>5}"
    out(head + f" {'best ' + metric.split('/')[-1]:>14} {'best val/acc':>12}")
    for b in BACKBONES:
        line = f"  {b:<22} {scores[b]:7.4f}"
        for r in args.recipes:
            line += f" {runs[b, r]['objective']:17.4f} {runs[b, r]['seconds']:5.0f}"
        out(line + f" {best[b]:14.4f} {best_acc[b]:12.4f}")
    kt, kt_acc = tau(scores, best), tau(scores, best_acc)
    out(f"  Kendall tau (LogME vs best {metric}) = {kt:+.3f}; vs best val/acc "
        f"{kt_acc:+.3f}  (3 backbones: tau in {{-1, -1/3, +1/3, +1}})")
    for r in args.recipes:
        tuned = sum(runs[b, r]["seconds"] for b in BACKBONES)
        out(f"  fine-tuning each backbone once with {r} ({args.epochs} epochs): "
            f"{tuned:.0f} s = {tuned / rank_seconds:.2f}x the ranking")
    return kt, kt_acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--recipes", nargs="+",
                        default=["linear_probe", "discriminative_lr", "full_low_lr"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from sweeps.job.allocator import keep_freed_memory

    keep_freed_memory()
    cfg = compose_config(["logger=none"])
    portfolio = OmegaConf.to_container(cfg.hydra.sweeper.default_space.portfolio)
    assert isinstance(portfolio, dict)
    metric = str(cfg.objective.metric)
    out = Tee()
    out(f"LogME ranking vs fine-tuning, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start, "
        f"{os.environ['OMP_NUM_THREADS']} torch thread(s); recipes {', '.join(args.recipes)} "
        f"x {args.epochs} epochs; objective {metric} (best epoch)")
    with tempfile.TemporaryDirectory(prefix="plateau-rank-") as cache:
        summary = [measure(name, cache, portfolio, args, metric, out) for name in args.datasets]
    out()
    out("summary: " + "; ".join(f"{n} tau {kt:+.3f} (acc {ka:+.3f})"
                                for n, (kt, ka) in zip(args.datasets, summary, strict=True)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(out.lines) + "\n")


if __name__ == "__main__":
    main()

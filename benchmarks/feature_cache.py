"""P2, frozen-feature cache: a linear-probe trial with and without cached backbone features.

The embedded default (digits, EfficientNet-Lite0 at 64 px) with ``freeze=head_only``, in this
process: uncached (``feature_cache=false``), then cached with an empty cache (features are
computed, then the head trains on them), then cached with the features on disk. Times the
whole trial (build, preflight, fit) and the fit alone, and checks the metrics agree.
Target: >= 20x.

    python benchmarks/feature_cache.py              # about 2 minutes on 2 CPU cores
    python benchmarks/feature_cache.py --epochs 10
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sweeps.job.prepare import prepare_trial  # noqa: E402


def trial(epochs: int, *overrides: str) -> tuple[float, float, float]:
    """(trial seconds, fit seconds, val/f1_macro) of one linear-probe trial."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", "freeze=head_only",
                                           f"trainer.max_epochs={epochs}",
                                           "+trainer.enable_progress_bar=false", *overrides])
    started = time.perf_counter()
    prepared = prepare_trial(cfg)
    fit_started = time.perf_counter()
    prepared.trainer.fit(prepared.model, datamodule=prepared.datamodule)
    ended = time.perf_counter()
    return ended - started, ended - fit_started, float(
        prepared.trainer.callback_metrics["val/f1_macro"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PLATEAU_CACHE_DIR"] = cache
        trial(1, "feature_cache=false")  # warm-up: imports, first-call allocations
        runs = {
            "uncached": trial(args.epochs, "feature_cache=false"),
            "cached, computing": trial(args.epochs),
            "cached, from disk": trial(args.epochs),
        }
    print(f"\nlinear probe, {args.epochs} epochs:")
    print(f"{'':>18} {'trial s':>8} {'fit s':>7} {'val/f1_macro':>13}")
    for name, (total, fit, f1) in runs.items():
        print(f"{name:>18} {total:>8.2f} {fit:>7.2f} {f1:>13.6f}")
    (u_total, u_fit, u_f1), (w_total, w_fit, w_f1) = runs["uncached"], runs["cached, from disk"]
    print(f"speed-up, whole trial: {u_total / w_total:.1f}x; fit alone: {u_fit / w_fit:.1f}x "
          "(target >= 20x)")
    print(f"metric difference cached vs uncached: {abs(w_f1 - u_f1):.2e}")


if __name__ == "__main__":
    main()

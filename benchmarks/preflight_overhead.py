"""What the doctor's preflight adds to a default trial (issue 4: under 10 %).

Runs the embedded default trial (digits, EfficientNet-Lite0, 5 epochs) in this process with
``doctor.preflight.enabled=false`` and ``true``, alternating, and times the preflight alone
with a cold and a warm fingerprint cache. Prints the ratio of trial wall times and the
preflight's share of a trial.

    python benchmarks/preflight_overhead.py             # about 4 minutes on 2 CPU cores
    python benchmarks/preflight_overhead.py --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sweeps.job.build import build_parts  # noqa: E402
from sweeps.job.prepare import preflight  # noqa: E402
from sweeps.job.run import run_trial  # noqa: E402


def config(*overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["logger=none", *overrides])


def timed_trial(enabled: bool) -> float:
    cfg = config(f"doctor.preflight.enabled={str(enabled).lower()}")
    started = time.perf_counter()
    run_trial(cfg)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="trials per setting")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PLATEAU_CACHE_DIR"] = cache
        cfg = config()
        parts = build_parts(cfg)
        cold = preflight(cfg, parts).seconds
        warm = statistics.median(preflight(cfg, parts).seconds for _ in range(3))
        off, on = [], []
        for _ in range(args.repeats):
            off.append(timed_trial(False))
            on.append(timed_trial(True))
    t_off, t_on = statistics.median(off), statistics.median(on)
    print(f"preflight alone: cold cache {cold:.2f} s, warm cache {warm:.2f} s")
    print(f"default trial: without preflight {t_off:.1f} s, with {t_on:.1f} s "
          f"(median of {args.repeats})")
    print(f"ratio with/without: {t_on / t_off:.3f}")
    print(f"preflight share of a trial: cold {cold / t_off:.1%}, warm {warm / t_off:.1%} "
          "(target < 10 %)")


if __name__ == "__main__":
    main()

"""P3, orchestration overhead: one trial through ``python sweep.py`` vs a bare Lightning fit.

Both run as fresh processes on the embedded default (digits, EfficientNet-Lite0, depth-2
freezing) for the same epochs, timed from process start to exit:

* ``python sweep.py`` with everything plateau adds: Hydra's entry and output folder, the
  preflight, the MLflow run (params, per-epoch metrics, config artifact, tags), the curve
  recorder and the diagnosis;
* the same without MLflow (``logger=none``), to tell MLflow's client startup (importing
  it, opening its store) from plateau's own work;
* the same model and data objects fitted by a plain ``lightning.pytorch.Trainer`` with no
  logger and only the freezing callback (``--bare``: this file's own bare mode).

Before the timed runs, one untimed 1-epoch ``sweep.py`` run creates what a user's first run
creates once (the MLflow store's tables, plateau's cache) and warms the OS file cache for both
arms alike; every trial after a sweep's first finds them in place. The store's creation
itself (about 1.5 s here: MLflow's schema migrations) is printed separately.

Target: <= 1.05x.

    python benchmarks/overhead.py                  # about 8 minutes on 2 CPU cores
    python benchmarks/overhead.py --repeats 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def bare(epochs: int) -> None:
    """The bare fit: plateau's model and data, a plain Trainer, nothing else."""
    sys.path.insert(0, str(ROOT))
    import lightning.pytorch as pl
    from hydra import compose, initialize_config_dir

    from sweeps.job.build import build_parts

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["logger=none"])
    parts = build_parts(cfg)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False, num_sanity_val_steps=0,
                         callbacks=[parts.freezing])
    trainer.fit(parts.model, datamodule=parts.datamodule)


def timed(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare(args.epochs)
        return
    plateau, untracked, plain = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        os.environ["PLATEAU_CACHE_DIR"] = str(cwd / "cache")
        ENV["PLATEAU_CACHE_DIR"] = str(cwd / "cache")
        run = [str(ROOT / "sweep.py"), "+trainer.enable_progress_bar=false"]
        first = timed([*run, "trainer.max_epochs=1"], cwd)
        store = timed(["-c", "import sys, mlflow; mlflow.MlflowClient(sys.argv[1])",
                       f"sqlite:///{cwd / 'fresh.db'}"], cwd)
        opened = timed(["-c", "import sys, mlflow; mlflow.MlflowClient(sys.argv[1])",
                        f"sqlite:///{cwd / 'fresh.db'}"], cwd)
        print(f"first run (untimed warm-up): {first:.1f} s; creating an MLflow sqlite store "
              f"costs {store - opened:.1f} s once")
        for _ in range(args.repeats):  # alternate, so drifting machine load hits all arms
            plateau.append(timed([*run, f"trainer.max_epochs={args.epochs}"], cwd))
            untracked.append(timed([*run, f"trainer.max_epochs={args.epochs}", "logger=none"],
                                   cwd))
            plain.append(timed([__file__, "--bare", f"--epochs={args.epochs}"], cwd))
    t_plateau, t_plain = statistics.median(plateau), statistics.median(plain)
    t_untracked = statistics.median(untracked)
    print(f"one default trial, {args.epochs} epochs, median of {args.repeats}:")
    print(f"  python sweep.py               {t_plateau:7.1f} s   {[round(t, 1) for t in plateau]}")
    print(f"  python sweep.py logger=none   {t_untracked:7.1f} s   "
          f"{[round(t, 1) for t in untracked]}")
    print(f"  bare Lightning fit            {t_plain:7.1f} s   {[round(t, 1) for t in plain]}")
    print(f"overhead ratio: {t_plateau / t_plain:.3f}x (target <= 1.05x); without MLflow "
          f"{t_untracked / t_plain:.3f}x (MLflow's share {t_plateau - t_untracked:.1f} s)")


if __name__ == "__main__":
    main()

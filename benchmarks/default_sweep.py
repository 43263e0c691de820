"""The README's main job, measured: ``python sweep.py -m`` on the embedded default.

Runs the default sweep in a fresh temporary directory (its own plateau.db and mlflow.db),
then re-runs the best trial from the exported ``best_trial.yaml`` and compares objectives.
Prints wall time, trial states, epochs run against the no-pruning budget, and the
re-run / sweep objective ratio.

    python benchmarks/default_sweep.py            # about 7 minutes on 2 CPU cores
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def run(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args], cwd=cwd, env=ENV,
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"sweep.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result, time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        _, sweep_seconds = run(["-m"], cwd)
        study = optuna.load_study(study_name="plateau", storage=f"sqlite:///{cwd}/plateau.db")
        states = Counter(t.state.name for t in study.trials)
        epochs = sum(len(t.intermediate_values) for t in study.trials)
        (best_config,) = cwd.glob("multirun/*/*/best_trial.yaml")
        max_epochs = int(OmegaConf.load(best_config).trainer.max_epochs)
        rerun, rerun_seconds = run([f"--config-path={best_config.parent}",
                                    f"--config-name={best_config.stem}"], cwd)
        found = re.search(r"objective \S+ = ([0-9.]+)", rerun.stdout + rerun.stderr)
        assert found, "the re-run printed no objective"
        again = float(found.group(1))
        print(f"default sweep: {sweep_seconds:.0f} s wall, trials {dict(states)}")
        budget = max_epochs * len(study.trials)
        print(f"epochs run: {epochs} of {budget} without pruning (ratio {epochs / budget:.2f})")
        print(f"best value {study.best_value:.4f} (trial {study.best_trial.number}); "
              f"re-run of best_trial.yaml: {again:.4f} in {rerun_seconds:.0f} s "
              f"(ratio {again / study.best_value:.4f})")


if __name__ == "__main__":
    main()

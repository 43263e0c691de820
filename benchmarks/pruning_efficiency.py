"""P1, pruning efficiency: the same seeded sweep without pruning and with plateau's default.

``hydra/sweeper/pruner=none`` is the hydra-optuna-sweeper / lightning-hydra-template
situation: every trial runs to its last epoch. Both sweeps run the embedded default search
space with the same TPE seed, trial budget and ``trainer.max_epochs``, one after the other in
fresh directories; the script prints trial-epochs (compute), wall time and the best objective
of each, and their ratios. Target at 16 x 10: >= 3x fewer trial-epochs, best within 0.5
points. Both sweeps start with the base trial and the default portfolio.

    python benchmarks/pruning_efficiency.py                         # 12 x 15, ~50 min here
    python benchmarks/pruning_efficiency.py --trials 16 --epochs 10 # 41 min on 2 CPU cores
    python benchmarks/pruning_efficiency.py --trials 6 --epochs 8   # a quicker look
    python benchmarks/pruning_efficiency.py --keep runs/p1          # keep both studies

Per trial it also prints the epochs run and how the trial ended, so a miss can be traced to
the trials that ran long. Stopping rules are compared over many more sweeps, in seconds, on
recorded learning curves by ``benchmarks/strategy_simulator.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


@dataclass
class Outcome:
    pruner: str
    seconds: float
    epochs: int
    best: float
    states: Counter[str]


def sweep(pruner: str, trials: int, epochs: int, cwd: Path) -> Outcome:
    args = ["-m", f"hydra/sweeper/pruner={pruner}", f"hydra.sweeper.n_trials={trials}",
            f"trainer.max_epochs={epochs}", "logger=none"]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"sweep.py {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    study = optuna.load_study(study_name="plateau", storage=f"sqlite:///{cwd / 'plateau.db'}")
    trials_ = study.get_trials(deepcopy=False)
    for t in trials_:
        value = "" if t.value is None else f"{t.value:.4f}"
        print(f"  {pruner:>10} trial {t.number:>2}: {len(t.intermediate_values):>2} epochs "
              f"{t.state.name.lower():<8} {value:>7}  {' '.join(t.user_attrs['overrides'])}")
    return Outcome(pruner, seconds, sum(len(t.intermediate_values) for t in trials_),
                   study.best_value, Counter(t.state.name.lower() for t in trials_))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="trial budget of each sweep")
    parser.add_argument("--epochs", type=int, default=15, help="trainer.max_epochs")
    parser.add_argument("--keep", type=Path, help="keep each sweep's folder (plateau.db) here")
    args = parser.parse_args()
    outcomes = []
    for pruner in ("none", "stagnation"):
        with tempfile.TemporaryDirectory() as tmp:
            cwd = Path(tmp) if args.keep is None else args.keep.resolve() / pruner
            cwd.mkdir(parents=True, exist_ok=True)
            outcomes.append(sweep(pruner, args.trials, args.epochs, cwd))
            print(f"{pruner:>10}: {outcomes[-1]}", flush=True)
    base, ours = outcomes
    print(f"\n{args.trials} trials x up to {args.epochs} epochs, TPE seed fixed")
    print(f"{'pruner':>10} {'trial-epochs':>13} {'wall s':>8} {'best':>8}  states")
    for o in outcomes:
        states = ", ".join(f"{n} {s}" for s, n in sorted(o.states.items()))
        print(f"{o.pruner:>10} {o.epochs:>13} {o.seconds:>8.0f} {o.best:>8.4f}  {states}")
    print(f"compute ratio (trial-epochs none/stagnation): {base.epochs / ours.epochs:.2f}x "
          "(target >= 3x)")
    print(f"wall-time ratio: {base.seconds / ours.seconds:.2f}x")
    print(f"best objective difference: {100 * (ours.best - base.best):+.2f} points "
          "(target within 0.5)")


if __name__ == "__main__":
    main()

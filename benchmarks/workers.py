"""Scale-out: trials finished per hour by 1 vs 2 ``python sweep.py -m`` workers on one study.

Both setups run the same budget of CPU-bound tiny trials (synthetic stripes, timm's
test_resnet, ``trainer=cpu``) on a fresh sqlite study, side by side in one run: one worker, or
two started at once against the same storage and study name. Trials this small do not get
faster with more torch threads (``--threads 0`` lets torch take every core: compare the
"cores busy" column), so each worker runs with ``--threads`` (default 1) and the second
worker is what puts the second core to work. The clock runs from the first worker's start to
the last one's exit, so interpreter start-up, study bookkeeping, the MLflow runs and the study
report are all in it. Target: >= 1.8x trials/hour with 2 workers.

    python benchmarks/workers.py                  # about 6 minutes on 2 CPU cores
    python benchmarks/workers.py --trials 8 --epochs 2
    python benchmarks/workers.py --threads 0     # torch's own thread count in both setups
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweeps.ledger import is_finished  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
TRIAL = ["data=synthetic", "backbone=test_resnet", "trainer=cpu",
         "data.size=96", "data.image_size=96", "data.images_per_class=64",
         "+trainer.enable_progress_bar=false"]


@dataclass
class Outcome:
    workers: int
    seconds: float
    finished: int
    owners: int
    cpu_seconds: float

    @property
    def per_hour(self) -> float:
        return self.finished * 3600.0 / self.seconds


def run(workers: int, trials: int, epochs: int, threads: int, cwd: Path) -> Outcome:
    """Start ``workers`` sweeps on one study at once; wait for all; count finished trials."""
    env = dict(ENV)
    if threads > 0:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cpu_before = _children_cpu()
    command = [sys.executable, str(ROOT / "sweep.py"), "-m", *TRIAL,
               f"trainer.max_epochs={epochs}", f"hydra.sweeper.n_trials={trials}",
               "hydra/sweeper/pruner=none"]  # every trial does the same work
    logs = [cwd / f"worker-{i}.out" for i in range(workers)]  # files: a full pipe stalls
    started = time.perf_counter()
    procs = []
    for log in logs:
        with log.open("w") as out:
            procs.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=out,
                                          stderr=subprocess.STDOUT))
    for proc in procs:
        proc.wait()
    seconds = time.perf_counter() - started
    outputs = [log.read_text() for log in logs]
    cpu_seconds = _children_cpu() - cpu_before
    for proc, output in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            sys.exit(f"a worker failed (exit {proc.returncode}):\n{output[-3000:]}")
    study = optuna.load_study(study_name="plateau", storage=f"sqlite:///{cwd / 'plateau.db'}")
    finished = [t for t in study.get_trials(deepcopy=False) if is_finished(t)]
    owners = {t.user_attrs.get("owner") for t in finished}
    return Outcome(workers, seconds, len(finished), len(owners), cpu_seconds)


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="the study's budget")
    parser.add_argument("--epochs", type=int, default=6, help="trainer.max_epochs per trial")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per worker (0: torch's default, every core)")
    args = parser.parse_args()
    outcomes = []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            outcomes.append(run(workers, args.trials, args.epochs, args.threads, Path(tmp)))
        o = outcomes[-1]
        print(f"{o.workers} worker(s): {o.finished} trials finished in {o.seconds:6.1f} s "
              f"({o.per_hour:6.0f} trials/hour, {o.cpu_seconds / o.seconds:.2f} cores busy), "
              f"run by {o.owners} process(es)", flush=True)
    one, two = outcomes
    threads = args.threads or "torch's default"
    print(f"\n{args.trials} trials x {args.epochs} epochs on {os.cpu_count()} cores, "
          f"{threads} thread(s) per worker")
    print(f"trials/hour, 2 workers vs 1: {two.per_hour / one.per_hour:.2f}x (target >= 1.8x)")


if __name__ == "__main__":
    main()

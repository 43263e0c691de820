"""The README's main job, measured: ``python sweep.py -m`` on the embedded default.

Runs ``python sweep.py`` (the model a user has without sweeping) and the default sweep in a
fresh temporary directory (its own plateau.db and mlflow.db), then re-runs the best trial
from the exported ``best_trial.yaml``. Prints the single run's value, the sweep's base trial
and best (the gain over not sweeping), wall times, trial states, epochs run against the
no-pruning budget, the re-run / sweep objective ratio, and the doctor's final labels with
the two checks they must pass: no complete trial of the best quarter carries a failure
label, and no trial below 0.2 F1 is called healthy.

    python benchmarks/default_sweep.py            # about 6-7 minutes on 2 CPU cores
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
from optuna.trial import TrialState

from doctor.curves import in_top_quarter
from sweeps.report.diagnoses import final_labels

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def run(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args], cwd=cwd, env=ENV,
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"sweep.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result, time.perf_counter() - started


def objective(result: subprocess.CompletedProcess) -> float:
    found = re.search(r"objective \S+ = ([0-9.]+)", result.stdout + result.stderr)
    assert found, "the run printed no objective"
    return float(found.group(1))


def doctor_lines(study: optuna.Study) -> list[str]:
    """The final labels (as the sweep's table shows them) and the checks they must pass."""
    labels = final_labels(study.trials, study.direction)
    complete = {t.number: t.value for t in study.trials
                if t.state == TrialState.COMPLETE and t.value is not None}
    top = [n for n, v in complete.items()
           if in_top_quarter(v, [w for m, w in complete.items() if m != n], maximize=True)]
    alarms = [n for n in top if n in labels and labels[n].failure]
    low = [t.number for t in study.trials if t.value is not None and t.value < 0.2
           and t.number in labels and labels[t.number].label == "healthy"]
    return [f"doctor: {dict(Counter(d.label for d in labels.values()))}",
            f"  best-quarter complete trials with a failure label: {len(alarms)} of {len(top)} "
            f"{alarms or ''}",
            f"  trials below 0.2 F1 labelled healthy: {len(low)} {low or ''}"]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        single, single_seconds = run(["logger=none"], cwd)
        _, sweep_seconds = run(["-m"], cwd)
        study = optuna.load_study(study_name="plateau", storage=f"sqlite:///{cwd}/plateau.db")
        states = Counter(t.state.name for t in study.trials)
        epochs = sum(len(t.intermediate_values) for t in study.trials)
        (best_config,) = cwd.glob("multirun/*/*/best_trial.yaml")
        max_epochs = int(OmegaConf.load(best_config).trainer.max_epochs)
        rerun, rerun_seconds = run([f"--config-path={best_config.parent}",
                                    f"--config-name={best_config.stem}"], cwd)
        again = objective(rerun)
        base = [t for t in study.trials if t.user_attrs.get("role") == "base"]
        print(f"python sweep.py: {objective(single):.4f} in {single_seconds:.0f} s")
        if base:
            print(f"the sweep's base trial: {base[0].value:.4f}; best {study.best_value:.4f}: "
                  f"gain {study.best_value - objective(single):+.4f} over not sweeping")
        print(f"default sweep: {sweep_seconds:.0f} s wall, trials {dict(states)}")
        budget = sum(t.user_attrs.get("max_epochs", max_epochs) for t in study.trials)
        print(f"epochs run: {epochs} of {budget} without pruning (ratio {epochs / budget:.2f})")
        print(f"best value {study.best_value:.4f} (trial {study.best_trial.number}); "
              f"re-run of best_trial.yaml: {again:.4f} in {rerun_seconds:.0f} s "
              f"(ratio {again / study.best_value:.4f})")
        print("\n".join(doctor_lines(study)))


if __name__ == "__main__":
    main()

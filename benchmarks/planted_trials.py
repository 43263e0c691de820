"""Record, once, real short trials with a planted cause, the labelled set the doctor is
measured on (``benchmarks/doctor_accuracy.py``).

Each case is a configuration built to show one of the doctor's labels, the same planted
causes ``tests/test_diagnosis_trials.py`` fits one seed of (timm's tiny ``test_resnet``,
random init, on the CPU, the preflight off), run here over several seeds (``seed=``, which
seeds the weights, the split and the planted label noise). The label-noise datasets are
that test module's planted parts, built by Hydra from ``data._target_``. Per trial the
table ``benchmarks/curves/planted.jsonl`` gets one line: the case, its seed, its planted
(truth) label, the overrides, the four per-epoch series the doctor reads, the last
validation confusion matrix, the class names and the fit's seconds. A NaN loss is written
as JSON's ``NaN`` (Python's ``json`` reads it back).

The recording appends: run it again after a kill and it fits only the (case, seed) pairs
missing from the table. One torch thread (``OMP_NUM_THREADS`` says otherwise).

    python benchmarks/planted_trials.py                       # 8 cases x 3 seeds, 99 s here
                                                              # (2 CPU cores, both busy)
    python benchmarks/planted_trials.py --cases healthy_digits --seeds 0 --out /tmp/p
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curves import TABLES, compose_config  # noqa: E402  (one thread, hub offline)
from omegaconf import open_dict  # noqa: E402

HERE = "tests.test_diagnosis_trials"
#: The tests' tiny trial, without a tracking store, the preflight or a progress bar.
BASE = ["data=synthetic", "backbone=test_resnet", "trainer=cpu", "logger=none",
        "doctor.preflight.enabled=false", "verbose=false"]
SEEDS = (0, 1, 42)


@dataclass(frozen=True)
class Case:
    """A planted cause: the label it must get and the overrides that plant it."""

    truth: str
    overrides: tuple[str, ...]
    why: str


CASES = {
    "lr_10": Case("diverged", ("freeze=none", "optimizer.lr=10", "trainer.max_epochs=3"),
                  "learning rate 10: the training loss explodes above that of guessing"),
    "lr_1e6": Case("diverged", ("freeze=none", "optimizer.lr=1e6", "trainer.max_epochs=2"),
                   "learning rate 1e6: the weights, then the loss, overflow to NaN"),
    "lr_1e-9": Case("no_progress", ("freeze=none", "regularization=none", "optimizer.lr=1e-9",
                                    "data.batch_size=39", "trainer.max_epochs=3"),
                    "learning rate 1e-9: the weights do not move"),
    "long_tail": Case("majority_collapse",
                      ("data=digits", "data.imbalance=1000", "data.image_size=16",
                       "class_weight=none", "freeze=head_only", "optimizer.lr=3e-2",
                       "trainer.max_epochs=3"),
                      "digits 1000:1, unweighted linear probe: everything is the head class"),
    "mislabeled_digits": Case(
        "overfitting",
        ("data=digits", f"data._target_={HERE}.MislabeledDigits", "+data.images_per_class=30",
         "+data.train_label_noise=0.6", "data.val_fraction=0.34", "data.image_size=16",
         "data.batch_size=16", "freeze=none", "regularization=none", "optimizer.lr=1e-2",
         "lr_schedule=constant", "trainer.max_epochs=15"),
        "60% wrong training labels, full fine-tune, no regularization: memorized"),
    "noisy_stripes_probe": Case(
        "underfitting",
        (f"data._target_={HERE}.NoisyStripes", "+data.label_noise=0.6", "data.num_classes=10",
         "data.images_per_class=30", "freeze=head_only", "optimizer.lr=1e-1",
         "trainer.max_epochs=5"),
        "60% wrong labels in both splits, linear probe on random features: both accuracies low"),
    "stripes": Case("healthy", ("freeze=none", "optimizer.lr=1e-2", "data.images_per_class=24",
                                "trainer.max_epochs=6"),
                    "learnable stripes, full fine-tune"),
    "healthy_digits": Case("healthy", ("data=digits", "data.image_size=16", "freeze=none",
                                       "optimizer.lr=1e-2", "trainer.max_epochs=6"),
                           "all digits, full fine-tune"),
}


def fit(case: Case, seed: int) -> dict[str, Any]:
    """Fit one seed of ``case``; its curves as the doctor read them, and the seconds."""
    from sweeps.job.prepare import prepare_trial

    cfg = compose_config([*BASE, *case.overrides, f"seed={seed}"])
    with open_dict(cfg):
        del cfg["hydra"]
    started = time.perf_counter()
    prepared = prepare_trial(cfg)
    prepared.trainer.fit(prepared.model, datamodule=prepared.datamodule)
    curves = prepared.curves.curves
    return {**curves.series(), "confusion": curves.confusion, "classes": curves.classes,
            "seconds": round(time.perf_counter() - started, 3)}


def recorded(path: Path) -> set[tuple[str, int]]:
    """The (case, seed) pairs the table holds."""
    lines = path.read_text().splitlines() if path.exists() else []
    return {(row["case"], row["seed"]) for row in map(json.loads, lines)}


def record(cases: list[str], seeds: list[int], out: Path) -> None:
    """Fit and append each (case, seed) pair missing from ``out/planted.jsonl``."""
    import sweeps.job.prepare  # noqa: F401  Lightning first: it sets its loggers' levels on import
    from sweeps.verbosity import quiet_libraries

    quiet_libraries()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "planted.jsonl"
    for name in cases:
        case = CASES[name]
        for seed in seeds:
            if (name, seed) in recorded(path):
                continue
            result = fit(case, seed)
            line = {"case": name, "seed": seed, "truth": case.truth,
                    "overrides": [*BASE, *case.overrides], **result}
            with path.open("a") as handle:
                handle.write(json.dumps(line) + "\n")
            last = result["val_acc"][-1] if result["val_acc"] else float("nan")
            print(f"{name} seed {seed} ({case.truth}): {len(result['val_acc'])} epochs, "
                  f"val acc {last:.2f}, {result['seconds']:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=TABLES)
    args = parser.parse_args()
    record(args.cases, args.seeds, args.out)


if __name__ == "__main__":
    main()

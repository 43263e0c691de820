"""Record, once, the full learning curves of configs sampled from the default search space.

For each dataset the table holds, in this order: the base config (the embedded default, as
``python sweep.py`` runs it), the default portfolio's entries, then ``--configs`` configs
drawn from the default search space by Optuna's RandomSampler (seed ``--seed``) through
the sweeper's own sampling code. Every config trains ``--epochs`` epochs (the space's
``trainer.max_epochs`` is replaced) with pruning off, and each epoch's every train/val
metric, its seconds, and the config go to ``benchmarks/curves/<dataset>.jsonl``, one line per
config once it has trained.

The recording appends: run it again after a kill and it continues with the configs missing
from the table (a config cut off mid-fit trains again). Several processes may record one
table at once (each config is claimed by one of them), e.g. one per core or GPU. It runs on
the GPU when one is visible, else on the CPU (one torch thread per process unless
OMP_NUM_THREADS says more).
Seconds per epoch are as measured on the recording machine, under whatever load it had;
``benchmarks/strategy_simulator.py`` counts compute in trial-epochs.

    python benchmarks/learning_curves.py                          # both datasets, 60 x 8
    python benchmarks/learning_curves.py --datasets digits --configs 4 --epochs 2 --out /tmp/c
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import optuna  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sweeps.sweeper import first_trials  # noqa: E402
from sweeps.sweeper.asking import suggest_overrides  # noqa: E402
from sweeps.sweeper.search_space import SearchSpace, parse_search_space  # noqa: E402

#: The datasets the project ships, as overrides of the default config.
DATASETS = {"digits": [], "digits_imbalanced": ["data.imbalance=10"]}
TABLES = ROOT / "benchmarks" / "curves"


def compose_config(overrides: list[str]) -> DictConfig:
    """``conf/config.yaml`` with ``overrides``, as ``sweep.py`` composes it (hydra node kept)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def default_space(cfg: DictConfig) -> SearchSpace:
    space = cfg.hydra.sweeper.default_space
    return parse_search_space(OmegaConf.to_container(space.params),  # type: ignore[arg-type]
                              [], OmegaConf.to_container(space.conditional_params))  # type: ignore[arg-type]


def planned(dataset: list[str], configs: int, seed: int) -> list[dict[str, Any]]:
    """The table's configs, in order: role, params and overrides (without the epochs)."""
    cfg = compose_config([*dataset, "logger=none"])
    space = default_space(cfg)
    portfolio = first_trials.check_portfolio(
        {}, space, cfg, OmegaConf.to_container(cfg.hydra.sweeper.default_space.portfolio))  # type: ignore[arg-type]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    first_trials.enqueue(study, cfg, space, True, portfolio, 1 + len(portfolio))
    rows = []
    for _ in range(1 + len(portfolio) + configs):
        trial = study.ask()
        overrides = suggest_overrides(trial, space)
        kept = [o for o in overrides if not o.startswith("trainer.max_epochs=")]
        rows.append({"role": first_trials.role(trial) or "sampled", "params": trial.params,
                     "overrides": kept})
        study.tell(trial, 0.0)
    return rows


def epoch_table() -> Any:
    """A Lightning callback keeping every epoch's train/val metrics and seconds (``rows``),
    read after the epoch's validation. (Lightning loads only when recording.)"""
    import lightning.pytorch as pl

    class EpochTable(pl.Callback):
        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []
            self._started = 0.0

        def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            self._started = time.perf_counter()

        def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            row = {"epoch": trainer.current_epoch,
                   "seconds": round(time.perf_counter() - self._started, 3)}
            for key, value in trainer.callback_metrics.items():
                if key.startswith(("train/", "val/")) and value.numel() == 1:
                    row[key] = round(float(value), 6)
            self.rows.append(row)

    return EpochTable()


def record_one(dataset: list[str], overrides: list[str], epochs: int) -> dict[str, Any]:
    from sweeps.job.build import best_objective
    from sweeps.job.prepare import prepare_trial

    cfg = compose_config([*dataset, *overrides, "logger=none", f"trainer.max_epochs={epochs}",
                          "+trainer.enable_progress_bar=false"])
    with open_dict(cfg):
        del cfg["hydra"]
    table = epoch_table()
    started = time.perf_counter()
    try:
        prepared = prepare_trial(cfg, callbacks=[table])
        prepared.trainer.fit(prepared.model, datamodule=prepared.datamodule)
        best = best_objective(prepared.model) if prepared.model.best_objective.update_count \
            else None
        error = None
    except Exception as err:  # a config that cannot train is a row too (a failed trial)
        best, error = None, f"{type(err).__name__}: {err}"
    return {"epochs": table.rows, "best_objective": best, "error": error,
            "seconds": round(time.perf_counter() - started, 3)}


def _claim(path: Path) -> bool:
    """Take config ``path`` (a claim file holding the recording process's pid) for this
    process; a claim of a process that is gone is taken over."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        holder = path.read_text().strip()
        try:
            os.kill(int(holder), 0)
            return False
        except (ValueError, ProcessLookupError):
            path.unlink(missing_ok=True)
            return _claim(path)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def recorded(path: Path) -> dict[int, dict[str, Any]]:
    """The table's rows by index (processes recording together append out of order)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return {row["index"]: row for row in map(json.loads, lines)}


def record(name: str, configs: int, epochs: int, seed: int, out: Path) -> None:
    """Record the configs of ``name`` missing from its table; several processes may record
    one table together, each config claimed by one of them."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.jsonl"
    rows = planned(DATASETS[name], configs, seed)
    for index, row in enumerate(rows):
        done = recorded(path)
        if index in done:
            if done[index]["overrides"] != row["overrides"]:
                raise SystemExit(f"{path}: row {index} was recorded for another plan; record "
                                 "into a new --out folder")
            continue
        claim = out / f".{name}.{index}.claim"
        if not _claim(claim):
            continue
        result = record_one(DATASETS[name], row["overrides"], epochs)
        line = {"dataset": name, "index": index, **row, "max_epochs": epochs, **result,
                "seed": seed, "machine": f"{platform.node()} {platform.processor()}",
                "threads": os.environ.get("OMP_NUM_THREADS")}
        with path.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        claim.unlink()
        print(f"{name} {index + 1}/{len(rows)} {row['role']}: best "
              f"{result['best_objective']} in {result['seconds']:.0f} s "
              f"{result['error'] or ''}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--configs", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=TABLES)
    args = parser.parse_args()
    from sweeps.job.allocator import keep_freed_memory

    keep_freed_memory()
    for name in args.datasets:
        record(name, args.configs, args.epochs, args.seed, args.out)


if __name__ == "__main__":
    main()

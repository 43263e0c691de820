"""Orchestration growth: plateau's own cost per trial as its study grows to thousands of trials.

For each storage (a sqlite file; a throwaway PostgreSQL server, see
``benchmarks/throwaway_postgres.py``) a study of the default search space is filled with
synthetic finished trials up to each of ``--sizes`` (60 % complete, 35 % pruned, 5 % failed,
each with a real trial's params and attributes: ``benchmarks/synthetic_study.py``). At each
size a few more trials go through plateau's per-trial code with no fit in between
(``benchmarks/orchestration_steps.py``), each part timed:

* ask: the sweeper's ``Asker.next_trial`` (budget and failure checks, Optuna's ask with the
  sweep's default sampler -- TPE with plateau's settings -- the suggestions, plateau's
  attributes); (TPE) is the sampler's own share of it;
* job reads: the job loading the study and rebuilding its trial, and every read of the
  study's trials in the job (the pruner's, the diagnosis'): a job opens the storage afresh,
  so its first read loads every trial with its attributes;
* reports: ``TrialReporter``'s heartbeat, report and pruning decision (the default
  ``StagnationPruner``) for each of the default space's epochs, its reads left out;
* tell: a finished trial's attributes, the tell, the sweeper's check of the job and its
  progress line;
* MLflow: the trial's run through plateau's Lightning logger, as a job writes it (params,
  config artifact, per-epoch metrics, tags, its end), in an MLflow store on the same backend
  (it holds only the measured runs: MLflow's writes go to one run by its id).

Printed per storage: milliseconds per trial (median of the measured trials), their total and
its share of a one-minute trial, where that share passes 1 %, what grew most, and, at the
largest size, a job's read of the study against one through an open storage, and the ask
with cheaper samplers (by the setting that selects them).

Measured here (benchmarks/results/orchestration_growth.txt; 2 busy CPU cores): the job's reads
grow by about 3 ms (sqlite) to 4 ms (PostgreSQL) per finished trial and are most of the
cost: at 5,000 trials 16 s (sqlite) and 21 s (PostgreSQL) per trial, 27 % and 35 % of a
one-minute trial, against 8 ms for the same read through an open storage. TPE's sampling is
0.2-0.7 s of it; ``n_ei_candidates=8`` changes little, a random sampler saves its share.

    python benchmarks/orchestration_growth.py            # 100, 1,000, 5,000; ~30 min
    python benchmarks/orchestration_growth.py --quick    # 50 and 300 trials; ~2 min
    python benchmarks/orchestration_growth.py --storages sqlite --sizes 100 2000
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from learning_curves import compose_config, default_space  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from orchestration_steps import TimedSampler, job_trial, mlflow_run  # noqa: E402
from synthetic_study import SyntheticTrials  # noqa: E402
from throwaway_postgres import throwaway_postgres  # noqa: E402

from errors import console  # noqa: E402
from sweeps.storage import job_storage_url, load_study  # noqa: E402
from sweeps.sweeper.asking import Asker, FailureRate  # noqa: E402
from sweeps.sweeper.coordinator import StudySweeper  # noqa: E402
from sweeps.sweeper.progress import Progress  # noqa: E402
from sweeps.sweeper.search_space import SearchSpace  # noqa: E402
from sweeps.sweeper.study import create_study  # noqa: E402

#: A one-minute trial, and the share of it that counts as negligible.
TRIAL_MS, NEGLIGIBLE = 60_000.0, 0.01
#: The measured parts of a trial (``tpe`` is part of ``ask``), and their headers.
COLUMNS = {"ask": "ask", "tpe": "(TPE)", "reads": "job reads", "reports": "reports",
           "tell": "tell", "mlflow": "MLflow"}


def sweep_config(storage: str, tracking_uri: str, study_name: str) -> DictConfig:
    """The composed default sweep (``hydra.mode=MULTIRUN``), Hydra's runtime info set."""
    return compose_config(["hydra.mode=MULTIRUN", f"hydra.sweeper.storage={storage}",
                           f"hydra.sweeper.study_name={study_name}",
                           f"logger.tracking_uri={tracking_uri}"])


def job_config(cfg: DictConfig) -> DictConfig:
    """A job's config: the sweep's without its ``hydra`` node."""
    return OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"])


def open_study(cfg: DictConfig) -> tuple[optuna.Study, SearchSpace, Asker, TimedSampler]:
    """The study as the sweeper creates it (its default sampler timed) and its asker."""
    settings = instantiate(cfg.hydra.sweeper, _target_=f"{StudySweeper.__module__}."
                           f"{StudySweeper.__name__}").settings
    space = default_space(cfg)
    study, _ = create_study(settings, space, str(settings.storage))
    study.sampler = timed = TimedSampler(study.sampler)
    asker = Asker(study, space, 10**9, FailureRate(1.0, time.time()), cfg)
    return study, space, asker, timed


def measure(study: optuna.Study, asker: Asker, sampler: TimedSampler, cfg: DictConfig,
            repeats: int) -> dict[str, float]:
    """Median milliseconds per trial of each column over ``repeats`` trials."""
    job_cfg, epochs = job_config(cfg), int(cfg.hydra.sweeper.default_space.params[
        "trainer.max_epochs"])
    progress = Progress(study, 10**9, time.time())
    samples: dict[str, list[float]] = {name: [] for name in COLUMNS}
    for _ in range(repeats):
        sampler.seconds = 0.0
        started = time.perf_counter()
        asked = asker.next_trial()
        assert asked is not None
        samples["ask"].append(1000 * (time.perf_counter() - started))
        samples["tpe"].append(1000 * sampler.seconds)
        trial, _ = asked
        job = job_trial(cfg, study, trial, progress, epochs)
        samples["reads"].append(job.reads_ms)
        samples["reports"].append(job.reports_ms)
        samples["tell"].append(job.tell_ms)
        samples["mlflow"].append(mlflow_run(job_cfg, study.study_name, trial, job))
    return {name: statistics.median(values) for name, values in samples.items()}


def total(row: dict[str, float]) -> float:
    return sum(ms for name, ms in row.items() if name != "tpe")


def print_table(name: str, rows: dict[int, dict[str, float]]) -> None:
    console.print(f"\n{name}: ms per trial (median)")
    console.print(f"{'finished':>9} " + " ".join(f"{h:>9}" for h in COLUMNS.values())
                  + f" {'total':>9} {'of 1 min':>9}")
    for size, row in rows.items():
        console.print(f"{size:>9,} " + " ".join(f"{row[c]:>9.0f}" for c in COLUMNS)
                      + f" {total(row):>9.0f} {total(row) / TRIAL_MS:>9.2%}")


def crossing(rows: dict[int, dict[str, float]]) -> str:
    """Where the total passes :data:`NEGLIGIBLE` of a one-minute trial (interpolated
    linearly between the measured sizes)."""
    limit, sizes = NEGLIGIBLE * TRIAL_MS, list(rows)
    if total(rows[sizes[0]]) > limit:
        return f"already above {NEGLIGIBLE:.0%} of a one-minute trial at {sizes[0]:,} trials"
    for low, high in zip(sizes, sizes[1:], strict=False):
        a, b = total(rows[low]), total(rows[high])
        if b > limit:
            at = low + (high - low) * (limit - a) / (b - a)
            return (f"passes {NEGLIGIBLE:.0%} of a one-minute trial ({limit:.0f} ms) at about "
                    f"{at:,.0f} finished trials")
    return f"below {NEGLIGIBLE:.0%} of a one-minute trial up to {sizes[-1]:,} trials"


def compare_reads(cfg: DictConfig, study: optuna.Study) -> tuple[float, float]:
    """Milliseconds to read the complete trials as a job does (a storage opened afresh) and
    through the sweeper's open storage (Optuna's cache of finished trials warm)."""
    sweeper = cfg.hydra.sweeper
    started = time.perf_counter()
    fresh = load_study(job_storage_url(sweeper.storage), str(sweeper.study_name))
    fresh.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    cold = 1000 * (time.perf_counter() - started)
    started = time.perf_counter()
    study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return cold, 1000 * (time.perf_counter() - started)


def verdict(rows: dict[int, dict[str, float]], asks: dict[str, float],
            reads: tuple[float, float]) -> None:
    """Where it stops being negligible, what grows, and what would save how much."""
    sizes = list(rows)
    first, last = rows[sizes[0]], rows[sizes[-1]]
    grew = max((c for c in COLUMNS if c != "tpe"), key=lambda c: last[c] - first[c])
    console.print(f"{crossing(rows)}. At {sizes[-1]:,}: {total(last):,.0f} ms per trial "
                  f"({total(last) / TRIAL_MS:.1%}); it grew most in '{COLUMNS[grew]}' "
                  f"({first[grew]:,.0f} -> {last[grew]:,.0f} ms).")
    console.print(f"  job reads: each job opens the study afresh, and its first read loads "
                  f"every trial: {reads[0]:,.0f} ms; the same read through an open storage "
                  f"(the sweeper's, cache warm) {reads[1]:,.0f} ms. No sampler setting "
                  "changes it.")
    (_, default), *others = asks.items()
    for label, ask in others:
        console.print(f"  sampling: {label}: the ask {ask:,.0f} ms against {default:,.0f} ms, "
                      f"{(default - ask) / total(last):.0%} of the trial's orchestration saved")


def compare_samplers(study: optuna.Study, asker: Asker, timed: TimedSampler,
                     repeats: int) -> dict[str, float]:
    """The ask at the study's current size with cheaper samplers: median ms by label."""
    default = timed.inner
    candidates = {
        "the default TPE (n_ei_candidates=24)": default,
        "+hydra.sweeper.sampler.n_ei_candidates=8": optuna.samplers.TPESampler(
            n_startup_trials=5, multivariate=True, group=True, constant_liar=True,
            n_ei_candidates=8, seed=1),
        "hydra/sweeper/sampler=random": optuna.samplers.RandomSampler(seed=1),
    }
    size = len(study.get_trials(deepcopy=False))
    console.print(f"the ask with other samplers at {size:,} trials (ms, median of {repeats}):")
    asks = {}
    for label, sampler in candidates.items():
        timed.inner = sampler
        took, sampling = [], []
        for _ in range(repeats):
            timed.seconds = 0.0
            started = time.perf_counter()
            asked = asker.next_trial()
            took.append(1000 * (time.perf_counter() - started))
            sampling.append(1000 * timed.seconds)
            assert asked is not None
            study.tell(asked[0], 0.5)
        asks[label] = statistics.median(took)
        console.print(f"  {label:<42} ask {asks[label]:7,.0f}   of it sampling "
                      f"{statistics.median(sampling):7,.0f}")
    timed.inner = default
    return asks


@contextmanager
def storages(names: list[str], folder: Path) -> Iterator[dict[str, tuple[str, str]]]:
    """(study storage URL, MLflow tracking URI) of each storage by name."""
    with ExitStack() as stack:
        found = {}
        for name in names:
            if name == "sqlite":
                found[name] = (f"sqlite:///{folder / 'study.db'}",
                               f"sqlite:///{folder / 'mlflow.db'}")
            else:
                urls = stack.enter_context(throwaway_postgres(databases=["mlflow"]))
                found[name] = (urls["postgres"], urls["mlflow"])
        yield found


def run_storage(name: str, storage: str, tracking_uri: str, sizes: list[int],
                repeats: dict[int, int]) -> None:
    cfg = sweep_config(storage, tracking_uri, f"growth-{name}")
    study, space, asker, timed = open_study(cfg)
    epochs = int(cfg.hydra.sweeper.default_space.params["trainer.max_epochs"])
    synthetic = SyntheticTrials(space, epochs)
    rows: dict[int, dict[str, float]] = {}
    for size in sizes:
        seconds = synthetic.fill(study, size - len(study.get_trials(deepcopy=False)))
        console.print(f"{name}: filled to {size:,} trials ({seconds:.0f} s)")
        if not rows:  # untimed: MLflow creates its tables, the experiment, the first run
            measure(study, asker, timed, cfg, 1)
        rows[size] = measure(study, asker, timed, cfg, repeats[size])
    print_table(name, rows)
    asks = compare_samplers(study, asker, timed, min(repeats.values()))
    verdict(rows, asks, compare_reads(cfg, study))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--storages", nargs="+", default=["sqlite", "postgres"],
                        choices=["sqlite", "postgres"])
    parser.add_argument("--quick", action="store_true", help="50 and 300 trials, 2 each")
    args = parser.parse_args()
    sizes = [50, 300] if args.quick else sorted(args.sizes)
    # fewer trials where each costs seconds
    repeats = {size: 2 if args.quick else max(3, min(10, 20_000 // size)) for size in sizes}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import mlflow  # noqa: F401  (it sets its loggers' levels when imported)

    for noisy in ("alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "Experiment ... not found. Creating it.": once per storage, expected here
    logging.getLogger("lightning.pytorch.loggers.mlflow").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp, storages(args.storages, Path(tmp)) as urls:
        os.chdir(tmp)  # MLflow's artifacts go below the folder the sweep ran from
        for name, (storage, tracking_uri) in urls.items():
            run_storage(name, storage, tracking_uri, sizes, repeats)


if __name__ == "__main__":
    main()

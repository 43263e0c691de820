"""A sweep's progress on the console: one line per finished trial, and a live status line.

Each finished trial prints where the study stands: the trial's number (Optuna's, the one
MLflow and optuna-dashboard show), its place in the budget, state and value, the best so far
and its trial, the counts by state, the elapsed time and an estimate of the time left. While
trials run, a terminal also shows a status line with the epoch each running trial is at.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from time import time

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from errors import console
from sweeps import ledger
from sweeps.pruning import ATTR_MAX_EPOCHS

#: Seconds between two refreshes of the live status line (each reads the running trials).
REFRESH_S = 2.0


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Counts a sweep's trials and prints its progress.

    Args:
        study: the sweep's study (other workers' trials count too).
        n_trials: the study's budget of finished trials.
        started: when this sweep started (``time.time()``).
    """

    def __init__(self, study: optuna.Study, n_trials: int, started: float) -> None:
        self._study = study
        self._n_trials = n_trials
        self._started = started
        self._done_before = sum(map(ledger.spends_budget, study.get_trials(deepcopy=False)))
        self._lock = threading.Lock()

    def _best(self, trials: list[FrozenTrial]) -> FrozenTrial | None:
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if not complete:
            return None
        pick = max if self._study.direction == StudyDirection.MAXIMIZE else min
        return pick(complete, key=lambda t: float(t.value))  # type: ignore[arg-type]

    def standing(self, trials: list[FrozenTrial]) -> str:
        """``3/8 finished · best 0.9944 (trial 2) · 2 complete, 1 pruned, 0 failed · 3m05s,
        ETA 4m10s``"""
        finished = [t for t in trials if ledger.spends_budget(t)]
        counts = Counter(t.state for t in finished)
        best = self._best(trials)
        elapsed = time() - self._started
        reruns = sum(ledger.is_rerun(t) and ledger.is_finished(t) for t in trials)
        parts = [f"{len(finished)}/{self._n_trials} finished"
                 + (f" + {reruns} reruns" if reruns else ""),
                 f"best {best.value:.4f} (trial {best.number})" if best else "no best yet",
                 f"{counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
                 f"{counts[TrialState.FAIL]} failed"]
        done_here = len(finished) - self._done_before
        left = self._n_trials - len(finished)
        timing = f"{duration(elapsed)} elapsed"
        if done_here > 0 and left > 0:
            timing += f", ETA {duration(elapsed / done_here * left)}"
        return " · ".join([*parts, timing])

    def finished(self, number: int) -> None:
        """Print the line of trial ``number``, which has just ended."""
        trials = self._study.get_trials(deepcopy=False)
        trial = next(t for t in trials if t.number == number)
        value = ledger.shown_value(trial)
        shown = "" if value is None else f" {value:.4f}"
        epochs = len(trial.intermediate_values)
        planned = trial.user_attrs.get(ATTR_MAX_EPOCHS)
        ran = f"{epochs}/{planned} epochs" if planned else f"{epochs} epochs"
        role = trial.user_attrs.get(ledger.ATTR_ROLE)
        if ledger.is_rerun(trial):
            role = (f"rerun of trial {trial.user_attrs.get(ledger.ATTR_RERUN_OF)}, seed "
                    f"{trial.user_attrs.get(ledger.ATTR_RERUN_SEED)}")
        label = f"trial {number}" + (f" ({role})" if role else "")
        with self._lock:
            console.print(f"{label} {trial.state.name}{shown}, {ran} · "
                          f"{self.standing(trials)}")

    def _running(self, trials: list[FrozenTrial], numbers: set[int]) -> str:
        running = []
        for trial in trials:
            if trial.number in numbers and trial.state == TrialState.RUNNING:
                planned = trial.user_attrs.get(ATTR_MAX_EPOCHS)
                epoch = len(trial.intermediate_values)
                running.append(f"trial {trial.number} epoch {epoch}"
                               + (f"/{planned}" if planned else ""))
        return ", ".join(running) or "starting a trial"

    @contextmanager
    def live(self, in_flight: set[int]) -> Iterator[None]:
        """A status line below the trial lines, refreshed every :data:`REFRESH_S`, while
        ``in_flight`` (trial numbers, updated by the caller) runs; only on a terminal."""
        if not console.is_terminal:
            yield
            return
        stop = threading.Event()
        with console.status("starting") as status:
            def refresh() -> None:
                while not stop.wait(REFRESH_S):
                    try:
                        trials = self._study.get_trials(deepcopy=False)
                        status.update(f"{self._running(trials, set(in_flight))} · "
                                      f"{self.standing(trials)}")
                    except Exception:  # a busy storage: the next refresh tries again
                        continue

            thread = threading.Thread(target=refresh, name="plateau-progress", daemon=True)
            thread.start()
            try:
                yield
            finally:
                stop.set()
                thread.join(REFRESH_S + 1)

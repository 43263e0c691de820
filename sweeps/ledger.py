"""The study's ledger: what plateau writes on trials, how the budget is counted, and every
use of Optuna's private API.

Trial user attributes (``ATTR_*``) are plateau's bookkeeping, read by the job, the sweeper,
the MLflow study run and the report alike. The budget states (:func:`is_finished`,
:func:`claims_budget`, :func:`within_budget`) decide which trials count toward ``n_trials``;
:mod:`sweeps.ending` ends trials by these rules, each exactly once.

Optuna has no public way to rebuild a live trial in another process, to suggest from a
ready-made distribution, or to write a trial's attributes by id; plateau needs all three.
Those private names (``Study._storage``, ``Trial._trial_id``, ``Trial._suggest``, the
``fixed_params`` system attribute, ``Trial(study, trial_id)``) are touched here and nowhere
else, each behind one function tested against the installed Optuna (tests/test_ledger.py),
so an Optuna release that changes them breaks this module and its tests, loudly.

Imports Optuna and the standard library only.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, Trial, TrialState

#: Trial user attributes written by plateau.
ATTR_ERROR = "error"
ATTR_PRUNE_REASON = "prune_reason"
ATTR_STOPPED_EPOCH = "stopped_epoch"
ATTR_INTERRUPTED = "interrupted"
#: Why the whole sweep must stop after this trial (a fault of the machine, not of the trial,
#: e.g. a full disk): the trial is abandoned like an interrupted one, the sweeper stops.
ATTR_HALT = "halts_sweep"
#: Asked by one worker while others had already claimed the rest of the budget: never run.
ATTR_WITHDRAWN = "withdrawn"
ATTR_HEARTBEAT = "heartbeat"
#: The process that runs the trial (:func:`sweeps.liveness.owner_id`): the sweeper that asked
#: it, then its job.
ATTR_OWNER = "owner"
#: The job's own process (:func:`sweeps.liveness.owner_id`), written as the job starts: a
#: trial that has it ran, and its death is a crash, not a launch that failed.
ATTR_JOB = "job"
#: Times the trial's params were launched again after their process died (see
#: :func:`sweeps.ending.abandon`), carried by each re-queued trial.
ATTR_RELAUNCHES = "relaunches"
ATTR_RUN_ID = "mlflow_run_id"
ATTR_OVERRIDES = "overrides"
ATTR_OBJECTIVE = "best_objective"
#: Seconds the trial spent in ``trainer.fit``: the rest of its time is plateau's and MLflow's.
ATTR_FIT_SECONDS = "fit_seconds"
ATTR_DIAGNOSIS = "diagnosis"
ATTR_DIAGNOSIS_REASON = "diagnosis_reason"
#: The per-epoch train/val loss and accuracy the diagnosis read (``doctor.diagnosis.Curves``),
#: so the study report can diagnose every trial again against the study's final field.
ATTR_CURVES = "curves"
#: The last validation confusion matrix (rows: true class) and the class names, for the
#: study report's per-class recall.
ATTR_CONFUSION = "val_confusion"
ATTR_CLASSES = "classes"
#: Why the trial was queued: ``base`` (the config as given), ``portfolio:<name>``; unset when
#: sampled (see :mod:`sweeps.sweeper.first_trials`).
ATTR_ROLE = "role"
#: :data:`ATTR_ROLE` of the base trial, which no pruner or stopping rule ends early.
ROLE_BASE = "base"
#: :data:`ATTR_ROLE` of a top-k rerun (:mod:`sweeps.sweeper.reruns`): a COMPLETE search
#: trial's config run again with another seed after the search. Counted outside ``n_trials``
#: and, like the base trial, never pruned nor stopped early.
ROLE_RERUN = "rerun"
#: The number of the search trial a rerun repeats, and the ``seed`` it runs with.
ATTR_RERUN_OF = "rerun_of"
ATTR_RERUN_SEED = "rerun_seed"
#: Attributes a re-queued trial keeps (beside its role): what makes a rerun that rerun.
CARRIED = (ATTR_RERUN_OF, ATTR_RERUN_SEED)
#: Study user attribute: the reruns chosen once the search finished (see
#: :mod:`sweeps.sweeper.reruns`), so a resume runs the same ones.
STUDY_RERUN_PLAN = "rerun_plan"


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Writes to the study that Ctrl-C does not cut: it is held until the block ends, then
    raised as ``KeyboardInterrupt`` (over any error of the block).

    An interrupt that lands inside SQLAlchemy's commit or connection handling can leave a
    sqlite write transaction open, and the process's next write (marking the trial
    interrupted) then waits out the lock timeout on its own lock and fails. Signals reach
    the main thread only; elsewhere, or where someone else handles SIGINT, this does nothing.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if held:
            raise KeyboardInterrupt  # noqa: B012 (Ctrl-C wins over the block's own error)


# -- Optuna's private API: used here only ------------------------------------------------

def trial_id(trial: Trial | FrozenTrial) -> int:
    """The storage's id of ``trial`` (unique across studies; its number is per study)."""
    return int(trial._trial_id)


def study_id(study: optuna.Study) -> int:
    """The storage's id of ``study``."""
    return int(study._study_id)


def trial_id_of(study: optuna.Study, number: int) -> int:
    """The storage's id of trial ``number`` of ``study``."""
    return int(study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number))


def frozen_trial(study: optuna.Study, trial_id: int) -> FrozenTrial:
    """``trial_id`` as the storage holds it now (another process may have told it)."""
    return study._storage.get_trial(trial_id)


def set_trial_attr(study: optuna.Study, trial_id: int, key: str, value: Any) -> None:
    """Set a user attribute of the running trial ``trial_id`` without a :class:`Trial`."""
    study._storage.set_trial_user_attr(trial_id, key, value)


def live_trial(study: optuna.Study, trial_id: int) -> Trial:
    """The running trial ``trial_id`` of ``study``, rebuilt in this process: ``report``,
    ``should_prune`` and ``set_user_attr`` on it reach the storage as the asker's would."""
    return Trial(study, trial_id)


def suggest(trial: Trial, name: str, distribution: BaseDistribution) -> Any:
    """Sample ``name`` from a ready-made ``distribution`` (what ``suggest_*`` build); a
    param of the queued trial (``enqueue_trial``) keeps its queued value."""
    return trial._suggest(name, distribution)


def queued_params(trial: FrozenTrial) -> dict[str, Any]:
    """The params ``trial`` took from the queue (:meth:`optuna.Study.enqueue_trial`)."""
    return dict(trial.system_attrs.get("fixed_params") or {})


def open_storage_of(study: optuna.Study) -> BaseStorage:
    """The storage object ``study`` reads and writes through (with its cache)."""
    return study._storage


def storage_file(study: optuna.Study) -> Path | None:
    """The file ``study`` is stored in (sqlite, journal); None for a server."""
    backend = getattr(study._storage, "_backend", study._storage)
    url = getattr(backend, "url", None)
    if isinstance(url, str):
        return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None
    path = getattr(backend, "_file_path", None)
    return Path(path) if isinstance(path, str) else None


def storage_engine(study: optuna.Study) -> Any:
    """The SQLAlchemy engine of ``study``'s database server storage; None for a file."""
    backend = getattr(study._storage, "_backend", study._storage)
    return getattr(backend, "engine", None) if storage_file(study) is None else None


def tell_pruned(study: optuna.Study, trial_id: int, value: float | list[float] | None) -> None:
    """Tell the running trial ``trial_id`` PRUNED with ``value``, its best objective so far
    (one value per objective in a multi-objective study).

    ``Study.tell`` refuses a value with PRUNED and stores the last intermediate value
    instead: the monitored metric (a negated loss in a maximizing study), which Optuna's
    tools and the dashboard would then show as the trial's objective.
    """
    frozen = frozen_trial(study, trial_id)
    values = None if value is None else [float(v) for v in
                                          (value if isinstance(value, list) else [value])]
    try:
        study.sampler.after_trial(study, frozen, TrialState.PRUNED, values)
    finally:
        study._storage.set_trial_state_values(trial_id, TrialState.PRUNED, values)


# -- the budget ----------------------------------------------------------------------------

def is_finished(trial: FrozenTrial) -> bool:
    """Ended on its own (counted in the study report and the failure rate): COMPLETE,
    PRUNED, or FAIL not caused by an interruption nor a withdrawal (see
    :mod:`sweeps.ending`). Toward ``n_trials`` only when not a rerun (:func:`spends_budget`)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not (
        trial.user_attrs.get(ATTR_INTERRUPTED, False)
        or trial.user_attrs.get(ATTR_WITHDRAWN, False))


def shown_value(trial: FrozenTrial) -> float | None:
    """The trial's objective as tables and progress lines show it: the final objective the
    job stored (:data:`ATTR_OBJECTIVE`), else the study's value (a pruned trial's best so
    far); None when it has neither."""
    value = trial.user_attrs.get(ATTR_OBJECTIVE)
    if value is None and trial.values is not None:
        value = trial.values[0]  # the first objective of a multi-objective study
    return None if value is None else float(value)


def is_rerun(trial: FrozenTrial | Trial) -> bool:
    """A top-k rerun (:data:`ROLE_RERUN`): outside the ``n_trials`` budget."""
    return trial.user_attrs.get(ATTR_ROLE) == ROLE_RERUN


def spends_budget(trial: FrozenTrial) -> bool:
    """Counts toward ``n_trials``: finished (:func:`is_finished`) and not a rerun."""
    return is_finished(trial) and not is_rerun(trial)


def claims_budget(trial: FrozenTrial) -> bool:
    """Holds one unit of ``n_trials``: finished (:func:`is_finished`) or running, and not a
    rerun (reruns are counted apart)."""
    return not is_rerun(trial) and (trial.state == TrialState.RUNNING or is_finished(trial))


def within_budget(trials: Sequence[FrozenTrial], trial_number: int, n_trials: int) -> bool:
    """Whether trial ``trial_number`` of the study's ``trials`` fits in ``n_trials``.

    Workers sharing a study check the budget, then ask; two of them can ask for the last
    unit at once. Trial numbers are handed out in order by the storage, so the earlier
    number keeps the unit and the later one must be withdrawn.
    """
    before = [t for t in trials if t.number < trial_number and claims_budget(t)]
    return len(before) < n_trials


def carried(trial: FrozenTrial) -> dict[str, Any]:
    """The :data:`CARRIED` attributes ``trial`` has, for its re-queued successor."""
    return {key: trial.user_attrs[key] for key in CARRIED if key in trial.user_attrs}


def enqueue(study: optuna.Study, params: dict[str, Any], role: str = "",
            relaunches: int = 0, extra: dict[str, Any] | None = None) -> None:
    """Queue ``params`` for the next trial asked, with its :data:`ATTR_ROLE` and
    :data:`ATTR_RELAUNCHES` when given, and the ``extra`` user attributes."""
    attrs: dict[str, Any] = {ATTR_ROLE: role} if role else {}
    attrs |= extra or {}
    if relaunches:
        attrs[ATTR_RELAUNCHES] = relaunches
    study.enqueue_trial(params, user_attrs=attrs or None, skip_if_exists=False)

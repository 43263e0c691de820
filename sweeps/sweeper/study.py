"""The study: created or joined in its storage, and cleared of trials a dead sweep left."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import time
import warnings
from collections.abc import Collection, Iterator

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from errors import PlateauError, one_line
from sweeps import ending, ledger, liveness
from sweeps.metrics import is_negated
from sweeps.objectives import MultiObjectiveSampler, Objectives
from sweeps.report.study_run import StudyRun
from sweeps.storage import mask_password, open_storage, storage_file
from sweeps.sweeper.search_space import SearchSpace, grid_choices
from sweeps.sweeper.settings import SweepSettings

log = logging.getLogger(__name__)

#: SQLAlchemy's "(Background on this error at: https://sqlalche.me/...)" tail of its errors.
_SQLALCHEMY_LINK = re.compile(r"\s*\(Background on this error at: [^)]*\)")


def create_study(settings: SweepSettings, space: SearchSpace,
                 url: str) -> tuple[optuna.Study, bool]:
    """The study, and whether this worker created it (other workers load it).

    A grid sampler gets its grid from ``space``; a grid smaller than ``n_trials`` lowers
    ``settings.n_trials`` to its size.
    """
    sampler = settings.sampler
    if isinstance(sampler, functools.partial):  # GridSampler needs the grid
        grid = grid_choices(space)
        sampler = sampler(grid)
        size = math.prod(len(values) for values in grid.values())
        if size < settings.n_trials:
            log.info("grid has %d points: n_trials lowered from %d", size, settings.n_trials)
            settings.n_trials = size
    storage = _open_storage(url)
    directions = [StudyDirection[d.upper()] for d in settings.directions]
    if len(directions) > 1 and not isinstance(sampler, optuna.samplers.GridSampler):
        sampler = MultiObjectiveSampler(sampler)
    options = dict(study_name=settings.study_name, storage=storage, sampler=sampler,
                   pruner=settings.pruner)
    try:
        with _storage_errors(url):
            return optuna.create_study(**options, directions=directions), True
    except optuna.exceptions.DuplicatedStudyError:
        with _storage_errors(url):
            study = optuna.load_study(**options)
    if study.directions != directions:
        stored = ", ".join(d.name.lower() for d in study.directions)
        raise PlateauError(f"study '{settings.study_name}' in {mask_password(url)} is to "
                           f"{stored}, this sweep to {', '.join(settings.directions)}: use "
                           "another hydra.sweeper.study_name, or the study's objectives "
                           "and directions")
    return study, False


#: What a storage that cannot be reached or opened raises (SQLAlchemy's errors, a driver
#: that is not installed, a journal file's folder that cannot be written, Optuna's own).
_STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    SQLAlchemyError, optuna.exceptions.StorageInternalError, OSError, ImportError)


@contextlib.contextmanager
def _storage_errors(url: str) -> Iterator[None]:
    """Turn a storage that cannot be opened into one line naming it (password masked)."""
    try:
        yield
    except _STORAGE_ERRORS as err:
        first = one_line(_SQLALCHEMY_LINK.sub("", mask_password(str(err))), 200)
        raise PlateauError(f"cannot open the study storage {mask_password(url)} ({first}); "
                           "check hydra.sweeper.storage and that its server runs") from err


def _open_storage(url: str) -> BaseStorage:
    with _storage_errors(url):
        return open_storage(url)


def study_exists(url: str, study_name: str) -> bool:
    """Whether the storage at ``url`` holds ``study_name``; a storage file that is not there
    yet is not created (a sweep that stops before its study leaves nothing behind)."""
    path = storage_file(url)
    if path is not None and not path.exists():
        return False
    try:
        _open_storage(url).get_study_id_from_name(study_name)
    except KeyError:
        return False
    return True


def label_for_viewers(study: optuna.Study, objectives: Objectives, monitor: str) -> None:
    """Say what the study's numbers are, for optuna-dashboard and any tool reading the study:
    the objectives' names, and what the intermediate values hold (the user attributes
    ``objective``, ``objectives`` and ``intermediate_values``, and the dashboard's note)."""
    metric = objectives.first
    direction = study.directions[0]
    negated = is_negated(monitor, direction)
    steps = (f"{monitor} after each epoch (step 0 is the first epoch)"
             + (", negated so that higher is better like the objective: every pruner then "
                "compares the right way" if negated else ""))
    study.set_user_attr("objective", metric)
    study.set_user_attr("objectives", list(objectives.metrics))
    study.set_user_attr("intermediate_values", steps)
    note = (f"Objective: the best {metric} over a trial's epochs ({direction.name.lower()})."
            f" A pruned or early-stopped trial's value is its best {metric} before it stopped."
            f"\n\nIntermediate values: {steps}.")
    if objectives.multi:
        note += (f"\n\nObjectives: {objectives.shown()}. The others are read at the epoch "
                 f"where {metric} is best (model/* metrics: the trained model's serving cost). "
                 f"The pruner judges {metric} only.")
    try:
        import optuna_dashboard
    except ImportError:  # the dashboard is optional to the sweep itself
        return
    with warnings.catch_warnings():  # Optuna marks metric names experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna_dashboard.set_objective_names(study, list(objectives.metrics))
    optuna_dashboard.save_note(study, note)


def recover_stale(study: optuna.Study, run: StudyRun, heartbeat_timeout_s: float,
                  own: Collection[int] = ()) -> None:
    """Fail trials left RUNNING by a dead sweep or job (or the ``own`` trial ids, this
    worker's trials cut off by Ctrl-C) and queue their params again.

    A trial is dead when its owner process is gone (same host, pid and start time), or, on
    another host or before it has an owner, when its heartbeat is older than
    ``heartbeat_timeout_s``. Workers recovering the same trial at once end it once
    (:func:`sweeps.ending.abandon`): the others skip it. A trial whose job had started and
    died counts toward its re-launches (:data:`sweeps.ending.MAX_RELAUNCHES`).
    """
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = ledger.trial_id(trial)
        mine = trial_id in own
        owner = str(trial.user_attrs.get(ledger.ATTR_OWNER, ""))
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        beat = float(trial.user_attrs.get(ledger.ATTR_HEARTBEAT, started))
        if not mine and not liveness.is_dead(owner, beat, heartbeat_timeout_s, now):
            continue
        died = None
        if not mine and ledger.ATTR_JOB in trial.user_attrs:
            died = (f"its process {owner} died" if liveness.owner_alive(owner) is False else
                    f"its heartbeat stopped {now - beat:.0f} s before another worker started")
        with ledger.uninterrupted():
            if not ending.abandon(study, trial_id, died):
                continue  # another worker recovered it, or its job has just ended it
            ended = ledger.frozen_trial(study, trial_id)
            run.end_child(ended)
        if ended.user_attrs.get(ledger.ATTR_INTERRUPTED):
            log.warning("trial %d was cut off by a stopped sweep: marked failed, its params "
                        "queued again", trial.number)
        else:
            log.warning("trial %d failed: %s", trial.number,
                        ended.user_attrs.get(ledger.ATTR_ERROR, ""))

"""The study: created or joined in its storage, and cleared of trials a dead sweep left."""

from __future__ import annotations

import functools
import logging
import math
import re
import time
import warnings
from collections.abc import Collection

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from errors import PlateauError, one_line
from sweeps import ledger
from sweeps.metrics import is_negated
from sweeps.report.study_run import StudyRun
from sweeps.storage import mask_password, open_storage
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
    try:
        options = dict(study_name=settings.study_name, storage=open_storage(url),
                       sampler=sampler, pruner=settings.pruner,
                       direction=StudyDirection[settings.direction.upper()])
        try:
            return optuna.create_study(**options), True
        except optuna.exceptions.DuplicatedStudyError:
            return optuna.create_study(**options, load_if_exists=True), False
    except ValueError as err:  # e.g. an existing study with another direction
        raise PlateauError(f"study '{settings.study_name}' in {mask_password(url)}: {err}; "
                           "use another hydra.sweeper.study_name") from err
    except Exception as err:
        first = one_line(_SQLALCHEMY_LINK.sub("", mask_password(str(err))), 200)
        raise PlateauError(f"cannot open the study storage {mask_password(url)} ({first}); "
                           "check hydra.sweeper.storage and that its server runs") from err


def label_for_viewers(study: optuna.Study, metric: str, monitor: str) -> None:
    """Say what the study's numbers are, for optuna-dashboard and any tool reading the study:
    the objective's name, and what the intermediate values hold (the user attributes
    ``objective`` and ``intermediate_values``, and the dashboard's note)."""
    negated = is_negated(monitor, study.direction)
    steps = (f"{monitor} after each epoch (step 0 is the first epoch)"
             + (", negated so that higher is better like the objective: every pruner then "
                "compares the right way" if negated else ""))
    study.set_user_attr("objective", metric)
    study.set_user_attr("intermediate_values", steps)
    note = (f"Objective: the best {metric} over a trial's epochs ({study.direction.name.lower()})."
            f" A pruned or early-stopped trial's value is its best {metric} before it stopped."
            f"\n\nIntermediate values: {steps}.")
    try:
        import optuna_dashboard
    except ImportError:  # the dashboard is optional to the sweep itself
        return
    with warnings.catch_warnings():  # Optuna marks metric names experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna_dashboard.set_objective_names(study, [metric])
    optuna_dashboard.save_note(study, note)


def recover_stale(study: optuna.Study, run: StudyRun, heartbeat_timeout_s: float,
                  own: Collection[int] = ()) -> None:
    """Fail trials left RUNNING by a dead sweep (or the ``own`` trial ids, this worker's
    trials cut off by Ctrl-C) and queue their params again.

    A trial is dead when its owner process is gone (same host), or, on another host or
    before it has an owner, when its heartbeat is older than ``heartbeat_timeout_s``.
    """
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(ledger.ATTR_OWNER, "")
        # no owner yet: another worker is between asking and suggesting (or died there)
        alive = ledger.owner_alive(owner) if owner else None
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        beat = trial.user_attrs.get(ledger.ATTR_HEARTBEAT, started)
        stale = not alive and (alive is not None or now - beat >= heartbeat_timeout_s)
        if not stale and ledger.trial_id(trial) not in own:
            continue
        with ledger.uninterrupted():
            ledger.abandon(study, ledger.trial_id(trial))
            run.end_child(trial, "KILLED")
        log.warning("trial %d was cut off by a stopped sweep: marked failed, its params "
                    "queued again", trial.number)

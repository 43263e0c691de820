"""Ending a trial exactly once, whoever ends it.

A running trial is ended by its job (COMPLETE, PRUNED, FAIL), by its sweeper (a job that
died without telling), by any worker's stale-trial recovery, or by the worker that asked it
past the budget. These race: several workers requeued together all find the same stale
trial, a job's tell meets a recovery. Every ending here checks that the trial still runs
and writes its end while no other plateau process can end the same trial: on a sqlite or
journal file under an ``flock`` of that file (pysqlite opens its write transaction only at
the write, so Optuna's own check-then-write is not atomic there), on PostgreSQL under an
advisory lock on the trial's id, elsewhere under Optuna's row lock. The loser writes
nothing, returns False and moves on; only the winner queues a re-run.

A trial whose process died (OOM-killed, segfault, a time-out) is launched again at most
:data:`MAX_RELAUNCHES` times: its next death is a FAIL with the cause, counted like any
failure (``max_failure_rate``), so a trial that always crashes cannot halt every re-run.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from sweeps import ledger

log = logging.getLogger(__name__)

#: Launches of a trial's params after their process died, before its death is a FAIL.
MAX_RELAUNCHES = 2


@contextlib.contextmanager
def _file_lock(study: optuna.Study) -> Iterator[None]:
    """An ``flock`` of ``study``'s sqlite or journal file for the block (nothing for a
    database server)."""
    path = ledger.storage_file(study)
    if path is None:
        yield
        return
    with open(path, "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def taking_trial(study: optuna.Study) -> Iterator[None]:
    """Around ``study.ask()`` and the owner's mark: on a sqlite file no other plateau process
    takes a trial meanwhile. Optuna takes a queued trial by checking it still waits, then
    marking it running, under ``SELECT ... FOR UPDATE``, which sqlite ignores: two workers
    could both take the same queued trial and run it twice. (A server has the row lock; the
    journal file replays its log under its own lock.)"""
    with _file_lock(study):
        yield


@contextlib.contextmanager
def _exclusive(study: optuna.Study, trial_id: int) -> Iterator[None]:
    """No other plateau process ends trial ``trial_id`` of ``study`` inside this block."""
    with _one_process(study, 7368, trial_id):
        yield


@contextlib.contextmanager
def _one_process(study: optuna.Study, space: int, key: int) -> Iterator[None]:
    """One plateau process at a time in blocks of the same ``(space, key)``: a file
    storage's ``flock`` (whatever the key), PostgreSQL's advisory lock, or, on another
    server, nothing more than Optuna's ``SELECT ... FOR UPDATE`` (the second writer of a
    trial gets UpdateFinishedTrialError)."""
    if ledger.storage_file(study) is not None:
        with _file_lock(study):
            yield
        return
    engine = ledger.storage_engine(study)
    if engine is None or engine.dialect.name != "postgresql":
        yield
        return
    with _advisory_lock(engine, space, key):
        yield


@contextlib.contextmanager
def _advisory_lock(engine: Any, space: int, key: int) -> Iterator[None]:
    """PostgreSQL's advisory lock ``(space, key)`` for the block."""
    from sqlalchemy import text

    with engine.connect() as connection:  # the lock ends with its session, a killed one too
        connection.execute(text("SELECT pg_advisory_lock(:space, :key)"),
                           {"space": space, "key": key})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:space, :key)"),
                               {"space": space, "key": key})


@contextlib.contextmanager
def planning(study: optuna.Study) -> Iterator[None]:
    """Around a decision about the whole study that workers could make at once (queueing
    the top-k reruns, :mod:`sweeps.sweeper.reruns`): one plateau process at a time. On a
    file, its ``flock`` (the one :func:`taking_trial` takes: do not nest them); on
    PostgreSQL, an advisory lock on the study's id."""
    with _one_process(study, 7369, ledger.study_id(study)):
        yield


def end_once(study: optuna.Study, trial_id: int, end: Callable[[FrozenTrial], None]) -> bool:
    """Run ``end(trial)``, the writes that end the running trial ``trial_id``, unless it has
    ended already; False when it had (nothing is written then)."""
    with _exclusive(study, trial_id):
        frozen = ledger.frozen_trial(study, trial_id)
        if frozen.state != TrialState.RUNNING:
            return False
        try:
            end(frozen)
        except UpdateFinishedTrialError:  # ended by a process that takes no lock
            return False
        except ValueError as err:  # Study.tell's own check, for the same reason
            if not str(err).startswith("Cannot tell a "):
                raise
            return False
    return True


def _set(study: optuna.Study, trial_id: int, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        ledger.set_trial_attr(study, trial_id, key, value)


def fail(study: optuna.Study, trial_id: int, message: str) -> bool:
    """Tell trial ``trial_id`` FAIL (counted) with ``message`` as its error."""
    def end(frozen: FrozenTrial) -> None:
        ledger.set_trial_attr(study, trial_id, ledger.ATTR_ERROR, message)
        study.tell(frozen.number, state=TrialState.FAIL)

    return end_once(study, trial_id, end)


def complete(study: optuna.Study, trial_id: int, value: float | list[float],
             attrs: dict[str, Any] | None = None) -> bool:
    """Tell trial ``trial_id`` COMPLETE with ``value`` (one per objective of a
    multi-objective study; its ``attrs`` written first)."""
    def end(frozen: FrozenTrial) -> None:
        _set(study, trial_id, attrs or {})
        study.tell(frozen.number, value)

    return end_once(study, trial_id, end)


def prune(study: optuna.Study, trial_id: int, value: float | list[float] | None,
          attrs: dict[str, Any] | None = None) -> bool:
    """Tell trial ``trial_id`` PRUNED with ``value``, its best objective so far
    (:func:`sweeps.ledger.tell_pruned`; its ``attrs`` written first)."""
    def end(frozen: FrozenTrial) -> None:
        _set(study, trial_id, attrs or {})
        ledger.tell_pruned(study, trial_id, value)

    return end_once(study, trial_id, end)


def withdraw(study: optuna.Study, trial_id: int) -> bool:
    """End an asked trial that will never run (the budget went to another worker).

    It is told FAIL marked ``withdrawn``, which does not count toward ``n_trials``; params it
    took from the queue (a re-run of an interrupted trial) are queued again.
    """
    ended: list[FrozenTrial] = []

    def end(frozen: FrozenTrial) -> None:
        ledger.set_trial_attr(study, trial_id, ledger.ATTR_WITHDRAWN, True)
        study.tell(frozen.number, state=TrialState.FAIL)
        ended.append(frozen)

    if not end_once(study, trial_id, end):
        return False
    frozen = ended[0]
    fixed = ledger.queued_params(frozen)
    if fixed or ledger.ATTR_ROLE in frozen.user_attrs:
        ledger.enqueue(study, fixed, frozen.user_attrs.get(ledger.ATTR_ROLE, ""),
                       int(frozen.user_attrs.get(ledger.ATTR_RELAUNCHES, 0)),
                       ledger.carried(frozen))
    return True


def abandon(study: optuna.Study, trial_id: int, died: str | None = None,
            attrs: dict[str, Any] | None = None) -> bool:
    """Fail a trial cut off before its end and queue its params again, unless another
    process ended it first (then False, and nothing is written).

    Marked ``interrupted``, it does not count toward ``n_trials``; the re-queued trial does.
    ``died`` says how its process died (None: an interrupt, or a launcher that never
    started it): such a trial is launched again at most :data:`MAX_RELAUNCHES` times, then
    told FAIL with ``died`` as its error, counted. ``attrs`` are written on it first.
    """
    ended: list[tuple[FrozenTrial, bool]] = []

    def end(frozen: FrozenTrial) -> None:
        relaunches = int(frozen.user_attrs.get(ledger.ATTR_RELAUNCHES, 0))
        final = died is not None and relaunches >= MAX_RELAUNCHES
        written = dict(attrs or {})
        if died is not None:
            written[ledger.ATTR_ERROR] = (
                f"{died} (launched {relaunches + 1} times)" if final else died)
        if not final:
            written[ledger.ATTR_INTERRUPTED] = True
        _set(study, trial_id, written)
        study.tell(frozen.number, state=TrialState.FAIL)
        ended.append((frozen, final))

    if not end_once(study, trial_id, end):
        log.debug("trial %d: already ended by another process", trial_id)
        return False
    frozen, final = ended[0]
    if not final:
        relaunches = int(frozen.user_attrs.get(ledger.ATTR_RELAUNCHES, 0))
        # a rerun cut off before its params were suggested keeps its queued ones
        params = ({**ledger.queued_params(frozen), **frozen.params} if ledger.is_rerun(frozen)
                  else frozen.params)
        ledger.enqueue(study, params, frozen.user_attrs.get(ledger.ATTR_ROLE, ""),
                       relaunches + (died is not None), ledger.carried(frozen))
    return True

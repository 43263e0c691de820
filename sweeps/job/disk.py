"""A full disk met by a trial: found behind a library's error, its partial file removed.

A full disk is the machine's fault, not the trial's: the job reports it as one line and the
sweeper stops (see :mod:`sweeps.job.study_trial`), instead of failing trial after trial.
"""

from __future__ import annotations

import errno
from pathlib import Path

#: ``errno`` values of a write that found no room: the disk (or the user's quota) is full.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def disk_full(err: BaseException) -> OSError | None:
    """The "no space left on device" error behind ``err`` (itself, its cause or context).

    Libraries wrap it (Lightning's checkpoint saving, MLflow's artifact copies), so the
    whole chain is searched; None when the disk was not the problem.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _NO_ROOM:
            return current
        current = current.__cause__ or current.__context__
    return None


def written_file(err: OSError) -> str | None:
    """The file a failed write was writing: a copy's destination (Lightning saves checkpoints
    to a temporary file and copies it into place), else the file named."""
    target = err.filename2 if err.filename2 is not None else err.filename
    return None if target is None else str(target)


def drop_partial_copy(err: OSError) -> None:
    """Remove what a copy cut short by ``err`` left at its destination: a truncated
    checkpoint must not pass for a whole one. (Its source, complete, is left alone.)"""
    if err.filename2 is not None:
        Path(str(err.filename2)).unlink(missing_ok=True)


def disk_full_message(err: OSError, what: str) -> str:
    """One line for a full disk met while ``what`` ran: where, and what to do about it."""
    target = written_file(err)
    where = f" writing {target}" if target else ""
    return (f"{what} ran out of disk space{where} ({err.strerror}): free space on that disk, "
            "or point trainer.default_root_dir (checkpoints) and hydra.sweep.dir at one with "
            "room, then re-run the same command")


def full_disk_line(err: BaseException, what: str) -> str | None:
    """When ``err`` comes from a full disk: remove the partial copy it left and return the
    one line to report (:func:`disk_full_message`); None for any other error."""
    full = disk_full(err)
    if full is None:
        return None
    drop_partial_copy(full)
    return disk_full_message(full, what)


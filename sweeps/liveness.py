"""Whether a trial's process still runs: who owns it, and its heartbeat.

A trial's owner is ``host:pid:start``, ``start`` being the process's start time in clock
ticks after boot (``/proc/<pid>/stat``, field 22): a pid the kernel gave to a new process
after the owner died has another start time, so the dead owner is not taken for alive. On
another host (or where ``/proc`` is missing) only the heartbeat tells: a :class:`Heartbeat`
thread writes it at a fixed period, however long an epoch lasts.

Imports the standard library only.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)

#: The heartbeat's longest period: a trial's heartbeat is at most this old while it runs.
MAX_PERIOD_S = 30.0


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks after boot), or None when it is gone,
    a zombie (killed, not yet reaped: dead all the same), or ``/proc`` cannot tell."""
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115 -- one read of a tiny file
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces or parentheses
    fields = stat[stat.rfind(")") + 2:].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def owner_id() -> str:
    """``host:pid:start`` of this process (``host:pid`` where ``/proc`` is missing)."""
    pid = os.getpid()
    start = process_start(pid)
    return f"{socket.gethostname()}:{pid}" + (f":{start}" if start else "")


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


def owner_alive(owner: str) -> bool | None:
    """Whether the :func:`owner_id` process still runs.

    True or False on its own host; None when only the heartbeat can tell: another host, or
    the pid runs but its start time is unknown (an owner written without one, or no
    ``/proc``), so it may be a new process that was given a dead owner's pid.
    """
    host, pid, start = _parse(owner)
    if host != socket.gethostname() or pid is None:
        return None
    if not _pid_runs(pid):
        return False
    if start is None:
        return None
    running = process_start(pid)
    if running is None:
        return None if not os.path.exists("/proc/self/stat") else False
    return running == start


def _parse(owner: str) -> tuple[str, int | None, str | None]:
    head, _, last = owner.rpartition(":")
    host, _, middle = head.rpartition(":")
    if host and middle.isdigit() and last.isdigit():
        return host, int(middle), last
    return head, int(last) if last.isdigit() else None, None


def is_dead(owner: str, heartbeat: float, timeout_s: float, now: float | None = None) -> bool:
    """Whether a trial owned by ``owner`` (empty: not yet owned), whose last heartbeat was at
    ``heartbeat`` (``time.time()``), is dead: its owner process is gone, or, when that cannot
    be told, its heartbeat is ``timeout_s`` old."""
    alive = owner_alive(owner) if owner else None
    if alive is not None:
        return not alive
    return (time.time() if now is None else now) - heartbeat >= timeout_s


def period_for(timeout_s: float) -> float:
    """The heartbeat period for a staleness timeout of ``timeout_s``: four beats per
    timeout, at most :data:`MAX_PERIOD_S`, at least a tenth of a second."""
    return max(0.1, min(MAX_PERIOD_S, timeout_s / 4))


class Heartbeat:
    """Calls ``beat(time.time())`` now and then every ``period_s`` seconds from a daemon
    thread, until the ``with`` block ends.

    A failing beat is logged and the next one tried (the storage may be busy a moment);
    one that raises a ``stop_on`` error (the trial has ended elsewhere) ends the thread.
    """

    def __init__(self, beat: Callable[[float], None], period_s: float,
                 stop_on: tuple[type[BaseException], ...] = ()) -> None:
        self._beat = beat
        self._period = period_s
        self._stop_on = stop_on
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plateau-heartbeat",
                                        daemon=True)

    def __enter__(self) -> Heartbeat:
        self._beat(time.time())
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self._beat(time.time())
            except self._stop_on:
                return
            except Exception as err:  # noqa: BLE001 -- a thread's error would vanish unseen
                log.warning("heartbeat not written (%s: %s)", type(err).__name__, err)

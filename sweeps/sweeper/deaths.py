"""A trial's job that died without telling how it ended, as its launcher reports it.

joblib reports a killed worker process as ``TerminatedWorkerError`` listing the workers' exit
signals (``{SIGKILL(-9)}``); submitit as an uncompleted or failed job with the scheduler's
state (``TIMEOUT``, ``OUT_OF_MEMORY``, ``CANCELLED``). Only the launcher's message says why.
"""

from __future__ import annotations

import re

from errors import error_line, one_line

_SIGNAL = re.compile(r"\bSIG[A-Z0-9]+\b")
_STATE = re.compile(r"state: ([A-Z_]+)")

#: What a signal says about the death of a trial's process.
_SIGNALS = {
    "SIGKILL": "killed by SIGKILL: out of memory (the kernel's OOM killer sends it), or "
               "killed by kill -9 or the scheduler",
    "SIGSEGV": "crashed with SIGSEGV (a segmentation fault)",
    "SIGBUS": "crashed with SIGBUS (a bad memory access, e.g. a shared-memory file gone)",
    "SIGABRT": "aborted (SIGABRT)",
}

#: Names of the errors of a launcher that lost a worker process (joblib's loky executor):
#: every job it ran then, started or not, is lost with it.
_LOST_WORKER = ("TerminatedWorkerError", "BrokenProcessPool")


def cause(err: BaseException) -> str:
    """Why the job died, in a few words, from the launcher's error ``err``."""
    text = one_line(err)
    for name in dict.fromkeys(_SIGNAL.findall(text)):
        if name in _SIGNALS:
            return f"its process was {_SIGNALS[name]}"
        return f"its process died from {name}"
    state = _STATE.search(text)
    if state is not None:
        return f"its job ended {state.group(1)} ({error_line(err, 200)})"
    return f"its job died ({error_line(err, 300)})"


def lost_worker(err: BaseException) -> bool:
    """Whether ``err`` is a launcher's loss of a worker process (see :data:`_LOST_WORKER`)."""
    return any(kind.__name__ in _LOST_WORKER for kind in type(err).__mro__)

"""glibc's allocator told to keep freed memory, so CPU training stops paying the kernel.

By default glibc serves every block above 128 KiB (a threshold that adapts up to 32 MiB) with
its own ``mmap`` and hands it back with ``munmap`` when freed, and trims the heap's free top
back to the kernel. A CPU training step allocates and frees the same activation buffers
every step, so each step maps fresh pages, and the kernel zeroes them on first touch.
At 224 px this costs a large share of each step (``benchmarks/allocator.py`` measures it
side by side); at 64 px it costs nothing measurable. GPU memory is PyTorch's own caching
allocator and is not affected.

:func:`keep_freed_memory` raises the mmap threshold to 1 GiB (to 32 MiB, half glibc's heap
size, where an older glibc caps it there) and turns off trimming, for the rest of the
process. Set ``PLATEAU_KEEP_FREED_MEMORY=0`` to keep glibc's defaults;
``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` set in the environment are the
user's own choice and are left alone. Other C libraries (macOS, musl) are left alone too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Any

from errors import PlateauError

log = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: mmap thresholds to try, highest first: blocks below it come from the heap. Activation
#: buffers of a CPU batch reach hundreds of MiB; an older glibc caps the threshold at 32 MiB.
MMAP_THRESHOLDS = (1024 * 1024 * 1024, 32 * 1024 * 1024)
#: Never trim the heap's free top (the largest int ``mallopt`` takes).
NEVER_TRIM = 2**31 - 1
#: Set to ``0`` to keep glibc's defaults.
SWITCH = "PLATEAU_KEEP_FREED_MEMORY"
_USERS_OWN = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_applied = False


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory for reuse (once per process); True when it is set.

    Raises:
        PlateauError: :data:`SWITCH` is set to something other than ``0`` or ``1``.

    Memory freed by a trial stays with its process (it is reused by the next step and the
    next trial) instead of going back to the system.
    """
    global _applied
    if _applied:
        return True
    if not switched_on() or any(name in os.environ for name in _USERS_OWN):
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    _applied = any(mallopt(M_MMAP_THRESHOLD, limit) for limit in MMAP_THRESHOLDS) and bool(
        mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
    if not _applied:
        log.debug("glibc refused the mallopt settings; its defaults stay")
    return _applied


def switched_on() -> bool:
    """Whether :data:`SWITCH` asks for kept freed memory (``1``, the default) or not (``0``).

    Raises:
        PlateauError: it is set to anything else (the sweeper checks before any study exists).
    """
    switch = os.environ.get(SWITCH, "1")
    if switch not in ("0", "1"):
        raise PlateauError(f"{SWITCH}={switch}: set it to 0 to keep glibc's allocator "
                           "defaults, or 1 (the default) to keep freed memory for reuse")
    return switch == "1"


def _glibc_mallopt() -> Any | None:
    """glibc's ``mallopt``, or None under another C library."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt

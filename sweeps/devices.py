"""Which devices a trial takes: its GPU seat, and how many DDP processes it trains in.

Trials that run in parallel on one machine must not share a GPU by accident.

Several ``python sweep.py -m`` workers, and a parallel Hydra launcher inside each, start trials
that know nothing of one another; left alone, every trial's Lightning ``devices="auto"`` takes
all visible GPUs and they pile onto GPU 0. Each GPU therefore has ``trials_per_gpu`` *seats*,
small empty files in a lock directory shared by every process of the user on the machine; a
trial holds an exclusive ``flock`` on one seat of each GPU it uses for as long as it runs. The
kernel drops a lock when its process dies, so a killed trial never keeps a GPU. A lock belongs
to one open file description: every probe and every seat opens its own descriptor, so two
claims inside one process exclude each other just as two processes do. Seat files stay behind;
they are locks, not data.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, open_dict

from errors import PlateauError

log = logging.getLogger(__name__)

#: Accelerators under which plateau assigns GPUs (others, e.g. "cpu" or "mps", are left alone).
GPU_ACCELERATORS = ("auto", "gpu", "cuda")


class GpuWaitTimeout(PlateauError, TimeoutError):
    """No GPU seat came free within the time a trial was willing to wait."""


def visible_gpus() -> list[int]:
    """Indices of the GPUs torch sees (after ``CUDA_VISIBLE_DEVICES``); [] without CUDA."""
    import torch  # late: plugin modules import this one at Hydra's start-up

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def default_lock_dir() -> Path:
    """The seat files' directory: machine-local and per user, so users never block each other."""
    return Path(tempfile.gettempdir()) / f"plateau-gpu-seats-{os.getuid()}"


def _lock(path: Path, mode: int) -> int | None:
    """A new descriptor of ``path`` holding ``flock(mode)``, or None if another holds the seat."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by exec'd children
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


class GpuClaim:
    """The seats one trial holds: one seat on each GPU of :attr:`gpus` until :meth:`release`."""

    def __init__(self, gpus: list[int], fds: list[int]) -> None:
        self.gpus = gpus
        self._fds = fds

    def release(self) -> None:
        """Give the seats back (a second call does nothing)."""
        fds, self._fds = self._fds, []
        for fd in fds:
            _unlock(fd)

    def __enter__(self) -> GpuClaim:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"GpuClaim(gpus={self.gpus}, held={bool(self._fds)})"


class GpuSeats:
    """The seats of ``gpus``, ``trials_per_gpu`` on each, shared through ``lock_dir``."""

    def __init__(self, gpus: Sequence[int], trials_per_gpu: int = 1,
                 lock_dir: Path | None = None) -> None:
        if trials_per_gpu < 1:
            raise PlateauError(f"hydra.sweeper.trials_per_gpu={trials_per_gpu} must be at "
                               "least 1")
        self.gpus = sorted(set(gpus))
        self.trials_per_gpu = trials_per_gpu
        self.lock_dir = default_lock_dir() if lock_dir is None else Path(lock_dir)
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _seat(self, gpu: int, seat: int) -> Path:
        return self.lock_dir / f"gpu{gpu}-seat{seat}.lock"

    def load(self) -> dict[int, int]:
        """Seats held right now on each GPU, by any process (this one included).

        A probe takes a *shared* lock and drops it at once: it fails against a held seat's
        exclusive lock, but not against another process probing at the same moment, so
        workers starting together do not mistake each other's probes for trials.
        """
        held = {gpu: 0 for gpu in self.gpus}
        for gpu in self.gpus:
            for seat in range(self.trials_per_gpu):
                fd = _lock(self._seat(gpu, seat), fcntl.LOCK_SH)
                if fd is None:
                    held[gpu] += 1
                else:
                    _unlock(fd)
        return held

    def _take_seat(self, gpu: int) -> int | None:
        for seat in range(self.trials_per_gpu):
            fd = _lock(self._seat(gpu, seat), fcntl.LOCK_EX)
            if fd is not None:
                return fd
        return None

    def try_claim(self, count: int = 1) -> GpuClaim | None:
        """One seat on each of ``count`` distinct GPUs, or None if too few have a free seat.

        The least loaded GPUs are taken first, lowest index among equals, so parallel trials
        spread over the GPUs before any GPU gets a second trial. The load is a snapshot: a GPU
        another process fills meanwhile is skipped; the seat locks alone decide. On failure no
        seat stays held.
        """
        self._check_count(count)
        load = self.load()
        fds: dict[int, int] = {}
        for gpu in sorted(self.gpus, key=lambda gpu: (load[gpu], gpu)):
            fd = self._take_seat(gpu)
            if fd is not None:
                fds[gpu] = fd
                if len(fds) == count:
                    return GpuClaim(sorted(fds), [fds[gpu] for gpu in sorted(fds)])
        for fd in fds.values():
            _unlock(fd)
        return None

    def claim(self, count: int = 1, poll_s: float = 1.0, timeout_s: float | None = None,
              waiting: Callable[[], None] | None = None, beat: Callable[[], None] | None = None,
              beat_s: float = 60.0) -> GpuClaim:
        """:meth:`try_claim` every ``poll_s`` seconds until it succeeds.

        Args:
            count: distinct GPUs the trial needs (``trainer.devices``).
            poll_s: seconds between attempts while every seat is busy.
            timeout_s: give up after this many seconds; None waits for ever.
            waiting: called once, when the first attempt fails (to tell the user why the
                trial has not started).
            beat: called every ``beat_s`` seconds of waiting (the trial's heartbeat: other
                hosts must not take a waiting trial for one whose worker died).

        Raises:
            GpuWaitTimeout: ``timeout_s`` passed without a free seat.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        claimed = self.try_claim(count)
        if claimed is None and waiting is not None:
            waiting()
        beaten = time.monotonic()
        while claimed is None:
            if beat is not None and time.monotonic() - beaten >= beat_s:
                beat()
                beaten = time.monotonic()
            remaining = math.inf if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise GpuWaitTimeout(
                    f"every GPU seat stayed busy for {timeout_s:g} s (GPUs {self.gpus}, "
                    f"{self.trials_per_gpu} trial(s) per GPU, {count} GPU(s) per trial); run "
                    "fewer trials in parallel or raise hydra.sweeper.trials_per_gpu")
            time.sleep(min(poll_s, remaining))
            claimed = self.try_claim(count)
        return claimed

    def _check_count(self, count: int) -> None:
        if count < 1:
            raise PlateauError(f"trainer.devices={count} must be at least 1 GPU per trial")
        if count > len(self.gpus):
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
            raise PlateauError(f"trainer.devices={count} needs {count} GPUs but "
                               f"{len(self.gpus)} are visible (CUDA_VISIBLE_DEVICES={visible}); "
                               "lower trainer.devices")


def requested_gpus(accelerator: str, devices: object, gpus: Sequence[int]) -> int | None:
    """How many GPUs plateau assigns a trial, or None to leave ``trainer.devices`` alone.

    ``devices="auto"`` means one GPU per trial here, not Lightning's "every GPU", which would
    collide with the other trials; ``-1`` means every visible GPU. Explicit indices (a list,
    or a string with a comma such as ``"0,1"``) are the user's choice and are respected, as
    are accelerators other than a GPU and values Lightning itself will reject.
    """
    if not gpus or not isinstance(accelerator, str) or accelerator.lower() not in GPU_ACCELERATORS:
        return None
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return 1
        if re.fullmatch(r"-?[0-9]+", text):
            devices = int(text)
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices == -1:
            return len(gpus)
        return devices if devices >= 1 else None
    return None


def processes(trainer_cfg: DictConfig) -> int:
    """How many processes a fit of ``trainer_cfg`` trains in: ``trainer.devices`` as a count
    above 1, a list of several indices or ``"0,1"`` means DDP; anything else one (``auto``
    gets one GPU per trial in a sweep, see :func:`requested_gpus`; ``-1`` is left to Lightning)."""
    devices = trainer_cfg.get("devices")
    if isinstance(devices, str):
        text = devices.strip().strip("[]")
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        devices = int(text) if text.isdigit() else 1
    if isinstance(devices, ListConfig | list | tuple):
        return max(len(devices), 1)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 1:
        return devices
    return 1


@contextlib.contextmanager
def trial_gpus(trainer_cfg: DictConfig, trials_per_gpu: int = 1,
               lock_dir: Path | None = None, gpus: Sequence[int] | None = None,
               beat: Callable[[], None] | None = None) -> Iterator[list[int] | None]:
    """Hold GPU seats for one trial and point ``trainer_cfg.devices`` at them.

    Yields the GPU indices written to ``trainer_cfg.devices`` (a list, which Lightning takes
    as explicit indices), or None when plateau leaves the devices alone (no GPU, a CPU
    accelerator, or indices the user pinned; see :func:`requested_gpus`). Waits while other
    trials on the machine hold every seat, calling ``beat`` now and then (see
    :meth:`GpuSeats.claim`). ``gpus`` defaults to :func:`visible_gpus`.
    """
    gpus = visible_gpus() if gpus is None else list(gpus)
    count = requested_gpus(trainer_cfg.get("accelerator", "auto"),
                           trainer_cfg.get("devices", "auto"), gpus)
    if count is None:
        yield None
        return
    seats = GpuSeats(gpus, trials_per_gpu, lock_dir)

    def waiting() -> None:
        log.info("every GPU seat is taken (%d GPUs x %d trials each): waiting for one",
                 len(seats.gpus), trials_per_gpu)

    with seats.claim(count, waiting=waiting, beat=beat) as claim:
        with open_dict(trainer_cfg):
            trainer_cfg.devices = claim.gpus
        log.info("trial runs on GPU %s", ",".join(map(str, claim.gpus)))
        yield claim.gpus

"""Parallel trials on one machine each get their own GPUs, through real ``flock`` seat locks.

No GPU is needed: the seats of fake GPU indices live in a tmp lock directory, and claims made
in this process, in other ``GpuSeats`` objects and in other processes exclude each other.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from omegaconf import ListConfig, OmegaConf

from conftest import ROOT
from errors import PlateauError
from sweeps.devices import (
    GpuClaim,
    GpuSeats,
    default_lock_dir,
    requested_gpus,
    trial_gpus,
    visible_gpus,
)


def claim_now(seats: GpuSeats, count: int = 1) -> GpuClaim:
    claimed = seats.try_claim(count)
    assert claimed is not None
    return claimed


def test_each_of_four_parallel_trials_gets_its_own_gpu(tmp_path: Path) -> None:
    seats = GpuSeats([0, 1, 2, 3], lock_dir=tmp_path)
    claims = [claim_now(seats) for _ in range(4)]
    assert sorted(c.gpus[0] for c in claims) == [0, 1, 2, 3]
    assert seats.try_claim() is None
    claims[2].release()
    assert claim_now(seats).gpus == claims[2].gpus


def test_two_trials_per_gpu_spread_before_doubling_up(tmp_path: Path) -> None:
    seats = GpuSeats([0, 1], trials_per_gpu=2, lock_dir=tmp_path)
    claims = [claim_now(seats) for _ in range(4)]
    assert claims[0].gpus != claims[1].gpus
    assert Counter(c.gpus[0] for c in claims) == {0: 2, 1: 2}
    assert seats.try_claim() is None


def test_fewer_trials_than_gpus_take_the_lowest_indices(tmp_path: Path) -> None:
    seats = GpuSeats([0, 1, 2, 3], lock_dir=tmp_path)
    assert [claim_now(seats).gpus for _ in range(2)] == [[0], [1]]


def test_ddp_trial_gets_distinct_gpus(tmp_path: Path) -> None:
    seats = GpuSeats([0, 1, 2, 3], lock_dir=tmp_path)
    claimed = seats.claim(count=2)
    assert claimed.gpus == [0, 1]
    assert seats.load() == {0: 1, 1: 1, 2: 0, 3: 0}


def test_failed_ddp_claim_leaves_no_seat_held(tmp_path: Path) -> None:
    seats = GpuSeats([0, 1, 2], lock_dir=tmp_path)
    held = [claim_now(seats), claim_now(seats)]
    before = seats.load()
    assert seats.try_claim(2) is None
    assert seats.load() == before == {0: 1, 1: 1, 2: 0}
    assert claim_now(seats).gpus == [2]
    assert [c.gpus for c in held] == [[0], [1]]


def test_separate_seat_objects_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    first, second = (GpuSeats([0, 1], lock_dir=tmp_path) for _ in range(2))
    assert claim_now(first).gpus == [0]
    assert claim_now(second).gpus == [1]
    assert first.try_claim() is None
    assert second.load() == {0: 1, 1: 1}


def test_release_is_idempotent_and_ends_the_with_block(tmp_path: Path) -> None:
    seats = GpuSeats([0], lock_dir=tmp_path)
    with claim_now(seats) as claimed:
        assert seats.load() == {0: 1}
    assert seats.load() == {0: 0}
    claimed.release()
    assert claim_now(seats).gpus == [0]


def test_more_devices_than_visible_gpus_names_trainer_devices(tmp_path: Path) -> None:
    seats = GpuSeats([0, 1], lock_dir=tmp_path)
    with pytest.raises(PlateauError, match=r"trainer\.devices=4 needs 4 GPUs but 2 are visible"):
        seats.try_claim(4)
    with pytest.raises(PlateauError, match=r"trainer\.devices=0"):
        seats.claim(0)


def test_zero_trials_per_gpu_names_the_sweeper_setting(tmp_path: Path) -> None:
    with pytest.raises(PlateauError, match=r"hydra\.sweeper\.trials_per_gpu=0 must be at least 1"):
        GpuSeats([0, 1], trials_per_gpu=0, lock_dir=tmp_path)


def test_lock_dir_is_created_private(tmp_path: Path) -> None:
    lock_dir = tmp_path / "a" / "seats"
    GpuSeats([0], lock_dir=lock_dir)
    assert stat.S_IMODE(lock_dir.stat().st_mode) & 0o077 == 0


def test_default_lock_dir_is_per_user() -> None:
    assert default_lock_dir().name.endswith(f"-{os.getuid()}")


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sweeps.devices import GpuSeats
    claimed = GpuSeats([0, 1], lock_dir=Path(sys.argv[1])).try_claim()
    print(claimed.gpus[0], flush=True)
    time.sleep(60)
""")


def test_other_process_holds_its_gpu_until_killed(tmp_path: Path) -> None:
    seats = GpuSeats([0, 1], lock_dir=tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        theirs = int(holder.stdout.readline())
        mine = claim_now(seats)
        assert mine.gpus != [theirs]
        assert seats.try_claim() is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assert claim_now(seats).gpus == [theirs]


def test_claim_waits_for_a_released_seat(tmp_path: Path) -> None:
    seats = GpuSeats([0, 1], lock_dir=tmp_path)
    held = [claim_now(seats), claim_now(seats)]
    calls: list[float] = []
    timer = threading.Timer(0.3, held[1].release)
    timer.start()
    start = time.monotonic()
    claimed = seats.claim(poll_s=0.05, timeout_s=5, waiting=lambda: calls.append(1.0))
    timer.join()
    assert claimed.gpus == [1]
    assert time.monotonic() - start >= 0.25
    assert len(calls) == 1


def test_claim_beats_while_it_waits(tmp_path: Path) -> None:
    """A trial waiting for a seat keeps its heartbeat (else another host's worker would take
    it for a dead one after heartbeat_timeout_s)."""
    seats = GpuSeats([0], lock_dir=tmp_path)
    held = claim_now(seats)
    beats: list[float] = []
    timer = threading.Timer(0.5, held.release)
    timer.start()
    seats.claim(poll_s=0.02, timeout_s=5, beat=lambda: beats.append(time.monotonic()),
                beat_s=0.1)
    timer.join()
    assert len(beats) >= 2  # the seat stays busy for 0.5 s at least
    assert not [b for a, b in zip(beats, beats[1:], strict=False) if b - a < 0.1]


def test_claim_gives_up_after_its_timeout(tmp_path: Path) -> None:
    seats = GpuSeats([0], lock_dir=tmp_path)
    claim_now(seats)
    with pytest.raises(PlateauError, match="trials_per_gpu") as caught:
        seats.claim(poll_s=0.05, timeout_s=0.2)
    assert isinstance(caught.value, TimeoutError)


def test_claim_does_not_call_waiting_when_a_seat_is_free(tmp_path: Path) -> None:
    calls: list[int] = []
    GpuSeats([0], lock_dir=tmp_path).claim(waiting=lambda: calls.append(1))
    assert calls == []


@pytest.mark.parametrize(
    ("accelerator", "devices", "gpus", "expected"),
    [
        ("auto", "auto", [0, 1, 2, 3], 1),
        ("gpu", "auto", [0, 1], 1),
        ("cuda", 2, [0, 1, 2, 3], 2),
        ("gpu", 1, [0], 1),
        ("gpu", 8, [0, 1], 8),  # too many: the claim reports it
        ("gpu", "2", [0, 1, 2], 2),
        ("gpu", -1, [0, 1, 2], 3),
        ("auto", "-1", [0, 1], 2),
        ("gpu", 1, [], None),  # no visible GPU
        ("cpu", "auto", [0, 1], None),
        ("mps", 1, [0, 1], None),
        ("gpu", [0, 1], [0, 1, 2], None),  # pinned indices are the user's choice
        ("gpu", (1,), [0, 1], None),
        ("gpu", ListConfig([1]), [0, 1], None),
        ("gpu", "0,1", [0, 1, 2], None),
        ("gpu", "1,", [0, 1], None),
        ("gpu", 0, [0, 1], None),  # Lightning rejects it itself
        ("gpu", True, [0, 1], None),
        ("gpu", None, [0, 1], None),
    ],
)
def test_requested_gpus(accelerator: str, devices: object, gpus: list[int],
                        expected: int | None) -> None:
    assert requested_gpus(accelerator, devices, gpus) == expected


def test_visible_gpus_are_the_ones_torch_counts() -> None:
    expected = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    assert visible_gpus() == expected


def test_parallel_trials_are_pointed_at_their_own_gpu(tmp_path: Path) -> None:
    first = OmegaConf.create({"accelerator": "auto", "devices": "auto"})
    second = OmegaConf.create({"accelerator": "gpu", "devices": 1})
    with (trial_gpus(first, lock_dir=tmp_path, gpus=[0, 1]) as one,
          trial_gpus(second, lock_dir=tmp_path, gpus=[0, 1]) as other):
        assert (one, other) == ([0], [1])
        assert (list(first.devices), list(second.devices)) == ([0], [1])
    assert GpuSeats([0, 1], lock_dir=tmp_path).load() == {0: 0, 1: 0}  # freed after the fit


def test_a_ddp_trial_is_given_two_gpus(tmp_path: Path) -> None:
    trainer = OmegaConf.create({"accelerator": "gpu", "devices": 2})
    with trial_gpus(trainer, lock_dir=tmp_path, gpus=[0, 1, 2]) as gpus:
        assert gpus == [0, 1]
        assert GpuSeats([0, 1, 2], lock_dir=tmp_path).load() == {0: 1, 1: 1, 2: 0}


@pytest.mark.parametrize("trainer", [
    {"accelerator": "cpu", "devices": 1},
    {"accelerator": "gpu", "devices": [1]},
    {"accelerator": "auto", "devices": "auto"},  # with no GPU visible
], ids=["cpu", "pinned", "no-gpu"])
def test_trials_plateau_must_not_place_keep_their_devices(tmp_path: Path, trainer: dict) -> None:
    cfg = OmegaConf.create(trainer)
    gpus = [] if trainer["devices"] == "auto" else [0, 1]
    with trial_gpus(cfg, lock_dir=tmp_path, gpus=gpus) as assigned:
        assert assigned is None
        assert OmegaConf.to_container(cfg) == trainer

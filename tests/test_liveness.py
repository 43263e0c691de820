"""Who owns a trial and whether it still runs: pid and start time, zombies, the heartbeat."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from sweeps import liveness

HOST = socket.gethostname()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of this host, not this one."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_owner_of_this_process_is_alive_with_its_start_time() -> None:
    owner = liveness.owner_id()
    assert owner.startswith(f"{HOST}:{os.getpid()}:")
    assert liveness.owner_alive(owner) is True


def test_an_ended_process_is_dead_and_another_hosts_cannot_be_told() -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    assert liveness.owner_alive(f"{HOST}:{done.stdout.strip()}:12345") is False
    assert liveness.owner_alive(f"{HOST}:{done.stdout.strip()}") is False
    assert liveness.owner_alive(f"another-host-{os.getpid()}:1:1") is None


def test_a_reused_pid_is_a_dead_owner(sleeper: subprocess.Popen[bytes]) -> None:
    """The pid runs, but it is a newer process than the one that owned the trial."""
    start = liveness.process_start(sleeper.pid)
    assert start is not None
    earlier = str(int(start) - 1)
    assert liveness.owner_alive(f"{HOST}:{sleeper.pid}:{start}") is True
    assert liveness.owner_alive(f"{HOST}:{sleeper.pid}:{earlier}") is False
    fresh = time.time()  # even with a heartbeat written a moment ago
    assert liveness.is_dead(f"{HOST}:{sleeper.pid}:{earlier}", fresh, 600.0)


def test_a_killed_unreaped_process_is_dead(sleeper: subprocess.Popen[bytes]) -> None:
    """A zombie still answers ``kill -0``; it is dead all the same."""
    owner = f"{HOST}:{sleeper.pid}:{liveness.process_start(sleeper.pid)}"
    os.kill(sleeper.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while liveness.process_start(sleeper.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(sleeper.pid, 0)  # not reaped: the pid still answers
    assert liveness.owner_alive(owner) is False


def test_an_owner_without_start_time_is_told_by_its_heartbeat(
        sleeper: subprocess.Popen[bytes]) -> None:
    """An owner written before start times were recorded: a live pid may be a reused one."""
    owner = f"{HOST}:{sleeper.pid}"
    assert liveness.owner_alive(owner) is None
    assert not liveness.is_dead(owner, time.time() - 5, 60.0)
    assert liveness.is_dead(owner, time.time() - 61, 60.0)


def test_heartbeat_beats_at_its_period_through_a_long_block() -> None:
    beats: list[float] = []
    with liveness.Heartbeat(beats.append, period_s=0.1):
        time.sleep(1.0)  # one "epoch" ten periods long
    assert len(beats) >= 7
    assert max(b - a for a, b in zip(beats, beats[1:], strict=False)) < 0.5


def test_heartbeat_stops_when_the_trial_has_ended_elsewhere() -> None:
    calls: list[float] = []

    def beat(now: float) -> None:
        calls.append(now)
        if len(calls) > 1:
            raise LookupError("ended")

    with liveness.Heartbeat(beat, period_s=0.05, stop_on=(LookupError,)) as heartbeat:
        time.sleep(0.5)
        alive = [t for t in threading.enumerate() if t.name == "plateau-heartbeat"]
    assert len(calls) == 2
    assert heartbeat is not None
    assert not alive


def test_period_is_four_beats_per_timeout_at_most_thirty_seconds() -> None:
    assert liveness.period_for(8.0) == 2.0
    assert liveness.period_for(600.0) == liveness.MAX_PERIOD_S

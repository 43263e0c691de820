"""The job side keeps freed memory in its process (glibc): big CPU buffers come from the heap
and are reused, instead of fresh kernel pages each training step.

Each case runs in a fresh interpreter (the setting lasts for the process). glibc's
``mallinfo2`` says how many bytes sit in blocks mapped one by one (``hblkhd``): a 256 MiB
tensor is such a block under glibc's defaults, and a heap block once plateau set it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ROOT, TINY, Exited

#: Prints whether plateau's setting took, then the bytes in one-by-one mapped blocks while a
#: 256 MiB tensor is alive. ``{call}`` is filled with plateau's call or nothing.
PROBE = """
import ctypes, torch
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
{call}
buffer = torch.ones(64 * 1024 * 1024)  # 256 MiB of float32, as a 224 px batch's activations
print(libc.mallinfo2().hblkhd)
"""
CALL = "from sweeps.job.allocator import keep_freed_memory; print(keep_freed_memory())"
MIB = 1024 * 1024


def probe(call: str, **env: str) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-c", PROBE.format(call=call)], cwd=ROOT,
                            env={**environ, **env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


def test_glibc_defaults_map_a_256_mib_tensor_by_itself() -> None:
    """The control: what the setting changes."""
    (mapped,) = probe("")
    assert int(mapped) >= 256 * MIB


def test_keep_freed_memory_serves_a_256_mib_tensor_from_the_heap() -> None:
    applied, mapped = probe(CALL)
    assert applied == "True"
    assert int(mapped) < 256 * MIB


@pytest.mark.parametrize("env", [{"PLATEAU_KEEP_FREED_MEMORY": "0"},
                                 {"MALLOC_MMAP_THRESHOLD_": "131072"}],
                         ids=["switched off", "user's own malloc settings"])
def test_switch_or_users_own_settings_leave_glibc_as_it_is(env: dict[str, str]) -> None:
    applied, mapped = probe(CALL, **env)
    assert applied == "False"
    assert int(mapped) >= 256 * MIB


def test_a_trial_sets_it_in_the_process_it_trains_in(tmp_path: Path) -> None:
    """sweep.py, a launcher's process and a DDP rank all train through run_trial."""
    run = (f"import runpy, sys; sys.argv = ['sweep.py', *sys.argv[1:]]; "
           f"runpy.run_path({str(ROOT / 'sweep.py')!r}, run_name='__main__'); "
           "from sweeps.job import allocator; print('kept:', allocator._applied)")
    result = subprocess.run([sys.executable, "-c", run, *TINY, "logger=none"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "kept: True" in result.stdout


@pytest.mark.parametrize("mode", [[], ["-m"]], ids=["run", "sweep"])
def test_a_switch_value_other_than_0_or_1_is_a_one_line_error_and_nothing_runs(
        mode: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        sweep_here: Callable[..., Exited]) -> None:
    monkeypatch.setenv("PLATEAU_KEEP_FREED_MEMORY", "off")
    result = sweep_here(*mode, *TINY, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.output
    (line,) = [x for x in result.stderr.splitlines() if "error" in x.lower()]
    assert line.startswith("plateau: error: PLATEAU_KEEP_FREED_MEMORY=off: set it to 0")
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "plateau.db").exists()

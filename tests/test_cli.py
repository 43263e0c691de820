"""``python sweep.py`` as a user runs it: the offline default end to end, and mistakes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import ROOT, TINY, TINY_DISK, Exited
from sweeps.job.disk import disk_full, disk_full_message, drop_partial_copy, full_disk_line


def sweep(*args: str, cwd: Path, timeout: float = 600,
          within: list[str] | None = None) -> subprocess.CompletedProcess:
    """``python sweep.py *args`` in ``cwd``; ``within`` is a command that runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([*(within or []), sys.executable, str(ROOT / "sweep.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_checkpoints_go_to_the_runs_own_folder(tmp_path: Path) -> None:
    """Lightning's default would be the launch folder (``<experiment>/<run>/checkpoints``)."""
    result = sweep(*TINY, "trainer.enable_checkpointing=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    assert checkpoint.is_relative_to(run_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlruns", "outputs"]


def test_full_disk_ends_a_run_with_one_line_and_no_partial_checkpoint(tmp_path: Path) -> None:
    disk = tmp_path / "checkpoints"
    disk.mkdir()
    result = sweep(*TINY, "trainer.enable_checkpointing=true", f"trainer.default_root_dir={disk}",
                   cwd=tmp_path, within=[*TINY_DISK, str(disk)])
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("plateau: error:")]
    assert f"the run ran out of disk space writing {disk}/" in line
    assert "(No space left on device): free space on that disk" in line
    assert (tmp_path / "checkpoints.left").read_text() == ""


@pytest.mark.slow
def test_default_run_is_offline_pretrained_and_logged(tmp_path: Path) -> None:
    result = sweep(cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "objective val/f1_macro_best = " in output
    value = float(output.split("objective val/f1_macro_best = ")[1].split()[0])
    assert value > 0.8  # a pretrained Lite0 learns the digits in a few CPU epochs
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("plateau").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["backbone"] == "tf_efficientnet_lite0"
    assert run.data.params["backbone.pretrained"] == "true"
    epochs = int(run.data.params["trainer.max_epochs"])
    history = client.get_metric_history(run.info.run_id, "val/f1_macro")
    assert len(history) == epochs
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "config")]
    assert artifacts == ["config/config.yaml"]


def _one_class_folder(tmp_path: Path) -> Path:
    root = tmp_path / "one_class"
    (root / "cats").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "cats" / "a.png")
    return root


#: case: (overrides, what the one error line says); ``{one_class}`` and ``{afile}`` (a regular
#: file, see conftest's ``a_file``) are filled in per test.
MISTAKES = {
    "missing data.root": (["data=image_folder"], "data.root"),
    "data.root not a folder": (["data=image_folder", "data.root=/no/such/dir"], "/no/such/dir"),
    "fewer than two classes": (["data=image_folder", "data.root={one_class}"], "at least two"),
    "unknown backbone": (["backbone.name=resnt18"], "unknown backbone 'resnt18'"),
    "unknown backbone option": (["backbone=resnet999"],
                                "backbone=resnet999: the config group backbone has no option "
                                "resnet999; use one of convnext_tiny, efficientnet_b0,"),
    "unknown key": ([*TINY, "optimizer.lrr=0.1"], "optimizer.lrr: optimizer has no key lrr"),
    "unparsable override": ([*TINY, "optimizer.lr=[1,2"],
                            "cannot parse the override 'optimizer.lr=[1,2'"),
    "epochs not a number": ([*TINY, "trainer.max_epochs=abc"],
                            "trainer.max_epochs=abc: trainer.max_epochs (epochs per trial) must be "
                            "an integer >= 1"),
    "fractional batch size": ([*TINY, "data.batch_size=1.5"],
                              "data.batch_size=1.5: data.batch_size must be an integer >= 1"),
    "batch larger than the data": ([*TINY, "data.batch_size=100000"],
                                   "data.batch_size=100000 is larger than the 39 training images"),
    "depth beyond stages": ([*TINY, "freeze.depth=9"], "freeze.depth=9"),
    "weights unavailable offline": (["backbone=resnet18"], "backbone.weights_file"),
    "missing weights file": (["backbone.weights_file=/no/w.pth"], "backbone.weights_file"),
    "bad objective metric": (["objective.metric=val/auc"], "objective.metric"),
    "MLflow store below a file": ([*TINY, "logger.tracking_uri=sqlite:///{afile}/mlflow.db"],
                                  "logger.tracking_uri=sqlite:///{afile}/mlflow.db: {afile} is "
                                  "a file, not a folder"),
    "run folder below a file": ([*TINY, "hydra.run.dir={afile}/run"],
                                "hydra.run.dir={afile}/run: {afile} is a file, not a folder"),
}


def assert_one_line_and_no_run(result: Exited | subprocess.CompletedProcess, case: str,
                               places: dict[str, Path], cwd: Path) -> str:
    """Exit 2, one ``plateau: error:`` line saying what ``MISTAKES[case]`` expects, no
    traceback, nothing written; returns the line."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("plateau: error: ")
    assert MISTAKES[case][1].format(**places) in errors[0]
    assert not (cwd / "mlflow.db").exists()  # nothing half-written
    assert not (cwd / "plateau.db").exists()
    return errors[0]


@pytest.mark.parametrize("case", list(MISTAKES))
def test_user_mistake_gets_one_line_error_and_no_run(case: str, tmp_path: Path, a_file: Path,
                                                     sweep_here: Callable[..., Exited]) -> None:
    places = {"one_class": _one_class_folder(tmp_path), "afile": a_file}
    result = sweep_here(*(o.format(**places) for o in MISTAKES[case][0]), cwd=tmp_path)
    assert_one_line_and_no_run(result, case, places, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing data.root", "unknown key"])
def test_user_mistake_ends_a_real_process_as_it_ends_in_the_test_process(
        case: str, tmp_path: Path, a_file: Path, sweep_here: Callable[..., Exited]) -> None:
    """The mistakes above run in the test process; a new interpreter ends the same way, for
    a mistake found in the trial (plateau's error) and one found by Hydra."""
    places = {"one_class": _one_class_folder(tmp_path), "afile": a_file}
    overrides = [o.format(**places) for o in MISTAKES[case][0]]
    real = sweep(*overrides, cwd=tmp_path, timeout=120)
    line = assert_one_line_and_no_run(real, case, places, tmp_path)
    here = sweep_here(*overrides, cwd=tmp_path)
    assert assert_one_line_and_no_run(here, case, places, tmp_path) == line


def _wrapped(inner: BaseException, how: str) -> BaseException:
    """``inner`` behind a library's own error, as its cause or as the error being handled."""
    try:
        try:
            raise inner
        except BaseException as err:
            if how == "cause":
                raise RuntimeError("saving the checkpoint failed") from err
            raise RuntimeError("saving the checkpoint failed")  # noqa: B904 (context)
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize("how", ["cause", "context"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_found_behind_a_librarys_error(how: str, code: int) -> None:
    full = OSError(code, os.strerror(code), "/tmp/x.tmp", None, "/ckpt/epoch=0.ckpt")
    assert disk_full(_wrapped(full, how)) is full
    assert "writing /ckpt/epoch=0.ckpt" in disk_full_message(full, "trial 3")


def test_other_os_errors_are_not_a_full_disk() -> None:
    assert disk_full(_wrapped(PermissionError(errno.EACCES, "Permission denied"), "cause")) is None
    assert disk_full(ValueError("no")) is None


def test_partial_copy_is_removed_and_its_source_kept(tmp_path: Path) -> None:
    source, partial = tmp_path / "whole.tmp", tmp_path / "cut.ckpt"
    source.write_bytes(b"x" * 100)
    partial.write_bytes(b"x" * 10)
    drop_partial_copy(OSError(errno.ENOSPC, "No space left on device", str(source), None,
                              str(partial)))
    assert source.exists()
    assert not partial.exists()


def test_full_disk_line_drops_the_partial_copy_and_says_where(tmp_path: Path) -> None:
    partial = tmp_path / "cut.ckpt"
    partial.write_bytes(b"x")
    full = OSError(errno.ENOSPC, "No space left on device", "/tmp/x.tmp", None, str(partial))
    line = full_disk_line(_wrapped(full, "cause"), "trial 2")
    assert line == disk_full_message(full, "trial 2")
    assert not partial.exists()
    assert full_disk_line(ValueError("no"), "trial 2") is None

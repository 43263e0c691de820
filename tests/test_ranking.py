"""``python -m doctor rank``: three offline backbones ranked by LogME from their frozen
features, which land in the feature cache under the key a linear-probe trial reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, compose_config
from sweeps.job.run import run_trial

LITES = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
DATA = ["data=synthetic", "data.image_size=32", "trainer=cpu", "trainer.max_epochs=1",
        "logger=none"]


def _rank(cache: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "doctor", "rank", f"backbone={','.join(LITES)}", *DATA,
         f"cache_dir={cache}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
             "MLFLOW_DISABLE_TELEMETRY": "true"})


def _entries(cache: Path) -> set[str]:
    return {p.name for p in (cache / "features").iterdir() if p.is_dir()}


@pytest.mark.slow
def test_rank_scores_three_backbones_from_cached_features(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _rank(cache, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = [line for line in first.stderr.splitlines() if "tf_efficientnet_lite" in line]
    assert len(rows) == 3
    assert [row.split("│")[1].strip() for row in rows] == ["1", "2", "3"]
    assert {row.split("│")[2].strip() for row in rows} == set(LITES)
    assert all("computed" in row for row in rows)
    assert "ranked 3 backbones in" in first.stderr
    assert len(_entries(cache)) == 6  # train and validation features of each backbone

    again = _rank(cache, tmp_path)  # the same scores, read back from the cache
    assert again.returncode == 0, again.stderr[-3000:]
    rows_again = [line for line in again.stderr.splitlines() if "tf_efficientnet_lite" in line]
    assert all("cached" in row for row in rows_again)
    assert [r.split("│")[3] for r in rows_again] == [r.split("│")[3] for r in rows]

    # a linear probe of one of them trains on the ranking's features: no new cache entry
    entries = _entries(cache)
    run_trial(compose_config([*DATA, "backbone=tf_efficientnet_lite1", "freeze=head_only",
                              "augment=none", f"cache_dir={cache}"]))
    assert _entries(cache) == entries


def test_rank_needs_two_backbones(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "doctor", "rank", "backbone=resnet18"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "rank needs two or more backbones" in result.stderr

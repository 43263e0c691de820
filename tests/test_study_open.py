"""Opening a study: an existing one of the other direction, and a storage that cannot be
opened, are each one line saying which; neither is blamed on the other."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna

from conftest import TINY, Exited

QUICK = [*TINY, "hydra.sweeper.n_trials=1", "doctor.preflight.enabled=false"]


def test_study_of_the_other_direction_is_one_line_naming_both(
        sweep_here: Callable[..., Exited], tmp_path: Path) -> None:
    optuna.create_study(study_name="plateau", storage=f"sqlite:///{tmp_path / 'plateau.db'}",
                        direction="minimize")
    ended = sweep_here("-m", *QUICK, cwd=tmp_path)
    assert ended.returncode == 2, ended.output[-3000:]
    assert "Traceback" not in ended.output
    assert "is to minimize, this sweep to maximize: use another hydra.sweeper.study_name" in (
        " ".join(ended.stderr.split()))


def test_storage_that_cannot_be_opened_is_one_line_naming_it(
        sweep_here: Callable[..., Exited], tmp_path: Path, a_file: Path) -> None:
    ended = sweep_here("-m", *QUICK, f"hydra.sweeper.storage=journal:///{a_file}/study.log",
                       cwd=tmp_path)
    assert ended.returncode == 2, ended.output[-3000:]
    assert "Traceback" not in ended.output
    assert "cannot open the study storage journal:///" in " ".join(ended.stderr.split())

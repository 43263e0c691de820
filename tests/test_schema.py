"""The ``objective`` and ``doctor`` nodes have schemas: one place for their defaults, and a
misspelled key or a wrongly typed value fails when the config is composed, as one line."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from conftest import ROOT, compose_config
from doctor.settings import PreflightSettings, Thresholds
from sweeps.hydra_errors import hydra_mistake
from sweeps.schema import ObjectiveConf


def test_composed_doctor_defaults_are_the_dataclass_defaults() -> None:
    cfg = compose_config([])
    assert dict(cfg.doctor.preflight) == dataclasses.asdict(PreflightSettings())
    assert dict(cfg.doctor.thresholds) == dataclasses.asdict(Thresholds())
    assert dict(cfg.objective) == dataclasses.asdict(ObjectiveConf())


def test_config_yaml_repeats_no_doctor_default() -> None:
    text = (ROOT / "conf" / "config.yaml").read_text()
    for name in [f.name for f in dataclasses.fields(PreflightSettings)
                 + dataclasses.fields(Thresholds)]:
        assert f"{name}:" not in text


def test_a_doctor_override_still_takes_effect() -> None:
    cfg = compose_config(["doctor.thresholds.overfit_gap=0.3",
                          "doctor.preflight.enabled=false"])
    assert cfg.doctor.thresholds.overfit_gap == 0.3
    assert cfg.doctor.preflight.enabled is False


MISSPELLED = [
    ("objective.metrc=val/acc", "objective.metrc: objective has no key metrc"),
    ("doctor.thresholds.overfit_gapp=0.2",
     "doctor.thresholds.overfit_gapp: doctor.thresholds has no key overfit_gapp"),
    ("doctor.preflight.sample_images=many",
     "doctor.preflight.sample_images=many: Value 'many' of type 'str' could not be converted "
     "to Integer"),
]


@pytest.mark.parametrize(("override", "expected"), MISSPELLED)
def test_misspelled_or_mistyped_key_fails_at_compose_time(override: str, expected: str) -> None:
    with pytest.raises(ConfigCompositionException) as raised:
        compose_config([override])
    assert str(hydra_mistake(raised.value)).startswith(expected)


def test_misspelled_objective_key_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "objective.metrc=val/acc"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("plateau: error: objective.metrc: objective has no key metrc")
    assert list(tmp_path.iterdir()) == []

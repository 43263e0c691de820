"""The ledger against the installed Optuna: each use of Optuna's private API does what plateau
relies on, and none happens outside ``sweeps/ledger.py``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from conftest import ROOT
from sweeps import ledger

#: Optuna's private names plateau uses; each may appear in the ledger only.
PRIVATE = {"_storage", "_trial_id", "_suggest", "_study_id", "_cached_frozen_trial", "_backend",
           "_file_path"}


@pytest.fixture
def storage_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture
def study(storage_url: str) -> optuna.Study:
    return optuna.create_study(study_name="s", storage=storage_url, direction="maximize")


def other_process_view(storage_url: str) -> optuna.Study:
    """The study as a job in another process loads it: a new storage connection."""
    return optuna.load_study(study_name="s", storage=storage_url)


def test_trial_id_is_the_same_for_a_trial_and_its_frozen_copy(study: optuna.Study) -> None:
    trial = study.ask()
    (frozen,) = study.get_trials()
    assert ledger.trial_id(trial) == ledger.trial_id(frozen)
    assert isinstance(ledger.trial_id(trial), int)


def test_frozen_trial_reads_what_another_process_told(study: optuna.Study,
                                                      storage_url: str) -> None:
    trial = study.ask()
    other_process_view(storage_url).tell(trial.number, 0.5)
    frozen = ledger.frozen_trial(study, ledger.trial_id(trial))
    assert frozen.state == TrialState.COMPLETE
    assert frozen.value == 0.5


def test_set_trial_attr_writes_by_id_without_a_trial_object(study: optuna.Study) -> None:
    trial = study.ask()
    ledger.set_trial_attr(study, ledger.trial_id(trial), ledger.ATTR_ERROR, "boom")
    assert study.get_trials()[0].user_attrs[ledger.ATTR_ERROR] == "boom"


def test_live_trial_in_another_study_object_reports_to_the_asker(study: optuna.Study,
                                                                  storage_url: str) -> None:
    asked = study.ask()
    live = ledger.live_trial(other_process_view(storage_url), ledger.trial_id(asked))
    live.report(0.25, 0)
    live.set_user_attr(ledger.ATTR_HEARTBEAT, 1.0)
    frozen = study.get_trials()[0]
    assert live.number == asked.number
    assert frozen.intermediate_values == {0: 0.25}
    assert frozen.user_attrs[ledger.ATTR_HEARTBEAT] == 1.0
    assert live.should_prune() is False  # the default pruner runs on the rebuilt trial


def test_suggest_samples_a_ready_made_distribution(study: optuna.Study) -> None:
    trial = study.ask()
    value = ledger.suggest(trial, "lr", FloatDistribution(1e-4, 1e-2, log=True))
    choice = ledger.suggest(trial, "freeze", CategoricalDistribution(["none", "depth"]))
    frozen = study.get_trials()[0]
    assert 1e-4 <= value <= 1e-2
    assert frozen.params == {"lr": value, "freeze": choice}
    assert frozen.distributions["lr"] == FloatDistribution(1e-4, 1e-2, log=True)


def test_suggest_keeps_a_queued_value_and_queued_params_returns_it(
        study: optuna.Study) -> None:
    study.enqueue_trial({"freeze": "depth"})
    trial = study.ask()
    assert ledger.suggest(trial, "freeze", CategoricalDistribution(["none", "depth"])) == "depth"
    assert ledger.queued_params(study.get_trials()[0]) == {"freeze": "depth"}


def test_queued_params_of_an_asked_trial_is_empty(study: optuna.Study) -> None:
    study.ask()
    assert ledger.queued_params(study.get_trials()[0]) == {}


def test_within_budget_gives_the_last_unit_to_the_earlier_number(study: optuna.Study) -> None:
    first, second = study.ask(), study.ask()
    trials = study.get_trials()
    assert ledger.within_budget(trials, first.number, n_trials=1)
    assert not ledger.within_budget(trials, second.number, n_trials=1)


def _private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = [f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}" for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr in PRIVATE]
    found += [f"{path.relative_to(ROOT)}:{node.lineno} 'fixed_params'"
              for node in ast.walk(tree)
              if isinstance(node, ast.Constant) and node.value == "fixed_params"]
    return found


def test_optuna_private_api_is_used_in_the_ledger_only() -> None:
    files = [ROOT / "sweep.py", *(p for folder in ("errors", "sweeps", "doctor", "hydra_plugins",
                                                   "benchmarks", "tests", "lightning_modules",
                                                   "data_modules")
                                  for p in sorted((ROOT / folder).rglob("*.py")))]
    here = Path(__file__).resolve()  # this file names them to look for them
    outside = [use for path in files if path not in (ROOT / "sweeps" / "ledger.py", here)
               for use in _private_uses(path)]
    assert _private_uses(ROOT / "sweeps" / "ledger.py")  # the scan sees them where they are
    assert not outside


#: Ctrl-C (a real SIGINT to the process) inside ``uninterrupted``: what ran, in order.
HELD_CTRL_C = """
import os, signal, sys
from sweeps.ledger import uninterrupted
done = []
try:
    with uninterrupted():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("after the signal")
        if sys.argv[1] == "fails":
            raise RuntimeError("the block's own error")
        done.append("end of block")
except KeyboardInterrupt as err:
    print(done, "KeyboardInterrupt", type(err.__context__).__name__)
"""


@pytest.mark.parametrize(("block", "printed"), [
    ("ends", "['after the signal', 'end of block'] KeyboardInterrupt NoneType"),
    ("fails", "['after the signal'] KeyboardInterrupt RuntimeError"),
])
def test_ctrl_c_waits_for_the_storage_writes_then_interrupts(block: str, printed: str) -> None:
    result = subprocess.run([sys.executable, "-c", HELD_CTRL_C, block], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == printed

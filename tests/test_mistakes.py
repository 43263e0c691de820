"""Every knob key with a range refuses a wrong value at compose time, as one line naming the
key, the value and what is allowed; through ``python sweep.py`` (single run and ``-m``) that
is exit 2, no traceback, and no MLflow or Optuna store written."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import CONF, TINY, Exited, compose_config
from errors import PlateauError
from sweeps.schema.checks import RULES, check_config
from sweeps.schema.rules import Rule
from sweeps.sweeper.search_space import parse_search_space


def _choice_setting(key: str) -> list[str]:
    """The group choice under which ``key`` exists (``optimizer.momentum`` -> sgd), or ``+``
    to add a key no shipped file sets (``trainer.gradient_clip_val``)."""
    group, _, rest = key.partition(".")
    if not rest:
        return []
    config = yaml.safe_load((CONF / "config.yaml").read_text())
    path = rest.split(".")
    for choice in sorted((CONF / group).glob("*.yaml")) if (CONF / group).is_dir() else []:
        node: Any = yaml.safe_load(choice.read_text()) or {}
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return [f"{group}={choice.stem}"]
    node = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return [] if node is not None else ["+"]


def _wrong_values(rule: Rule) -> list[Any]:
    """Values ``rule`` must refuse: just past each bound, the wrong type, an unknown choice."""
    if rule.choices is not None:
        return ["nonsense"]
    if rule.kind == "flag":
        return ["maybe"]
    if rule.kind == "text":
        return []
    if rule.kind == "pair":
        return [[0.9, 0.1], "abc"]
    if rule.kind == "numbers":
        return ["abc", [0.0] if rule.low is not None else "[]"]
    if rule.kind == "ints":
        return [[3, 1] if rule.increasing else [-1], "abc"]
    wrong: list[Any] = ["fast"]
    if rule.low is not None:
        wrong.append(rule.low if rule.low_open else rule.low - 1)
    if rule.high is not None:
        wrong.append(rule.high if rule.high_open else rule.high + 1)
    if rule.kind == "integer":
        wrong.append(1.5)
    return wrong


def _override(key: str, value: Any) -> str:
    text = "[]" if value == "[]" else str(value).replace(" ", "")
    return f"{key}={text}"


CASES = [(key, value) for key, rule in sorted(RULES.items()) for value in _wrong_values(rule)]


def test_every_knob_key_with_a_range_is_covered() -> None:
    ranged = {key for key, rule in RULES.items() if rule.kind != "text" or rule.choices}
    assert {key for key, _ in CASES} == ranged
    assert len(ranged) >= 60


@pytest.mark.parametrize(("key", "value"), CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_wrong_value_is_one_line_naming_key_value_and_range(key: str, value: Any) -> None:
    setting = _choice_setting(key)
    add = setting == ["+"]
    cfg = compose_config([*TINY, *([] if add else setting),
                          ("+" if add else "") + _override(key, value)])
    with pytest.raises(PlateauError) as raised:
        check_config(cfg)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{key}="), message
    assert "must be" in message
    assert RULES[key].allowed() in message


@pytest.mark.parametrize("key", sorted(RULES))
def test_shipped_values_pass(key: str) -> None:
    setting = _choice_setting(key)
    check_config(compose_config([*TINY, *([] if setting == ["+"] else setting)]))


def test_every_shipped_choice_passes() -> None:
    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"):
        for choice in sorted(group.glob("*.yaml")):
            if group.name != "search":
                check_config(compose_config([f"{group.name}={choice.stem}"]))


IMAGE_SIZE = [  # an input the backbone cannot take: at compose time where timm states it
    (["data.image_size=8"], "data.image_size=8"),
]


@pytest.mark.parametrize(("overrides", "start"), IMAGE_SIZE)
def test_too_small_image_is_one_line(overrides: list[str], start: str) -> None:
    with pytest.raises(PlateauError, match=re.escape(start)):
        check_config(compose_config([*TINY, *overrides]))


SPACES = {  # a search space reaching outside a key's range: one line at the sweep's start
    "regularization.dropout": ("interval(0.0, 1.5)", "reaches 1.5"),
    "optimizer.lr": ("tag(log, interval(1e-4, 3))", None),
    "trainer.max_epochs": ("range(0, 4)", "reaches 0"),
    "freeze.depth": ("choice(-1, 2)", "reaches -1"),
    "class_weight.beta": ("interval(0.9, 1.0)", "reaches 1.0"),
    "data.batch_size": ("interval(8, 64)", "reaches 8.0"),
}


@pytest.mark.parametrize("key", sorted(SPACES))
def test_space_outside_a_range_is_refused_from_its_bounds(key: str) -> None:
    expression, reach = SPACES[key]
    if reach is None:  # within the range: accepted
        parse_search_space({key: expression}, [])
        return
    with pytest.raises(PlateauError) as raised:
        parse_search_space({key: expression}, [])
    assert str(raised.value).startswith(f"{key}=")
    assert reach in str(raised.value)


def test_conditional_and_fixed_params_are_checked_too() -> None:
    with pytest.raises(PlateauError, match=r"^freeze\.milestones=.*reaches \[3,1\]"):
        parse_search_space({"freeze": "choice(depth, gradual)"}, [], {
            "freeze.milestones": {"when": "freeze=gradual", "space": "choice([1],[3,1])"}})
    with pytest.raises(PlateauError, match=r"^trainer\.max_epochs=0: .*search space"):
        parse_search_space({"optimizer.lr": "interval(0.001, 0.01)",
                            "trainer.max_epochs": "0"}, [])


# The held-out mistakes, through the real entry point: exit 2, the key named, no
# traceback, nothing left behind.
CLI = {
    "lr not a number": (["optimizer.lr=fast"], "optimizer.lr=fast"),
    "negative lr": (["optimizer.lr=-0.1"], "optimizer.lr=-0.1"),
    "dropout above 1": (["regularization.dropout=1.5"], "regularization.dropout=1.5"),
    "smoothing above 1": (["regularization.label_smoothing=2"],
                          "regularization.label_smoothing=2"),
    "negative workers": (["data.num_workers=-2"], "data.num_workers=-2"),
    "no epochs": (["trainer.max_epochs=0"], "trainer.max_epochs=0"),
    "negative backbone lr": (["lr_schedule.backbone_lr_mult=-1"],
                             "lr_schedule.backbone_lr_mult=-1"),
    "unknown precision": (["trainer.precision=17"], "trainer.precision=17"),
    "milestones backwards": (["freeze=gradual", "freeze.milestones=[3,1]"],
                             "freeze.milestones=[3, 1]"),
    "sweep: base value": (["-m", "optimizer.lr=-1"], "optimizer.lr=-1"),
    "sweep: space out of range": (["-m", "regularization.dropout=interval(0.0,1.5)"],
                                  "regularization.dropout=interval(0.0, 1.5)"),
    "unreachable tracking server": (["logger.tracking_uri=http://127.0.0.1:9"],
                                    "logger.tracking_uri=http://127.0.0.1:9"),
}


@pytest.mark.parametrize("case", sorted(CLI))
def test_mistake_through_the_cli_is_exit_2_one_line_nothing_written(
        case: str, tmp_path: Path, sweep_here: Callable[..., Exited]) -> None:
    args, named = CLI[case]
    flags = [a for a in args if a == "-m"]
    result = sweep_here(*flags, *TINY, *(a for a in args if a != "-m"), cwd=tmp_path)
    assert result.returncode == 2, result.output[-3000:]
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"plateau: error: {named}"), errors[0]
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "plateau.db").exists()
    assert not (tmp_path / "mlruns").exists()


def test_a_weights_file_that_is_not_a_checkpoint_says_so(
        tmp_path: Path, sweep_here: Callable[..., Exited]) -> None:
    text = tmp_path / "weights.pth"
    text.write_text("these are not weights\n")
    result = sweep_here(*TINY, f"backbone.weights_file={text}", cwd=tmp_path)
    assert result.returncode == 2, result.output[-3000:]
    assert "Traceback" not in result.output
    assert f"backbone.weights_file={text} is not a torch checkpoint or safetensors" in (
        result.stderr)
    assert "weights_only=False" not in result.output


def test_an_input_the_architecture_cannot_take_is_one_line_before_training() -> None:
    """Inception v3 states no minimum to timm but cannot take 64 px: the one forward pass of
    a blank image when the backbone is built says so."""
    from lightning_modules.backbones import check_input_size, create_backbone

    backbone = create_backbone("inception_v3", pretrained=False)
    check_input_size(backbone, "inception_v3", 299)
    assert backbone.training
    with pytest.raises(PlateauError, match=r"^data\.image_size=64 is too small for backbone "
                                           r"inception_v3 \(.*\): use a larger"):
        check_input_size(backbone, "inception_v3", 64)
    assert backbone.training  # left as it was

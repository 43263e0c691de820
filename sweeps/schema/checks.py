"""Check a composed job config, and a sweep's search space, against the schemas."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from doctor.settings import PreflightSettings, Thresholds
from errors import PlateauError, one_line
from sweeps.objectives import Objectives
from sweeps.schema.knobs import KNOBS
from sweeps.schema.rules import ABSENT, Rule, mistake

SettingsT = TypeVar("SettingsT")

#: The smallest input side plateau accepts for a backbone without a stated minimum.
MIN_IMAGE_SIZE = 16

#: Every declared key's rule, by its dotted config key.
RULES: dict[str, Rule] = {schema.key(f.name): f.metadata["rule"]
                          for schema in KNOBS for f in dataclasses.fields(schema)}


def _value(cfg: DictConfig, key: str) -> Any:
    """The resolved value at ``key`` (containers as plain lists/dicts), or ABSENT."""
    try:
        value = OmegaConf.select(cfg, key, default=ABSENT, throw_on_missing=True)
    except OmegaConfBaseException as err:  # an interpolation naming a key that is not there
        raise PlateauError(f"{key}: its value cannot be resolved ({one_line(err, 200)}); fix "
                           "the interpolation or give a value") from err
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def check_config(cfg: DictConfig) -> None:
    """Every knob, the objective's direction, the doctor's settings and the image size
    against the backbone; the first wrong value is raised as one line.

    Raises:
        PlateauError: naming the key, the value and what is allowed.
    """
    for schema in KNOBS:
        names = [f.name for f in dataclasses.fields(schema)]
        given = {name: _value(cfg, schema.key(name)) for name in names}
        schema(**{name: value for name, value in given.items() if value is not ABSENT})
    metric, direction = _value(cfg, "objective.metric"), _value(cfg, "objective.direction")
    Objectives.parse("val/f1_macro" if metric is ABSENT else metric,
                     "maximize" if direction is ABSENT else direction)
    _check_doctor(cfg)
    _check_image_size(cfg)


def _check_doctor(cfg: DictConfig) -> None:
    """The doctor's ranges (types are ConfigStore's, at compose time)."""
    doctor_settings(cfg, "preflight", PreflightSettings)
    doctor_settings(cfg, "thresholds", Thresholds)


def doctor_settings(cfg: DictConfig, key: str, schema: type[SettingsT]) -> SettingsT:
    """``schema(**cfg.doctor.<key>)`` (its defaults where the config has no such node); a
    value out of range is one line naming it."""
    values = _value(cfg, f"doctor.{key}")
    try:
        return schema(**(values if isinstance(values, dict) else {}))
    except (TypeError, ValueError) as err:
        raise PlateauError(f"{one_line(err)}; fix the value (python sweep.py --cfg job "
                           "shows the current one)") from err


def minimum_image_size(backbone: str) -> int:
    """The smallest input side ``backbone`` takes: timm's ``min_input_size`` where the
    architecture states one (Inception v3: 75 px), else :data:`MIN_IMAGE_SIZE`."""
    import timm  # only when a size is given: the default keeps the pretrained size

    pretrained = timm.get_pretrained_cfg(backbone) if timm.is_model(backbone) else None
    stated = getattr(pretrained, "min_input_size", None) if pretrained is not None else None
    return max(MIN_IMAGE_SIZE, int(stated[-1])) if stated else MIN_IMAGE_SIZE


def _check_image_size(cfg: DictConfig) -> None:
    size, name = _value(cfg, "data.image_size"), _value(cfg, "backbone.name")
    if not isinstance(size, int) or not isinstance(name, str):
        return
    least = minimum_image_size(name)
    if size < least:
        raise PlateauError(f"data.image_size={size}: backbone {name} takes inputs of at least "
                           f"{least} px; set data.image_size to {least} or more, or null for "
                           "its pretrained size")


def _parsed(key: str, value: Any, rule: Rule) -> Any:
    """A value as a trial would compose it: a choice kept as override text (``[1,3]``) or a
    fixed param (``6``) parsed by Hydra's override grammar, as the trial's override is."""
    if not isinstance(value, str) or rule.kind == "text":
        return value
    try:
        parsed = OverridesParser.create().parse_override(f"{key}={value}").value()
    except HydraException:
        return value
    return list(parsed) if isinstance(parsed, (list, ListConfig)) else parsed


def _reached(dist: BaseDistribution) -> list[Any]:
    """The values of ``dist`` that decide whether all its values are in a range."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    assert isinstance(dist, (IntDistribution, FloatDistribution))
    return [dist.low, dist.high]


def check_space(distributions: dict[str, BaseDistribution], fixed: dict[str, str],
                described: dict[str, str]) -> None:
    """Every value a sweep could give a key with a rule, from its space's bounds (or
    choices), and every fixed param.

    Args:
        distributions: the sampled params (conditional ones included).
        fixed: params every trial gets, as override text.
        described: each param's space as the user wrote it, for the message.

    Raises:
        PlateauError: at the sweep's start, naming the key, the space and the allowed range.
    """
    for raw, dist in distributions.items():
        key = raw.lstrip("+~")
        rule = RULES.get(key)
        if rule is None:
            continue
        for value in _reached(dist):
            if not rule.accepts(_parsed(key, value, rule)):
                raise PlateauError(
                    f"{key}={described.get(raw, raw)}: the search space reaches {value}, but "
                    f"{key} must be {rule.allowed()}; narrow the space (hydra.sweeper.params "
                    "or the command line)")
    for raw, value in fixed.items():
        key = raw.lstrip("+~")
        rule = RULES.get(key)
        if rule is not None and not rule.accepts(_parsed(key, value, rule)):
            raise PlateauError(mistake(key, value, rule, "fix it in the search space "
                                       "(hydra.sweeper.params or the command line)"))

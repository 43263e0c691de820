"""One declaration per key: its type and allowed range, written as a dataclass field.

A knob schema (:mod:`sweeps.schema.knobs`) is a dataclass whose fields are made by
:func:`number`, :func:`integer`, :func:`flag`, :func:`text`, :func:`pair` or :func:`ints`.
Each field carries a :class:`Rule` in its metadata; :class:`Checked.__post_init__` tests
every value that was given against its rule and raises :class:`~errors.PlateauError` naming
the key, the value and what is allowed. A field that was not given keeps :data:`ABSENT`
(a choice file that does not use the key), so one schema serves every choice of a group.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from errors import PlateauError


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


#: The default of every schema field: the composed config does not have the key.
ABSENT: Any = _Absent()


def _number_text(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Rule:
    """What one key accepts.

    Attributes:
        kind: ``number`` (int or float), ``integer``, ``flag`` (true/false), ``text``,
            ``pair`` (two numbers, low <= high), ``numbers`` (a list of numbers, e.g. one
            per channel) or ``ints`` (a list of integers).
        low / high: bounds of a number (of each item of a pair or list); None: unbounded.
        low_open / high_open: the bound itself is excluded.
        choices: the only values allowed (text, or the exact values of a flag/number).
        nullable: null is allowed (it means "the default", as the config comments say).
        increasing: the items of an ``ints`` list strictly increase.
        means: what the value is, for the message.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    increasing: bool = False
    means: str = ""

    def allowed(self) -> str:
        """``a number > 0``, ``an integer >= 1``, ``a number in [0, 1)``, ``one of a, b``."""
        if self.choices is not None:
            text = f"one of {', '.join(dict.fromkeys(map(str, self.choices)))}"
        else:
            text = {"number": "a number", "integer": "an integer", "flag": "true or false",
                    "text": "text", "pair": "a pair [low, high] of numbers",
                    "numbers": "a list of numbers", "ints": "a list of integers"}[self.kind]
            text += self._bounds()
            if self.increasing:
                text += ", strictly increasing"
        return f"null or {text}" if self.nullable else text

    def _bounds(self) -> str:
        low, high = self.low, self.high
        each = " each" if self.kind in ("pair", "numbers", "ints") else ""
        if low is not None and high is not None:
            return (f"{each} in {'(' if self.low_open else '['}{_number_text(low)}, "
                    f"{_number_text(high)}{')' if self.high_open else ']'}")
        if low is not None:
            return f"{each} {'>' if self.low_open else '>='} {_number_text(low)}"
        if high is not None:
            return f"{each} {'<' if self.high_open else '<='} {_number_text(high)}"
        return ""

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (as composed, or as a search space would sample it) is allowed."""
        if value is None:
            return self.nullable
        if self.choices is not None:
            return any(value == c and type(value) is type(c) for c in self.choices)
        if self.kind == "flag":
            return isinstance(value, bool)
        if self.kind == "text":
            return isinstance(value, str) and bool(value.strip())
        if self.kind in ("number", "integer"):
            return self._in_range(value)
        items = list(value) if _is_sequence(value) else None
        if items is None or not items or not all(self._in_range(v) for v in items):
            return False
        if self.kind == "pair":
            return len(items) == 2 and items[0] <= items[1]
        if self.kind == "numbers":
            return True
        if not all(isinstance(v, int) for v in items):
            return False
        return not self.increasing or all(b > a for a, b in zip(items, items[1:], strict=False))

    def _in_range(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "integer" and not isinstance(value, int):
            return False
        if math.isnan(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high
                                         or (self.high_open and value == self.high))


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def _field(rule: Rule) -> Any:
    return field(default=ABSENT, metadata={"rule": rule})


def number(*, gt: float | None = None, ge: float | None = None, lt: float | None = None,
           le: float | None = None, nullable: bool = False, means: str = "") -> Any:
    """A float (an int is accepted) within the given bounds."""
    return _field(Rule("number", low=gt if gt is not None else ge,
                       high=lt if lt is not None else le, low_open=gt is not None,
                       high_open=lt is not None, nullable=nullable, means=means))


def integer(*, ge: float | None = None, le: float | None = None, nullable: bool = False,
            means: str = "") -> Any:
    """An int within the given (inclusive) bounds."""
    return _field(Rule("integer", low=ge, high=le, nullable=nullable, means=means))


def flag(*, nullable: bool = False, choices: tuple[Any, ...] | None = None,
         means: str = "") -> Any:
    """true or false (or exactly one of ``choices``, e.g. ``(True, False, "warn")``)."""
    return _field(Rule("flag", choices=choices, nullable=nullable, means=means))


def text(*, choices: tuple[Any, ...] | None = None, nullable: bool = False,
         means: str = "") -> Any:
    """Non-empty text, or one of ``choices``."""
    return _field(Rule("text", choices=choices, nullable=nullable, means=means))


def pair(*, gt: float | None = None, ge: float | None = None, le: float | None = None,
         nullable: bool = False, means: str = "") -> Any:
    """``[low, high]``: two numbers within the bounds, low <= high."""
    return _field(Rule("pair", low=gt if gt is not None else ge, high=le,
                       low_open=gt is not None, nullable=nullable, means=means))


def numbers(*, gt: float | None = None, nullable: bool = False, means: str = "") -> Any:
    """A non-empty list of numbers, each > ``gt`` when given."""
    return _field(Rule("numbers", low=gt, low_open=gt is not None, nullable=nullable,
                       means=means))


def ints(*, ge: float | None = None, increasing: bool = False, nullable: bool = False,
         means: str = "") -> Any:
    """A non-empty list of integers, each >= ``ge``."""
    return _field(Rule("ints", low=ge, increasing=increasing, nullable=nullable, means=means))


def rule_of(schema: type, name: str) -> Rule | None:
    """The rule of field ``name`` of ``schema``; None when the schema does not declare it."""
    for f in dataclasses.fields(schema):
        if f.name == name:
            return f.metadata.get("rule")
    return None


def mistake(key: str, value: Any, rule: Rule,
            fix: str = "fix the value (python sweep.py --cfg job shows the current one)") -> str:
    """The one line for a value ``rule`` refuses."""
    shown = "null" if value is None else value
    what = f" ({rule.means})" if rule.means else ""
    return f"{key}={shown}: {key}{what} must be {rule.allowed()}; {fix}"


@dataclass
class Checked:
    """A schema whose given values are tested against their rules when it is built.

    Subclasses set :attr:`node`, the dotted key of the config node they describe.
    """

    node: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, rule = getattr(self, f.name), f.metadata.get("rule")
            if value is ABSENT or rule is None or rule.accepts(value):
                continue
            raise PlateauError(mistake(self.key(f.name), value, rule))

    @classmethod
    def key(cls, name: str) -> str:
        """The dotted config key of field ``name``."""
        return f"{cls.node}.{name}" if cls.node else name

    @classmethod
    def check(cls, values: Mapping[str, Any]) -> None:
        """Test the keys of a composed node that this schema declares (others, such as
        ``_target_`` or a key added with ``+``, are the target's to judge)."""
        names = {f.name for f in dataclasses.fields(cls)}
        cls(**{k: v for k, v in values.items() if k in names})

"""User-facing errors: one line that names the problem and the fix, never a traceback.

The ground floor of the house: models, data, the doctor and the orchestration all raise and
print these, so this package imports nothing of plateau's own (rich and the standard library
only).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

from rich.console import Console
from rich.markup import escape

T = TypeVar("T")

#: plateau's one console for what a person reads (stderr keeps stdout clean for results).
console = Console(stderr=True, highlight=False, soft_wrap=True)


class PlateauError(Exception):
    """A mistake the user can fix: bad config value, unusable data, unavailable weights.

    The message is a single line saying what is wrong and how to fix it.
    """


def one_line(text: object, limit: int = 500) -> str:
    """``text`` with all whitespace runs (newlines included) collapsed, cut to ``limit``."""
    return " ".join(str(text).split())[:limit]


def error_line(err: BaseException, limit: int = 500) -> str:
    """``<ExceptionType>: <message>`` on one line: how a trial's failure is recorded."""
    return one_line(f"{type(err).__name__}: {err}", limit)


def report_user_error(err: PlateauError) -> None:
    """Print ``err`` as plateau's one-line error."""
    # escaped: a message quoting a path or a library's error may hold "[...]", which rich
    # would otherwise read as markup (and fail on)
    console.print(f"[bold red]plateau: error:[/] {escape(str(err))}", soft_wrap=True)


def exit_on_user_error(func: Callable[..., T]) -> Callable[..., T]:
    """Turn a :class:`PlateauError` raised by ``func`` into a one-line message and exit code 2."""

    # The wrapper is pickled by value when a launcher (joblib, submitit) ships the task to
    # another process: it must reference only importable names, never the console itself.
    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> T:
        try:
            return func(*args, **kwargs)
        except PlateauError as err:
            report_user_error(err)
            sys.exit(2)

    return wrapper

"""Hydra's own errors (composing the config, parsing the command line) as plateau's one line.

``hydra.main`` reports these itself, over several lines (a group's options, the config search
path, a hint about ``HYDRA_FULL_ERROR``), and exits 1. :func:`one_line_hydra_errors` sets
``HYDRA_FULL_ERROR=1`` so that Hydra raises them instead, and reports each as plateau's
one-line error with exit code 2, like every other mistake; any other error keeps its full
traceback. A user who sets ``HYDRA_FULL_ERROR=1`` gets Hydra's full reports for everything.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator

from hydra.errors import (
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from errors import PlateauError, one_line, report_user_error

FULL_ERROR = "HYDRA_FULL_ERROR"
GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"
#: Where Hydra's messages stop saying what is wrong (and start listing search paths or links).
_TRAILERS = ("Config search path:", "Search path:", "See https://")
_SWEPT_HYDRA = re.compile(r"Sweeping over Hydra's configuration is not supported : '(.*)'")
_PARAMS = "hydra.sweeper.params."


def _what(text: str) -> str:
    """Hydra's message up to its trailers, as one line, without the ``In 'config':`` prefix."""
    lines = []
    for line in text.splitlines():
        if line.strip().startswith(_TRAILERS):
            break
        lines.append(line)
    return one_line(re.sub(r"^In '[^']*': ", "", " ".join(lines))).rstrip(".")


def _shown_by(key: str) -> str:
    """The command that prints the config node holding ``key``."""
    return f"python sweep.py --cfg {'hydra' if key.startswith('hydra.') else 'job'}"


def _missing_option(group_option: str, options: list[str]) -> str:
    group, _, name = group_option.rpartition("/")
    return (f"{group}={name}: the config group {group} has no option {name}; use one of "
            f"{', '.join(options)}")


def _unknown_key(err: ConfigCompositionException, key: str) -> str:
    parent, _, name = key.rpartition(".")
    where = f"{parent} has no key {name}" if parent else f"no config group or key {key}"
    append = re.search(r"use (\+\S+)", str(err))
    added = append.group(1) if append else f"+{key}=VALUE"
    return (f"{key}: {where}; check the spelling ({_shown_by(key)} shows the keys, "
            f"--help the groups), or add a new key with {added}")


def _search_instead(key: str, value: str, how: str = "") -> str:
    """The fix for a search expression given as ``hydra.sweeper.params.<name>=value``."""
    return (f"sweep {key[len(_PARAMS):]}={value}{how} instead (or list it under "
            "hydra.sweeper.params in a conf/search/ file)")


def _swept_hydra_setting(override: str) -> str:
    key, _, value = override.partition("=")
    if not key.startswith(_PARAMS):
        return f"{override}: Hydra sweeps none of its own settings; give {key} one value"
    return (f"{override}: Hydra sweeps none of its own settings; "
            f"{_search_instead(key, value, ' on the command line')}")


def _params_override(arguments: list[str]) -> PlateauError | None:
    """A quoted search expression set under ``hydra.sweeper.params``: the parameters' names
    are dotted (``optimizer.lr``), which OmegaConf reads as nested keys that do not exist,
    failing with a bare ``AssertionError`` naming no key."""
    for argument in arguments:
        if argument.startswith(_PARAMS) and "=" in argument:
            key, _, value = argument.partition("=")
            expression = value.strip("'\"")  # the shell's quotes, kept by the inner ones
            return PlateauError(
                f"{argument}: search parameters cannot be set under hydra.sweeper.params from "
                f"the command line; {_search_instead(key, expression)}")
    return None


def hydra_mistake(err: ConfigCompositionException | OverrideParseException) -> PlateauError:
    """The one-line error for a mistake Hydra found in the config or the command line."""
    cause = err.__cause__
    if isinstance(err, OverrideParseException):
        reason = _what(str(err)).replace(f"Error parsing override '{err.override}' ", "")
        return PlateauError(f"cannot parse the override '{err.override}' ({reason}); write it "
                            f"in Hydra's override grammar ({GRAMMAR})")
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        return PlateauError(_missing_option(err.missing_cfg_file, list(err.options)))
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        return PlateauError(_unknown_key(err, cause.full_key))
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:  # e.g. a wrong type
        reason = str(cause).splitlines()[0]
        return PlateauError(f"{cause.full_key}={cause.value}: {reason}; fix the value "
                            f"({_shown_by(cause.full_key)} shows the current one)")
    swept = _SWEPT_HYDRA.search(str(err))
    if swept:
        return PlateauError(_swept_hydra_setting(swept.group(1)))
    return PlateauError(f"{_what(str(err))}; check the command line (python sweep.py --help "
                        "lists the config groups and their options)")


@contextlib.contextmanager
def one_line_hydra_errors() -> Iterator[None]:
    """Around ``hydra.main``: a mistake Hydra finds in the config or the command line ends
    with plateau's one-line error and exit code 2 (the task and plateau's callback report
    their own: :func:`errors.exit_on_user_error`)."""
    if os.environ.get(FULL_ERROR) == "1":  # the user asked for Hydra's full reports
        yield
        return
    os.environ[FULL_ERROR] = "1"  # Hydra raises what it would print
    try:
        yield
    except (ConfigCompositionException, OverrideParseException) as err:
        report_user_error(hydra_mistake(err))
        sys.exit(2)
    except AssertionError as err:
        mistake = _params_override(sys.argv[1:]) if "Unexpected type: None" in str(err) else None
        if mistake is None:
            raise
        report_user_error(mistake)
        sys.exit(2)
    finally:
        os.environ.pop(FULL_ERROR, None)

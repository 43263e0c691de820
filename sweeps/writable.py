"""Folders plateau writes to: one it cannot create is a one-line error before anything starts.

Checked by creating nothing: the nearest existing folder on the way must be a folder this
process may write in. (Run as root, permission bits stop nothing; a path under a regular
file fails for everyone.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from errors import PlateauError, exit_on_user_error


def check_folder(folder: Path, key: str, value: object) -> None:
    """Raise a :class:`PlateauError` naming ``key=value`` unless ``folder`` is, or can be
    created as, a folder this process can write in."""
    existing = folder.absolute()
    while not existing.exists():  # False too below a regular file (ENOTDIR)
        existing = existing.parent
    if not existing.is_dir():
        raise PlateauError(f"{key}={value}: {existing} is a file, not a folder; give {key} a "
                           "path under a folder you can write in")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PlateauError(f"{key}={value}: cannot write in {existing}; give {key} a path "
                           "under a folder you can write in")


class OutputDirCheck(Callback):
    """Hydra callback (``hydra.callbacks.output_dir``): the run or sweep folder must be
    creatable, checked before the run's folder, a study, or an MLflow run exists.

    Hydra turns a callback's exception into a warning, so a mistake exits here (code 2).
    """

    @exit_on_user_error
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_folder(Path(config.hydra.run.dir), "hydra.run.dir", config.hydra.run.dir)

    @exit_on_user_error
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_folder(Path(config.hydra.sweep.dir), "hydra.sweep.dir", config.hydra.sweep.dir)

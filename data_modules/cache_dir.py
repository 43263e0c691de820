"""Where plateau keeps what it computes once and reuses: image fingerprints (the doctor's
leakage checks), decoded images and frozen backbone features."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "PLATEAU_CACHE_DIR"


def cache_root(configured: str | None) -> Path:
    """plateau's cache folder: ``cache_dir`` if set, else ``$PLATEAU_CACHE_DIR``, else
    ``~/.cache/plateau``."""
    return Path(configured or os.environ.get(CACHE_ENV) or "~/.cache/plateau").expanduser()

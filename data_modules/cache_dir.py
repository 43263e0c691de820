"""Where plateau keeps what it computes once and reuses: image fingerprints (the doctor's
leakage checks), decoded images and frozen backbone features."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

CACHE_ENV = "PLATEAU_CACHE_DIR"


def cache_root(configured: str | None) -> Path:
    """plateau's cache folder: ``cache_dir`` if set, else ``$PLATEAU_CACHE_DIR``, else
    ``~/.cache/plateau``."""
    return Path(configured or os.environ.get(CACHE_ENV) or "~/.cache/plateau").expanduser()


@contextlib.contextmanager
def publish_entry(folder: Path) -> Iterator[Path]:
    """A staging folder beside ``folder`` to write a cache entry into.

    When the block ends without an error the staging folder is renamed to ``folder`` in one
    step, so concurrent readers never see a half-written entry; if another process published
    ``folder`` first, theirs is kept. The staging folder is always removed.
    """
    with staging_folder(folder) as staging:
        yield staging
        publish(staging, folder)


@contextlib.contextmanager
def staging_folder(folder: Path) -> Iterator[Path]:
    """An empty folder beside ``folder``, removed when the block ends (unless published)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, folder: Path) -> None:
    """Rename a finished ``staging`` folder to ``folder`` in one step; if another process
    published ``folder`` first, theirs is kept."""
    try:
        staging.rename(folder)
    except OSError:
        if not folder.is_dir():
            raise


def discard_entry(folder: Path) -> None:
    """Move a damaged cache entry out of the way (atomically), then delete it."""
    trash = folder.with_name(f".{folder.name}.{os.getpid()}.damaged")
    try:
        folder.rename(trash)
    except OSError:  # another process moved it first
        return
    shutil.rmtree(trash, ignore_errors=True)

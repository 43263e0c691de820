"""Where a study lives: the storage URL, its default, and how it is shown to people."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write
from optuna.storages import BaseStorage

from errors import PlateauError
from sweeps.races import creating_sqlite, retrying, sqlite_file

DEFAULT_STORAGE_FILE = "plateau.db"
#: The study of ``study_name: null`` (as lightning-hydra-template files have it).
DEFAULT_STUDY_NAME = "plateau"
_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*:)(?P<password>[^@/]*)@")


def launch_dir() -> Path:
    """The directory ``sweep.py`` was started from (Hydra jobs may run elsewhere)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


def mask_password(text: str) -> str:
    """Replace the password of every ``scheme://user:password@host`` in ``text`` by ``***``."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***@", text)


def resolve_storage_url(storage: str | None) -> str:
    """The study's storage URL; None means ``sqlite:///<launch dir>/plateau.db``.

    The default lies outside Hydra's timestamped multirun folder, so re-running the same
    command finds and continues the same study. A relative ``sqlite:///file.db`` is anchored
    at the launch directory; ``journal:///path/file.log`` selects Optuna's journal file
    storage (no server; NFS-friendly).
    """
    if storage is None:
        return f"sqlite:///{launch_dir() / DEFAULT_STORAGE_FILE}"
    for prefix in ("sqlite:///", "journal:///"):
        if storage.startswith(prefix) and not Path(storage[len(prefix):]).is_absolute():
            return prefix + str(launch_dir() / storage[len(prefix):])
    return storage


#: Carries a storage URL with a password from the sweeper to its jobs (child processes
#: inherit it), so that Hydra's saved job configs only ever hold the masked URL.
STORAGE_URL_ENV = "PLATEAU_STORAGE_URL"


def hide_storage_password(config: DictConfig, url: str) -> None:
    """Mask ``url``'s password in the sweep config Hydra saves and hands to jobs.

    The real URL goes to the jobs through :data:`STORAGE_URL_ENV`; see :func:`job_storage_url`.
    """
    masked = mask_password(url)
    if masked == url:
        return
    os.environ[STORAGE_URL_ENV] = url
    with read_write(config), open_dict(config):
        config.hydra.sweeper.storage = masked
        overrides = config.hydra.overrides
        overrides.hydra = [mask_password(o) for o in overrides.hydra]
        overrides.task = [mask_password(o) for o in overrides.task]


def job_storage_url(configured: str | None) -> str:
    """The storage URL a job reports to: the sweeper's real URL if its config holds the mask."""
    url = resolve_storage_url(configured)
    real = os.environ.get(STORAGE_URL_ENV)
    return real if real and mask_password(real) == url else url


def storage_file(url: str) -> Path | None:
    """The file a ``sqlite:///`` or ``journal:///`` URL stores in; None for a server."""
    if url.startswith("journal:///"):
        return Path("/" + url[len("journal:///"):].lstrip("/"))
    return sqlite_file(url)


#: Seconds a sqlite connection waits for another worker's write lock before failing.
SQLITE_LOCK_TIMEOUT_S = 60


def open_storage(url: str) -> BaseStorage:
    """The Optuna storage of ``url``, ready for several workers at once.

    sqlite waits up to :data:`SQLITE_LOCK_TIMEOUT_S` for other workers' writes (not 5 s);
    workers opening a new database together take turns creating its tables
    (:func:`sweeps.races.creating_sqlite`), and on a server retry instead of failing on each
    other's (:func:`sweeps.races.retrying`).
    """
    path = storage_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("journal:///"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        assert path is not None
        return JournalStorage(JournalFileBackend(str(path)))
    from optuna.storages import RDBStorage

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite:"):
        engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}}
    with creating_sqlite(url):
        rdb = retrying(f"opening {mask_password(url)}",
                       lambda: RDBStorage(url, engine_kwargs=engine_kwargs))
    return optuna.storages.get_storage(rdb)  # with Optuna's cache of finished trials


#: The open storage of the sweep running in this process, by (pid, url): see :func:`sharing`.
_SWEEPS: dict[tuple[int, str], BaseStorage] = {}


@contextlib.contextmanager
def sharing(url: str, storage: BaseStorage) -> Iterator[None]:
    """While a sweep runs, trials it runs in its own process (Hydra's basic launcher) load
    its study through its open ``storage``, and with it Optuna's cache of finished trials: a
    trial's reads of a study of thousands of trials then take milliseconds, not the seconds
    of a fresh load (``benchmarks/orchestration_growth.py``). Trials in other processes
    (joblib, SLURM) open their own."""
    key = (os.getpid(), url)
    _SWEEPS[key] = storage
    try:
        yield
    finally:
        _SWEEPS.pop(key, None)


def load_study(url: str, study_name: str, pruner: Any = None) -> optuna.Study:
    """Load an existing study (the pruner is not stored: pass the sweep's own).

    A storage file that does not exist is an error, not created empty.
    """
    path = storage_file(url)
    if path is not None and not path.is_file():
        raise PlateauError(f"no study storage at {path}: check hydra.sweeper.storage (a "
                           "relative sqlite path is resolved in the folder the sweep ran from)")
    storage = _SWEEPS.get((os.getpid(), url)) or open_storage(url)
    try:
        return optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
    except KeyError as err:
        raise PlateauError(f"no study '{study_name}' in {mask_password(url)}: check "
                           "hydra.sweeper.study_name and hydra.sweeper.storage") from err

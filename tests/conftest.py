"""Shared fixtures: composed configs shrunk for speed, real MLflow stores in tmp dirs.

The suite runs on several test workers (pytest-xdist, ``-n auto`` in pyproject.toml). Tests
that read one expensive module-scoped run (a sweep, a fault and its re-run) carry the same
``xdist_group``, so that run happens once, on one worker.
"""

from __future__ import annotations

import logging
import os
import runpy
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from benchmarks.throwaway_postgres import throwaway_postgres

# No test may reach a network: the hub counts as offline, MLflow sends no telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
# One torch thread per process: the test trials are tiny (a second thread only waits), and the
# test workers and the sweeps they start share the cores. Set before anything imports torch;
# the sweeps started as subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The doctor's fingerprint cache of this test session, never the user's ~/.cache/plateau.
os.environ.setdefault("PLATEAU_CACHE_DIR", tempfile.mkdtemp(prefix="plateau-cache-"))

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

#: A trial that takes about a second: generated stripes, timm's tiny ResNet, one epoch.
TINY = ["data=synthetic", "backbone=test_resnet", "trainer=cpu", "trainer.max_epochs=1"]

#: Runs the command that follows it with a 1 MiB tmpfs mounted on the folder given first (a
#: test_resnet checkpoint is ~4 MiB), in a mount namespace of its own (root's, or for anyone
#: else inside a user namespace of their own): the mount vanishes with the process. What the
#: tmpfs held at the end is listed in ``<folder>.left`` (one path per line).
TINY_DISK = ["unshare", "--mount",
             *([] if os.geteuid() == 0 else ["--user", "--map-root-user"]), "sh", "-c",
             'mount -t tmpfs -o size=1m tmpfs "$0" || exit 97; "$@"; code=$?; '
             'find "$0" -type f > "$0.left"; exit $code']


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The shared runs first (they are the longest units of work), so that no worker is left
    alone with one at the end; each run's tests stay together and in order."""
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one test worker per core, at most 4 (each holds torch and Lightning, and
    the sweeps it starts run beside it)."""
    return max(1, min(os.cpu_count() or 1, 4))


def compose_config(overrides: list[str], keep_hydra: bool = False) -> DictConfig:
    """Compose ``conf/config.yaml`` as ``sweep.py`` would, with Hydra's runtime info set.

    The ``hydra`` node is removed (as in a job's config) unless ``keep_hydra``.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    if keep_hydra:
        return cfg
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@dataclass
class Exited:
    """How ``python sweep.py`` ended: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def sweep_here(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
               ) -> Callable[..., Exited]:
    """``sweep_here(*args, cwd=...)``: ``python sweep.py *args`` in ``cwd``, run in this test
    process: the same ``__main__`` block (Hydra's and plateau's error handling, the exit
    code), without a new interpreter's seconds of imports. For mistakes that end before a
    trial trains; ``test_cli`` shows a real process ends the same way.
    """
    def run(*args: str, cwd: Path) -> Exited:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", [str(ROOT / "sweep.py"), *args])
        handlers, level = logging.root.handlers[:], logging.root.level  # Hydra sets its own
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # a config an earlier test composed is not this run's
        capfd.readouterr()
        code = 0
        try:
            runpy.run_path(str(ROOT / "sweep.py"), run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            GlobalHydra.instance().clear()
            for handler in set(logging.root.handlers) - set(handlers):
                handler.close()
            logging.root.handlers[:] = handlers
            logging.root.setLevel(level)
        out, err = capfd.readouterr()
        return Exited(code, out, err)

    return run


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(*overrides)``: the tiny trial config, MLflow in ``tmp_path/mlflow.db``."""

    def make(*overrides: str, tiny: bool = True) -> DictConfig:
        base = [*TINY] if tiny else []
        store = [] if "logger=none" in overrides else [
            f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
        return compose_config([*base, *store, *overrides])

    return make


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    """A regular file: no folder can be created below it, not even by root (whom permission
    bits do not stop)."""
    path = tmp_path / "afile"
    path.write_text("a file, not a folder\n")
    return path


# -- a real PostgreSQL server ----------------------------------------------------------------
# initdb + pg_ctl from Debian's postgresql package (.ci/run installs it when missing), on a
# free loopback port, as the ``postgres`` user when run as root (PostgreSQL refuses root):
# the benchmarks' recipe (benchmarks/throwaway_postgres.py), one server per test session.


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with throwaway_postgres() as urls:
        yield urls["postgres"]

"""A single-node SLURM cluster on this machine, for the tests of the SLURM launcher path.

munged, slurmctld and slurmd from Debian's ``slurm-wlm`` and ``munge`` packages run on this
host as root, with every file (key, sockets, spool, state, logs) in a temp folder and free
loopback ports, so nothing under ``/etc`` or ``/run`` is read or written: the clients find the
cluster through ``SLURM_CONF``, which the sweeps started by the tests and their sbatch jobs
inherit (sbatch exports the environment; submitit runs the job with the submitting
``sys.executable``). With ``accounting=True`` slurmdbd records the jobs in a throwaway MariaDB
server, as on a real cluster, and ``sacct`` works; without it ``sacct`` fails, as on a
cluster without job accounting. Each daemon runs in the foreground as a child of the test
process and is stopped by its pid.

``.ci/run`` installs the packages when missing. Jobs run as the submitting user, and slurmd
must be able to start them as that user, so the cluster needs root: :func:`missing` says why
it cannot start here.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

#: The partition the tests submit to.
PARTITION = "plateau"
#: The commands a test calls, beside the daemons.
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo", "sacct")
DAEMONS = ("munged", "slurmctld", "slurmd")
ACCOUNTING_DAEMONS = ("slurmdbd", "mariadbd", "mariadb-install-db")
#: Seconds a daemon (or the whole cluster) gets to come up.
START_TIMEOUT_S = 60


class ClusterError(RuntimeError):
    """The cluster did not come up; the message holds the daemon's log tail."""


def missing(accounting: bool) -> str | None:
    """Why the cluster cannot start on this machine (not root, a command absent), or None."""
    if os.geteuid() != 0:
        return "a SLURM cluster's slurmd starts jobs as their user: it needs root"
    needed = (*DAEMONS, *CLIENTS, *(ACCOUNTING_DAEMONS if accounting else ()))
    absent = [name for name in needed if _which(name) is None]
    if absent:
        return (f"{', '.join(absent)} not found: install Debian's slurm-wlm, munge"
                f"{', slurmdbd, mariadb-server' if accounting else ''} (.ci/run does)")
    return None


class Cluster:
    """A running cluster: ``env`` points its clients at it, ``run`` runs one of them."""

    def __init__(self, home: Path, accounting: bool) -> None:
        self.home = home
        self.accounting = accounting
        self.conf = home / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._daemons: list[tuple[str, subprocess.Popen[bytes]]] = []

    def run(self, *command: str, check: bool = True) -> str:
        """Run a SLURM client command against this cluster; its stdout."""
        done = subprocess.run(command, env=self.env, capture_output=True, text=True,
                              timeout=60)
        if check and done.returncode != 0:
            raise ClusterError(f"{' '.join(command)}: {done.stderr.strip()}")
        return done.stdout

    def job_state(self, job_id: str) -> str:
        """The state slurmctld holds for ``job_id`` (``123`` or ``123_0``); "" once forgotten."""
        out = self.run("squeue", "--noheader", "--states=all", "--format=%T", "--jobs",
                       job_id, check=False)
        return out.strip().splitlines()[0] if out.strip() else ""

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def start_daemon(self, name: str, *command: str) -> subprocess.Popen[bytes]:
        """Start ``command`` in the foreground, its output in ``<name>.out``."""
        out = (self.home / f"{name}.out").open("wb")
        proc = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        self._daemons.append((name, proc))
        return proc

    def wait_until(self, ready: Callable[[], bool], name: str, what: str) -> None:
        """Wait for ``ready()``; the daemon ``name`` exiting or taking too long is an error."""
        deadline = time.monotonic() + START_TIMEOUT_S
        proc = dict(self._daemons)[name]
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                out = self.home / f"{name}.out"
                raise ClusterError(f"{name} did not start ({what}): "
                                   f"{out.read_text(errors='replace')[-2000:]}"
                                   f"{self.log(name)}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Cancel every job, then stop the daemons by pid, last started first."""
        if any(name == "slurmctld" and proc.poll() is None for name, proc in self._daemons):
            self.run("scancel", "--full", f"--partition={PARTITION}", check=False)
            deadline = time.monotonic() + 15
            while self._running_jobs() and time.monotonic() < deadline:
                time.sleep(0.2)
        for _name, proc in reversed(self._daemons):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._daemons.clear()

    def _running_jobs(self) -> bool:
        out = self.run("squeue", "--noheader", "--format=%i", check=False)
        return bool(out.strip())


@contextmanager
def cluster(accounting: bool) -> Iterator[Cluster]:
    """Start the cluster (with slurmdbd and MariaDB when ``accounting``), stop it at exit."""
    home = Path(tempfile.mkdtemp(prefix="plateau-slurm-"))
    os.chmod(home, 0o755)  # munged refuses a socket folder others can write; sticky /tmp is ok
    running = Cluster(home, accounting)
    try:
        _start_cluster(running)
        yield running
    finally:
        running.stop()
        shutil.rmtree(home, ignore_errors=True)


def _start_cluster(running: Cluster) -> None:
    home = running.home
    ports = {name: _free_port() for name in ("slurmctld", "slurmd", "slurmdbd", "mariadb")}
    munge_socket = home / "munge" / "munge.socket"
    _start_munge(running, munge_socket)
    if running.accounting:
        _start_accounting(running, ports, munge_socket)
    running.conf.write_text(_slurm_conf(home, ports, munge_socket, running.accounting))
    (home / "state").mkdir()
    (home / "spool").mkdir()
    running.start_daemon("slurmctld", _which_or_fail("slurmctld"), "-D", "-i")
    running.wait_until(lambda: _listening(ports["slurmctld"]), "slurmctld", "listening")
    running.start_daemon("slurmd", _which_or_fail("slurmd"), "-D")
    running.wait_until(lambda: _node_idle(running), "slurmd", "node idle")


def _start_munge(running: Cluster, munge_socket: Path) -> None:
    folder = munge_socket.parent
    folder.mkdir(mode=0o755)
    key = folder / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    running.start_daemon("munged", _which_or_fail("munged"), "--foreground", "--force",
                         f"--socket={munge_socket}", f"--key-file={key}",
                         f"--pid-file={folder / 'munged.pid'}",
                         f"--log-file={running.home / 'munged.log'}",
                         f"--seed-file={folder / 'munged.seed'}")
    running.wait_until(munge_socket.exists, "munged", "socket")


def _start_accounting(running: Cluster, ports: dict[str, int], munge_socket: Path) -> None:
    """MariaDB on a loopback port without grant tables (only this cluster's slurmdbd reaches
    it), then slurmdbd over it."""
    home = running.home
    data = home / "mariadb"
    subprocess.run([_which_or_fail("mariadb-install-db"), f"--datadir={data}", "--user=root",
                    "--auth-root-authentication-method=normal", "--skip-test-db"],
                   check=True, capture_output=True, timeout=120)
    running.start_daemon("mariadb", _which_or_fail("mariadbd"), "--no-defaults",
                         f"--datadir={data}", "--user=root", "--bind-address=127.0.0.1",
                         f"--port={ports['mariadb']}", f"--socket={home / 'mariadb.sock'}",
                         f"--pid-file={home / 'mariadb.pid'}", "--skip-grant-tables",
                         "--skip-name-resolve", f"--log-error={home / 'mariadb.log'}")
    running.wait_until(lambda: _listening(ports["mariadb"]), "mariadb", "listening")
    dbd_conf = home / "slurmdbd.conf"  # found beside SLURM_CONF's slurm.conf
    dbd_conf.write_text("\n".join([
        "AuthType=auth/munge", f"AuthInfo=socket={munge_socket}", "DbdHost=localhost",
        "DbdAddr=127.0.0.1", f"DbdPort={ports['slurmdbd']}", "SlurmUser=root",
        "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1",
        f"StoragePort={ports['mariadb']}", "StorageUser=root", "StorageLoc=slurm_acct_db",
        f"PidFile={home / 'slurmdbd.pid'}", f"LogFile={home / 'slurmdbd.log'}", ""]))
    dbd_conf.chmod(0o600)
    running.conf.write_text("")  # slurmdbd reads its conf from SLURM_CONF's folder
    running.start_daemon("slurmdbd", _which_or_fail("slurmdbd"), "-D")
    running.wait_until(lambda: _listening(ports["slurmdbd"]), "slurmdbd", "listening")


def _slurm_conf(home: Path, ports: dict[str, int], munge_socket: Path,
                accounting: bool) -> str:
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    accounting_lines = [
        "AccountingStorageType=accounting_storage/slurmdbd",
        "AccountingStorageHost=localhost", f"AccountingStoragePort={ports['slurmdbd']}",
        f"AccountingStoragePass={munge_socket}",  # the munge socket for slurmdbd's link
        "JobAcctGatherType=jobacct_gather/linux", "JobAcctGatherFrequency=30",
    ] if accounting else ["AccountingStorageType=accounting_storage/none",
                          "JobAcctGatherType=jobacct_gather/none"]
    return "\n".join([
        "ClusterName=plateau", f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ports['slurmctld']}", f"SlurmdPort={ports['slurmd']}",
        "SlurmUser=root", "SlurmdUser=root",
        # cred_expire: also how long a requeued job waits before it starts again (120 s)
        "AuthType=auth/munge", f"AuthInfo=socket={munge_socket},cred_expire=10",
        "CredType=cred/munge",
        f"StateSaveLocation={home / 'state'}", f"SlurmdSpoolDir={home / 'spool'}",
        f"SlurmctldPidFile={home / 'slurmctld.pid'}", f"SlurmdPidFile={home / 'slurmd.pid'}",
        f"SlurmctldLogFile={home / 'slurmctld.log'}", f"SlurmdLogFile={home / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
        "SchedulerType=sched/backfill", "MpiDefault=none", "ReturnToService=2",
        "MailProg=/bin/true", "JobCompType=jobcomp/none", *accounting_lines,
        # a cancelled job gets SIGKILL 5 s after SIGTERM (submitit's job ignores SIGTERM)
        "KillWait=5", "MinJobAge=300", "InactiveLimit=0", "SlurmdTimeout=60",
        "MessageTimeout=10",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        ""])


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _node_idle(running: Cluster) -> bool:
    out = running.run("sinfo", "--noheader", "--format=%T", check=False)
    return out.strip() == "idle"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def _which_or_fail(name: str) -> str:
    found = _which(name)
    if found is None:
        raise ClusterError(f"{name} not found")
    return found

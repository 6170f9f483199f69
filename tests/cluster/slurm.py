"""A real, throw-away SLURM cluster on this host: munged, slurmctld and two slurmd.

Why a real one: the SLURM example (``examples/slurm/``) depends on what SLURM really does, its
environment variables (``SLURM_JOB_NODELIST``, ``SLURMD_NODENAME``, ``CUDA_VISIBLE_DEVICES``),
``srun`` placing one task per node, how ``scancel --signal`` and ``KillWait`` deliver SIGTERM
then SIGKILL, and ``scontrol requeue`` restarting the batch script. A mock would only repeat
our assumptions.

Everything lives in one temp folder: munge's key and socket, ``slurm.conf`` and
``cgroup.conf`` (``SLURM_CONF`` points the clients at it), state, spool and log folders. Two
``NodeName`` entries share this host (``NodeHostname=localhost``, different ``Port=``); each
``slurmd -N nodeX`` serves one. ``proctrack/linuxproc`` tracks a step's processes by parentage,
so no cgroups are needed (containers rarely allow them).

Teardown kills every daemon's process group and then every process that still carries this
cluster's ``SLURM_CONF`` in its environment (slurmstepd and job processes detach from the
daemons' groups, but inherit that variable): the path is unique to this cluster, so nothing
else is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.waiting import wait_until

NODES = ("node1", "node2")
CPUS_PER_NODE = 4  # more than the host has (config_overrides): room for a second job beside the first
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "scancel")


def missing_reason() -> str | None:
    """Why this host cannot run the cluster (None when it can): the tests skip with this."""
    if os.geteuid() != 0:
        return "SLURM cluster tests need root (slurmd runs jobs as their user; CI runs as root)"
    absent = [b for b in BINARIES if shutil.which(b) is None]
    if absent:
        return (f"SLURM cluster tests need Debian's slurm-wlm and munge packages (missing {', '.join(absent)}); "
                f"`bash .ci/install` as root installs them")
    return None


def _free_ports(count: int) -> list[int]:
    """Ports free right now on loopback (held together so that they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class SlurmCluster:
    """A running cluster rooted at ``root``; ``env`` is what a client command needs."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    # -- start ------------------------------------------------------------------------------

    @classmethod
    def start(cls, root: Path, kill_wait_s: int = 8) -> SlurmCluster:
        """Write the configuration, start munged, slurmctld and one slurmd per node, and wait
        until both nodes are idle. ``kill_wait_s`` is SLURM's ``KillWait``: the grace between
        the SIGTERM and the SIGKILL of a job or step that is cancelled, requeued or timed out."""
        cluster = cls(root=root)
        try:
            cluster._write_config(kill_wait_s)
            cluster._start_munge()
            cluster._start_daemon("slurmctld", ["slurmctld", "-D", "-i"])
            for node in NODES:
                cluster._start_daemon(f"slurmd-{node}", ["slurmd", "-D", "-N", node])
            wait_until(cluster._nodes_idle, 60, "both slurmd nodes idle", poll_s=0.3)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _write_config(self, kill_wait_s: int) -> None:
        for sub in ("etc", "munge", "state", "log", "spool", "shared"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        ctl_port, *node_ports = _free_ports(1 + len(NODES))
        host = socket.gethostname()
        nodes = "\n".join(
            f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} CPUs={CPUS_PER_NODE} "
            f"RealMemory=2000 State=UNKNOWN" for name, port in zip(NODES, node_ports, strict=True))
        r = self.root
        self.conf.write_text(f"""\
ClusterName=pbttest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctl_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge/munge.socket,cred_expire=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/state/slurmctld.pid
SlurmdPidFile={r}/spool/slurmd.%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={r}/log/jobcomp.txt
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
PreemptType=preempt/none
JobRequeue=1
KillWait={kill_wait_s}
ReturnToService=2
MinJobAge=300
InactiveLimit=0
{nodes}
PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
""")
        (self.conf.parent / "cgroup.conf").write_text("CgroupPlugin=autodetect\nIgnoreSystemd=yes\n")
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        m = self.root / "munge"
        self._start_daemon("munged", ["munged", "-F", "--force", f"--socket={m}/munge.socket", f"--key-file={key}",
                                      f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                                      f"--seed-file={m}/munged.seed"])
        wait_until((m / "munge.socket").exists, 20, "munged's socket", poll_s=0.1)

    def _start_daemon(self, name: str, argv: Sequence[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - kept open for the daemon's life
        try:
            proc = subprocess.Popen(list(argv), env=self.env or None, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        self.daemons.append(proc)
        self.names.append(name)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at once; see {self.root / 'log'}")

    def _nodes_idle(self) -> bool:
        for name, proc in zip(self.names, self.daemons, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}); logs:\n{self.logs()}")
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout
        states = dict(line.split() for line in out.splitlines() if line.strip())
        return all(states.get(n) == "idle" for n in NODES)

    # -- use --------------------------------------------------------------------------------

    def run(self, *argv: str, check: bool = True, timeout_s: float = 30,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """A SLURM client command against this cluster."""
        done = subprocess.run(list(argv), env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stdout}{done.stderr}")
        return done

    def sbatch(self, *argv: str, env: dict[str, str] | None = None) -> int:
        """Submit a batch job; its id."""
        out = self.run("sbatch", "--parsable", *argv, env=env).stdout.strip()
        return int(out.split(";")[0])

    def job_state(self, job_id: int) -> str:
        """The job's state (PENDING, RUNNING, COMPLETED, ...), from slurmctld's memory (MinJobAge)."""
        out = self.run("scontrol", "-o", "show", "job", str(job_id), check=False).stdout
        for item in out.split():
            if item.startswith("JobState="):
                return item.split("=", 1)[1]
        return "UNKNOWN"

    def job_field(self, job_id: int, name: str) -> str | None:
        out = self.run("scontrol", "-o", "show", "job", str(job_id), check=False).stdout
        for item in out.split():
            if item.startswith(f"{name}="):
                return item.split("=", 1)[1]
        return None

    def completion(self, job_id: int) -> dict[str, str] | None:
        """The job's completion record (``jobcomp/filetxt``: one line per ended job, kept for
        good, unlike slurmctld's memory), or None before it ended. Why not ``sacct``: in SLURM
        22.05 it reads only ``slurmdbd``, which needs a MySQL server; without one sacct says
        "accounting storage is disabled". The record has the fields that matter here:
        ``JobState``, ``ExitCode``, ``StartTime``, ``EndTime``, ``NodeList``."""
        path = self.root / "log" / "jobcomp.txt"
        if not path.exists():
            return None
        found = None
        for line in path.read_text(errors="replace").splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            if fields.get("JobId") == str(job_id):
                found = fields  # a requeued job has a line per run: the last one is its end
        return found

    def wait_job_end(self, job_id: int, timeout_s: float) -> str:
        ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                 "DEADLINE", "PREEMPTED")

        def ended_state() -> str | None:
            state = self.job_state(job_id)
            return state if state in ended else None

        return wait_until(ended_state, timeout_s,
                          f"job {job_id} to end (state {self.job_state(job_id)}); logs:\n{self.logs()}", poll_s=0.5)

    def cancel_all(self) -> None:
        """Cancel every job and wait (bounded) until none is left, so the next test starts clean."""
        self.run("scancel", "--user", "root", check=False)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not self.run("squeue", "-h", check=False).stdout.strip(), 30, "no jobs left",
                       poll_s=0.3)
        self.kill_cluster_processes(exclude_daemons=True)
        with contextlib.suppress(AssertionError):
            wait_until(self._nodes_idle, 30, "both nodes idle again", poll_s=0.3)

    def logs(self, tail: int = 40) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            with contextlib.suppress(OSError):
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"== {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- stop -------------------------------------------------------------------------------

    def kill_cluster_processes(self, exclude_daemons: bool = False) -> None:
        """SIGKILL every process whose environment holds this cluster's ``SLURM_CONF``."""
        needle = f"SLURM_CONF={self.conf}".encode()
        daemon_pids = {p.pid for p in self.daemons} if exclude_daemons else set()
        me = os.getpid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in daemon_pids or int(entry.name) == me:
                continue
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    if exclude_daemons and (entry / "comm").read_text().strip() in ("slurmd", "slurmctld"):
                        continue
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(entry.name), signal.SIGKILL)

    def stop(self) -> None:
        """Cancel jobs, then kill every daemon's group and every process of this cluster."""
        if self.daemons and all(p.poll() is None for p in self.daemons):
            with contextlib.suppress(Exception):
                self.run("scancel", "--user", "root", check=False, timeout_s=10)
        for proc in reversed(self.daemons):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.daemons:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        deadline = time.monotonic() + 10
        self.kill_cluster_processes()
        while time.monotonic() < deadline and self._leftovers():
            self.kill_cluster_processes()
            time.sleep(0.1)

    def _leftovers(self) -> bool:
        needle = f"SLURM_CONF={self.conf}".encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if needle in (entry / "environ").read_bytes().split(b"\0"):
                        return True
        return False

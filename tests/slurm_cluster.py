"""A real two-node SLURM cluster on this one machine, for tests: munged, slurmctld and two slurmd.

Debian's slurm (22.05) supports several slurmd per host: each "node" has its own name, port, pid
file, spool and log (the `%n` patterns), all on 127.0.0.1. Everything lives in one short
temporary directory (slurmstepd and munged put AF_UNIX sockets there: paths must stay < 108
bytes); every port is picked free at start, so two test sessions on one machine do not collide.
The daemons run in the foreground as our own children and are stopped by their PIDs.

    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="slurm", dir="/tmp")))
    try:
        cluster.start()
        job = cluster.sbatch(["--nodes=2", "slurm/train.sbatch"], env)
        cluster.wait_until_done(job, timeout=300)
    finally:
        cluster.stop()

Run as a script (`python tests/slurm_cluster.py DIR`) it starts a cluster in DIR, prints the
SLURM_CONF to export, and keeps it up until Ctrl-C: handy to try the sbatch scripts by hand.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from helpers import free_port

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Job states after which a job will not run again (a requeued job passes through REQUEUED/PENDING).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":" + SBIN_PATH)


def missing_programs() -> list[str]:
    return [name for name in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol") if _which(name) is None]


def ensure_installed(timeout: float = 600) -> None:
    """Install Debian's slurm and munge when missing (CI starts from a bare machine, as root)."""
    if not missing_programs():
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"{', '.join(missing_programs())} missing and not root: "
                           f"apt-get install {' '.join(PACKAGES)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PATH=os.environ.get("PATH", "") + ":" + SBIN_PATH)
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    # The package lists of a fresh machine may be empty or stale: update once, then try again.
    if subprocess.run(install, env=env, capture_output=True, timeout=timeout).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=timeout, check=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"apt-get install failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    if missing_programs():
        raise RuntimeError(f"still missing after apt-get install: {missing_programs()}")



def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.5,
             diagnose: Callable[[], str] = lambda: "") -> None:
    """Poll `condition` until it holds; fail with `what` (and `diagnose()`) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnose()}")
        time.sleep(interval)


def parse_fields(line: str) -> dict[str, str]:
    """`scontrol show ... -o` prints one line of Key=Value pairs (values without spaces, mostly)."""
    out = {}
    for item in line.split():
        key, sep, value = item.partition("=")
        if sep:
            out[key] = value
    return out


@dataclass
class SlurmCluster:
    root: Path
    nodes: tuple[str, ...] = ("n1", "n2")
    cpus_per_node: int = 1
    memory_mb_per_node: int = 8000
    cred_expire_s: int = 10  # also SLURM's requeue delay
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment for SLURM's clients (sbatch, squeue, scontrol, ...) against this cluster."""
        return dict(os.environ, SLURM_CONF=str(self.conf), PATH=os.environ.get("PATH", "") + ":" + SBIN_PATH)

    # --- start and stop -------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # mkdtemp makes it 0700; munged runs as `munge` and must reach its socket
        (self.root / "state").mkdir(exist_ok=True)
        (self.root / "jobs").mkdir(exist_ok=True)
        self._start_munged(timeout)
        self._write_conf()
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        wait_for(lambda: self._alive("slurmctld") and self.run(["scontrol", "ping"], check=False).returncode == 0,
                 timeout, "slurmctld to answer", diagnose=lambda: self.logs("slurmctld"))
        for node in self.nodes:
            self._spawn(f"slurmd-{node}", [_which("slurmd"), "-D", "-N", node, "-f", str(self.conf)])
        wait_for(lambda: all(self._alive(f"slurmd-{n}") for n in self.nodes) and self._all_nodes_idle(), timeout,
                 "both nodes to be idle",
                 diagnose=lambda: self.run(["sinfo", "-N", "-l"], check=False).stdout + self.logs())

    def stop(self, timeout: float = 30) -> None:
        """Cancel every job, then stop the daemons by PID (TERM, then KILL); safe after a failed start."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run(["scancel", "--full", "--user", str(os.geteuid())], check=False)
            try:
                wait_for(lambda: not self.squeue(), timeout, "cancelled jobs to leave the queue")
            except (TimeoutError, subprocess.SubprocessError):
                pass  # the daemons go anyway; the job processes die with proctrack's kill below
        for name in sorted(self.procs, key=lambda n: ("munged" in n, "slurmctld" in n)):  # slurmd, ctld, munged
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=timeout)
        self.procs.clear()
        for pid in self.leftover_pids():  # job processes that outlived a cancel that timed out
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def leftover_pids(self) -> list[int]:
        """Processes started by this cluster: every daemon, step and task inherits its SLURM_CONF."""
        marker = f"SLURM_CONF={self.conf}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:  # gone, or not ours to read
                continue
        return found

    def _spawn(self, name: str, argv: list, **kwargs) -> None:
        log = open(self.root / f"{name}.stdout", "w")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self.env, start_new_session=True, **kwargs)
        log.close()

    def _alive(self, name: str) -> bool:
        """True while the daemon runs; raises with its output once it has exited (no waiting for nothing)."""
        code = self.procs[name].poll()
        if code is None:
            return True
        out = (self.root / f"{name}.stdout").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{name} exited with {code}:\n{out}\n{self.logs()}")

    def _start_munged(self, timeout: float) -> None:
        """A private munged on its own socket: no system service is touched or needed."""
        munge_dir = self.root / "munge"
        munge_dir.mkdir(exist_ok=True)
        munge_dir.chmod(0o755)  # munged insists that everyone may reach its socket
        shutil.chown(munge_dir, "munge", "munge")
        key = Path("/etc/munge/munge.key")
        if not key.exists():  # the Debian package creates one; make it when a setup removed it
            subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True)
            shutil.chown(key, "munge", "munge")
            key.chmod(0o600)
        socket_path = munge_dir / "munge.socket"
        self._spawn("munged", [_which("munged"), "--foreground", f"--socket={socket_path}",
                               f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={munge_dir / 'munged.log'}",
                               f"--seed-file={munge_dir / 'munged.seed'}", f"--key-file={key}"],
                    user="munge", group="munge", extra_groups=[])
        wait_for(lambda: self._alive("munged") and socket_path.exists(), timeout, "munged's socket")

    def _write_conf(self) -> None:
        host = socket.gethostname().split(".")[0]
        r = self.root
        lines = [
            "ClusterName=segdisttest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire: how long a job credential lives, and so how long SLURM holds a requeued job
            # before it may start again (default 120 s; restarting it sooner fails: "credential revoked").
            f"AuthInfo=socket={r / 'munge/munge.socket'},cred_expire={self.cred_expire_s}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/builtin",
            "SchedulerParameters=sched_interval=2",  # a requeued job starts within 2 s of being eligible (not 60)
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "MinJobAge=900",  # keep finished jobs visible to `scontrol show job` for the whole test
            "KillWait=10",  # seconds between SIGTERM and SIGKILL when a job is cancelled or times out
            "InactiveLimit=0",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmctldLogFile={r / 'slurmctld.log'}",
            f"SlurmdPidFile={r / 'slurmd-%n.pid'}",
            f"SlurmdSpoolDir={r / 'spool-%n'}",
            f"SlurmdLogFile={r / 'slurmd-%n.log'}",
        ]
        for node in self.nodes:
            lines.append(f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} "
                         f"CPUs={self.cpus_per_node} RealMemory={self.memory_mb_per_node} State=UNKNOWN")
        lines.append(f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _all_nodes_idle(self) -> bool:
        result = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False)
        states = dict(line.split() for line in result.stdout.splitlines() if line.strip())
        return all(states.get(node) == "idle" for node in self.nodes)

    # --- jobs ------------------------------------------------------------------------------------

    def run(self, argv: list, check: bool = True, env: dict | None = None, timeout: float = 30
             ) -> subprocess.CompletedProcess:
        result = subprocess.run(argv, env=env or self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv))} failed ({result.returncode}): {result.stderr}")
        return result

    def sbatch(self, args: list, env: dict[str, str] | None = None) -> int:
        """Submit; `env` is added to the clients' environment (sbatch exports it all to the job)."""
        result = self.run(["sbatch", "--parsable", *map(str, args)], env={**self.env, **(env or {})})
        return int(result.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, NodeList, ExitCode, StdOut, ...)."""
        result = self.run(["scontrol", "show", "job", "-o", str(job_id)])
        return parse_fields(result.stdout)

    def squeue(self) -> list[str]:
        return self.run(["squeue", "-h", "-o", "%i %T"]).stdout.splitlines()

    def wait_until_done(self, job_id: int, timeout: float) -> dict[str, str]:
        """Wait until the job reaches a final state; return its record."""
        info: dict[str, str] = {}

        def done() -> bool:
            nonlocal info
            info = self.job(job_id)
            return info.get("JobState") in FINAL_STATES

        wait_for(done, timeout, f"job {job_id} to finish", interval=1,
                 diagnose=lambda: f"{info}\n{self.output(job_id)[-4000:]}")
        return info

    def output(self, job_id: int) -> str:
        """The job's output file (--output), or '' before it exists."""
        path = Path(self.job(job_id).get("StdOut", ""))
        return path.read_text(errors="replace") if path.is_file() else ""

    def logs(self, *names: str) -> str:
        """The tail of the daemons' logs, for failure messages."""
        paths = [self.root / f"{n}.log" for n in names] if names else sorted(self.root.glob("*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in paths if p.exists())


if __name__ == "__main__":
    import sys

    cluster = SlurmCluster(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/slurm-manual"))
    ensure_installed()
    try:
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}   # cluster up; Ctrl-C stops it", flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.stop()

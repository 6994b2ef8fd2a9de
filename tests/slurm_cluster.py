"""A real single-node Slurm cluster on this machine, for the tests: munged, slurmctld and
slurmd (Debian's `munge` and `slurm-wlm`), configured in a private folder (no cgroup
plugins, free ports, its own munge key and socket), started and stopped by the test.
Clients find it through SLURM_CONF (`Cluster.env`).

    with Cluster.start(tmp_path) as cluster:   # SlurmUnavailable: why it cannot start
        subprocess.run(["sbatch", ...], env={**os.environ, **cluster.env})
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

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "sinfo", "squeue")

CONF = """\
ClusterName=labkit-test
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


class SlurmUnavailable(RuntimeError):
    """Slurm cannot start here; the message says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    processes: list = field(default_factory=list)

    def __post_init__(self):
        self.root = Path(self.root)  # Cluster("/tmp/slurm").stop(), as docs/cluster.md says

    @property
    def env(self) -> dict:
        return {"SLURM_CONF": str(self.root / "slurm.conf")}

    @classmethod
    def start(cls, root: Path, timeout: float = 60) -> "Cluster":
        missing = [d for d in DAEMONS + CLIENTS if not shutil.which(d)
                   and not Path("/usr/sbin", d).exists()]
        if missing:
            raise SlurmUnavailable(f"not installed: {', '.join(missing)} (apt-get install "
                                   "slurm-wlm munge)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("the test cluster's daemons run as root; this is not root")
        cluster = cls(Path(root))
        try:
            cluster._start(timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start(self, timeout: float) -> None:
        root = self.root
        for d in ("munge", "state", "spool", "log"):
            (root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(root / "munge", 0o700)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        munged = shutil.which("munged") or "/usr/sbin/munged"
        self._run([munged, "--force", f"--socket={root}/munge/munge.socket",
                   f"--key-file={key}", f"--pid-file={root}/munge/munged.pid",
                   f"--log-file={root}/log/munged.log", f"--seed-file={root}/munge/seed"])
        host = socket.gethostname().split(".")[0]
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
        (root / "slurm.conf").write_text(CONF.format(
            host=host, root=root, ctld_port=_free_port(), d_port=_free_port(),
            cpus=os.cpu_count() or 1, memory_mb=memory_mb), encoding="utf-8")
        conf = str(root / "slurm.conf")
        self._run([_daemon("slurmctld"), "-f", conf])
        self._run([_daemon("slurmd"), "-f", conf])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                   env={**os.environ, **self.env}).stdout.strip()
            if state in {"idle", "mixed", "allocated"}:
                return
            time.sleep(1)
        raise SlurmUnavailable(f"the node did not come up in {timeout:g} s (sinfo: {state!r}); "
                               f"logs: {self.log_tail()}")

    def _run(self, argv: list[str]) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise SlurmUnavailable(f"{Path(argv[0]).name} did not start: "
                                   f"{(proc.stderr or proc.stdout).strip()[-800:]}")

    def log_tail(self, lines: int = 15) -> str:
        tails = []
        for log in sorted((self.root / "log").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(tails)

    def stop(self) -> None:
        """Stop the daemons this cluster started (by their pid files), munged last."""
        for pidfile in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            path = self.root / pidfile
            try:
                pid = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _daemon(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"

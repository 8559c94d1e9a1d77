"""A real one-node Slurm cluster for the tests: Debian's `munge` and `slurm-wlm` daemons, started by the
`slurm_cluster` session fixture and stopped by their pids at the end.

What it starts, and why each choice:
- `munged`, as the munge user, on its default socket (/run/munge/munge.socket.2), unless one already answers
  there (then it is used and left running). The socket has to be the default one: slurmd fetches its
  configuration (below) before it has read any `AuthInfo=socket=` line.
- `slurmctld` with a `slurm.conf` written into a temporary directory (state, spool, logs beside it) on free
  ports; the settings are those seen working on this machine type (issue 6): one node with all CPUs, one
  default partition, `proctrack/linuxproc` and `task/none` (no cgroups in a container),
  `select/cons_tres` with `CR_Core_Memory` so that a job's memory request is enforced at scheduling,
  `AccountingStorageType=accounting_storage/none` (so no sacct: status comes from squeue, and
  `MinJobAge=300` keeps finished jobs in squeue for that).
- `slurmd` "configless" (`--conf-server`, slurm.schedmd.com/configless_slurm.html): it fetches the
  configuration from slurmctld and links /run/slurm/conf to its copy. Client commands in the tests find the
  configuration through `SLURM_CONF`; inside a job, snakemake's slurm-jobstep executor (0.6) removes every
  `SLURM_*` variable but the job id from the environment of its nested `srun`, `SLURM_CONF` included, and
  that srun finds the configuration where every configless cluster's nodes have it.

The fixture skips (with the reason) where the daemons are not installed (`make test` installs them:
tests/slurm/install.sh) or the tests do not run as root (munged and slurmd need it).
"""

import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = (
    "munged",
    "munge",
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "squeue",
    "sinfo",
    "scontrol",
    "scancel",
)
MUNGE_SOCKET_DIR = Path("/run/munge")
CONFIGLESS_LINK = Path("/run/slurm/conf")  # where a configless slurmd links its copy of the configuration
STARTUP_TIMEOUT_S = 60


@dataclass(frozen=True)
class SlurmCluster:
    root: Path  # slurm.conf, state, spool and daemon logs
    node: str
    env: dict[str, str]  # os.environ with SLURM_CONF: for client commands and snakemake
    enter: tuple[str, ...] = ()  # what a client command runs under (the two-node cluster: its namespace)

    def run(self, *argv: str, check: bool = True) -> str:
        """A client command (squeue, sbatch, ...) against this cluster; its stdout."""
        argv = (*self.enter, *argv)
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120)
        if check and result.returncode:
            raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}\n{self.logs()}")
        return result.stdout

    def wait(self, job_id: str, timeout_s: float = 60) -> str:
        """The state a job ends in (COMPLETED, FAILED, ...); squeue shows it for MinJobAge after the end.
        Polled here rather than with `sbatch --wait`, which checks only every 10 s or so."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.run(
                "squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T"
            ).strip()
            if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
                return state
            time.sleep(0.2)
        raise RuntimeError(f"job {job_id} still {state} after {timeout_s} s\n{self.logs()}")

    def logs(self) -> str:
        """The daemons' logs, for a failure message."""
        return "\n".join(
            f"--- {path.name}\n{path.read_text()[-3000:]}" for path in sorted(self.root.glob("*.log"))
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_slurm_conf(root: Path, controller: str, nodes: dict[str, str], cpus: int, memory_mb: int) -> Path:
    """The configuration of issue 6 for `nodes` ({name: address}, `cpus` each) and the controller
    "name(address)", with this run's own ports and directories (per node: several slurmd share `root`)."""
    lines = {
        "ClusterName": "cumotest",
        "SlurmctldHost": controller,
        "SlurmctldPort": free_port(),
        "SlurmdPort": free_port(),
        "SlurmctldParameters": "enable_configless",
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "StateSaveLocation": root / "state",
        "SlurmdSpoolDir": root / "spool" / "%n",
        "SlurmctldPidFile": root / "slurmctld.pid",
        "SlurmdPidFile": root / "slurmd-%n.pid",
        "SlurmctldLogFile": root / "slurmctld.log",
        "SlurmdLogFile": root / "slurmd-%n.log",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core_Memory",
        "ReturnToService": 2,
        "AccountingStorageType": "accounting_storage/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "MpiDefault": "none",
        "MinJobAge": 300,
    }
    (root / "state").mkdir()
    (root / "spool").mkdir()
    text = "".join(f"{key}={value}\n" for key, value in lines.items())
    for node, address in nodes.items():
        text += f"NodeName={node} NodeAddr={address} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN\n"
    text += "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
    path = root / "slurm.conf"
    path.write_text(text)
    return path


def memory_mb() -> int:
    """90% of this machine's memory: what the node offers to jobs' --mem."""
    total_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    return int(total_kb / 1024 * 0.9)


def wait_for(what: str, check, cluster_logs) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not within {STARTUP_TIMEOUT_S} s\n{cluster_logs()}")
        time.sleep(0.5)


def munge_answers() -> bool:
    return subprocess.run(["munge", "-n"], capture_output=True).returncode == 0


def start_munged(root: Path) -> subprocess.Popen | None:
    """munged on the default socket as the munge user; None when one answers there already."""
    if munge_answers():
        return None
    munge = pwd.getpwnam("munge")
    log_dir = root / "munge"  # munged refuses a log directory the munge user does not own
    for directory in (MUNGE_SOCKET_DIR, log_dir):
        directory.mkdir(exist_ok=True)
        os.chown(directory, munge.pw_uid, munge.pw_gid)
        directory.chmod(0o755)  # munged: "execute permissions for all required" on the socket's directory
    process = subprocess.Popen(
        ["munged", "--foreground", f"--log-file={log_dir / 'munged.log'}"],
        user=munge.pw_uid,
        group=munge.pw_gid,
        extra_groups=[],
        stdout=subprocess.DEVNULL,
        stderr=open(log_dir / "munged.stderr.log", "w"),
    )
    wait_for("munged answering", munge_answers, lambda: (log_dir / "munged.log").read_text())
    return process


def stop(processes: list[subprocess.Popen]) -> None:
    """Stop the daemons this fixture started, by their pids, last started first."""
    for process in reversed(processes):
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def skip_without_slurm() -> None:
    """Skip the test, with the reason, where this machine cannot run a Slurm cluster."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        pytest.skip(
            f"Slurm/MUNGE not installed ({', '.join(missing)} missing); tests/slurm/install.sh installs them"
        )
    if os.geteuid() != 0:
        pytest.skip("a real Slurm cluster needs root (munged runs as the munge user, slurmd as root)")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    skip_without_slurm()
    root = tmp_path_factory.mktemp("slurm")
    root.chmod(0o755)
    node = socket.gethostname()
    conf = write_slurm_conf(root, f"{node}(127.0.0.1)", {node: "127.0.0.1"}, os.cpu_count(), memory_mb())
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(root, node, env)
    processes = []
    try:
        munged = start_munged(root)
        processes += [munged] if munged else []
        logs = {name: open(root / f"{name}.stderr.log", "w") for name in ("slurmctld", "slurmd")}
        processes.append(
            subprocess.Popen(["slurmctld", "-D", "-f", str(conf)], env=env, stderr=logs["slurmctld"])
        )
        wait_for("slurmctld up", lambda: "UP" in cluster.run("scontrol", "ping", check=False), cluster.logs)
        port = next(
            line.split("=")[1] for line in conf.read_text().splitlines() if line.startswith("SlurmctldPort")
        )
        processes.append(
            subprocess.Popen(
                ["slurmd", "-D", "--conf-server", f"127.0.0.1:{port}"],
                env={key: value for key, value in env.items() if key != "SLURM_CONF"},
                stderr=logs["slurmd"],
            )
        )
        wait_for(
            f"node {node} idle",
            lambda: (
                cluster.run("sinfo", "--noheader", "--Node", "--format=%T", check=False).strip() == "idle"
            ),
            cluster.logs,
        )
        yield cluster
        cluster.run("scancel", f"--user={pwd.getpwuid(os.geteuid()).pw_name}", check=False)
    finally:
        stop(processes)
        # slurmd linked /run/slurm/conf to its copy in `root`: a dangling link would mislead later clients.
        if CONFIGLESS_LINK.is_symlink() and root in CONFIGLESS_LINK.resolve().parents:
            CONFIGLESS_LINK.unlink()

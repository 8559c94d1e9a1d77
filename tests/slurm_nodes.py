"""A real two-node Slurm cluster on this one machine (issue 18): `slurmctld` and two `slurmd`, each in a network
namespace of its own, started by the `slurm_nodes` session fixture and stopped by their pids at the end.

Why network namespaces and not Slurm's multiple-slurmd mode (which Debian 12's slurm-wlm 22.05.8 has:
`scontrol show config` says MULTIPLE_SLURMD = Yes): several slurmd on one host share its hostname, its
addresses and its /etc/hosts, so a rank would rendezvous at the one address every node has and a
MASTER_ADDR taken from the wrong node would go unnoticed. Here each node is what a cluster's node is to the
ranks: its own hostname (a UTS namespace), its own address on a bridge that only these namespaces see, and an
/etc/hosts that names every node, so MASTER_ADDR (the allocation's first node, cumo/train/launch.py) has to
resolve to that node for gloo to connect.

Each daemon starts under `nsenter --net` (the namespace) and `unshare --mount --uts`, which bind-mounts this
cluster's hosts file over /etc/hosts and its directory over /etc/slurm (where every Slurm command looks for
slurm.conf; snakemake's job step drops SLURM_CONF, tests/slurm_cluster.py) and sets the hostname. Not
`ip netns exec`: it remounts /sys, and slurmd then stops at "No filesystem mounted on /sys/fs/cgroup". Jobs
inherit their node's namespaces from slurmd; filesystem and pids stay shared, as on a cluster with shared
storage. Client commands run in the controller's namespace (`SlurmCluster.enter`): no address, route or
interface is added outside the namespaces made here, and they go with them.
"""

import os
import pwd
import shutil
import subprocess

import pytest

from tests.slurm_cluster import (
    SlurmCluster,
    memory_mb,
    skip_without_slurm,
    start_munged,
    stop,
    wait_for,
    write_slurm_conf,
)

SUBNET = "10.218.0"  # private, and only inside this cluster's namespaces
CONTROLLER = ("cumoctl", f"{SUBNET}.1")
NODES = {"cumo1": f"{SUBNET}.11", "cumo2": f"{SUBNET}.12"}
CPUS_PER_NODE = 2  # two CPU ranks per node (the tests' stage: 2 nodes x 2 ranks)
# Runs the rest of the command line with this cluster's /etc/hosts and slurm.conf and the node's hostname.
ENTER = (
    'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/slurm && hostname "$3" && shift 3 && exec "$@"'
)


def enter(namespace: str, hosts: str, slurm_dir: str, hostname: str) -> tuple[str, ...]:
    """The prefix that runs a command as on host `hostname` in network namespace `namespace`."""
    return ("nsenter", f"--net=/run/netns/{namespace}", "unshare", "--mount", "--uts") + (
        "sh",
        "-c",
        ENTER,
        "sh",
        hosts,
        slurm_dir,
        hostname,
    )


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


def make_network(namespaces: dict[str, str]) -> None:
    """The namespaces ({hostname: namespace}) of the controller and each node, joined by a bridge in the
    controller's."""
    for namespace in namespaces.values():
        ip("netns", "add", namespace)
        ip("-n", namespace, "link", "set", "lo", "up")
    hub = namespaces[CONTROLLER[0]]
    ip("-n", hub, "link", "add", "br0", "type", "bridge")
    ip("-n", hub, "addr", "add", f"{CONTROLLER[1]}/24", "dev", "br0")
    ip("-n", hub, "link", "set", "br0", "up")
    for node, address in NODES.items():
        ip("-n", hub, "link", "add", node, "type", "veth", "peer", "name", "eth0", "netns", namespaces[node])
        ip("-n", hub, "link", "set", node, "master", "br0", "up")
        ip("-n", namespaces[node], "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", namespaces[node], "link", "set", "eth0", "up")


def remove_network(namespaces: dict[str, str]) -> None:
    """The namespaces, and with them the bridge, the veth pairs and the addresses."""
    for namespace in namespaces.values():
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


@pytest.fixture(scope="session")
def slurm_nodes(tmp_path_factory):
    skip_without_slurm()
    missing = [name for name in ("ip", "nsenter", "unshare") if shutil.which(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: the two-node cluster needs iproute2 and util-linux")
    probe = subprocess.run(["ip", "netns", "add", f"cumo{os.getpid()}-probe"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"no network namespaces here (`ip netns add`: {probe.stderr.strip()})")
    subprocess.run(["ip", "netns", "del", f"cumo{os.getpid()}-probe"], check=True)

    root = tmp_path_factory.mktemp("slurm-nodes")
    root.chmod(0o755)
    conf = write_slurm_conf(root, "{}({})".format(*CONTROLLER), NODES, CPUS_PER_NODE, memory_mb())
    hosts = root / "hosts"
    hosts.write_text(
        "127.0.0.1 localhost\n"
        + "".join(f"{address} {host}\n" for host, address in (CONTROLLER, *NODES.items()))
    )
    namespaces = {host: f"cumo{os.getpid()}-{host}" for host in (CONTROLLER[0], *NODES)}
    processes = []
    try:
        make_network(namespaces)
        prefix = {
            host: enter(namespace, str(hosts), str(root), host) for host, namespace in namespaces.items()
        }
        env = {**os.environ, "SLURM_CONF": str(conf)}
        cluster = SlurmCluster(root, next(iter(NODES)), env, enter=prefix[CONTROLLER[0]])
        munged = start_munged(root)
        processes += [munged] if munged else []
        processes.append(
            subprocess.Popen(
                [*prefix[CONTROLLER[0]], "slurmctld", "-D"],
                env=env,
                stderr=open(root / "slurmctld.stderr.log", "w"),
            )
        )
        wait_for("slurmctld up", lambda: "UP" in cluster.run("scontrol", "ping", check=False), cluster.logs)
        for node in NODES:
            processes.append(
                subprocess.Popen(
                    [*prefix[node], "slurmd", "-D"],
                    env=env,
                    stderr=open(root / f"slurmd-{node}.stderr.log", "w"),
                )
            )
        wait_for(
            f"nodes {', '.join(NODES)} idle",
            lambda: (
                cluster.run("sinfo", "--noheader", "--Node", "--format=%T", check=False).split()
                == ["idle"] * len(NODES)
            ),
            cluster.logs,
        )
        yield cluster
        cluster.run("scancel", f"--user={pwd.getpwuid(os.geteuid()).pw_name}", check=False)
    finally:
        stop(processes)
        remove_network(namespaces)

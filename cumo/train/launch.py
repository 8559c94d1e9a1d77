"""Launch commands for `cumo <step>` over several processes, and what each launched process reads.

Two ways in, both pure functions returning (argv, env) where env holds the variables to set on top of the
caller's environment:

- one machine: `local_command` runs torchrun over the machine's GPUs (or 2 ranks on DeepSpeed's CPU
  accelerator for the tiny preset). torchrun rather than the `deepspeed` launcher: `--standalone` picks a
  free rendezvous port, so two jobs on one machine (Snakemake running two stages' tiny runs side by side)
  do not collide on the launcher's fixed default 29500, and the same command serves CPU and GPU.
- several Slurm nodes: `srun_command` starts one task per GPU (or CPU rank); each task maps Slurm's variables onto
  torch.distributed's (`distributed_env_from_slurm`) when it starts (`init_process_env`).

On one machine `supervise` runs torchrun as its child rather than in its place: it outlives every rank, so
that a SIGTERM (Slurm's `--signal`, a preemption, `scancel`) ends the job with the ranks' EXIT_PREEMPTED
instead of torchrun's 1, and never before a rank has finished saving.

Inside a process, `read_ranks` returns (rank, local_rank, world_size) and refuses an inconsistent set.
"""

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path

from cumo.train.checkpoint import EXIT_PREEMPTED, PR_SET_PDEATHSIG

# Set by `srun_command` so that a task knows its ranks come from Slurm: a shell inside `salloc` also has
# SLURM_NTASKS and SLURM_PROCID, and must stay a single process.
RANKS_FROM = "CUMO_RANKS_FROM"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
SAVE_GRACE_S = 300  # seconds a rank has to save after SIGTERM (profiles/default: --signal=TERM@300)
# Set by `supervise`: the directory where each rank leaves its exit code (`trainer.exit_rank`), as torchrun
# reports a rank's exit code only in its log and exits 1 (a rank failed) or dies of the signal itself.
EXIT_CODES = "CUMO_EXIT_CODES"
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


class LaunchError(RuntimeError):
    """The process environment does not describe a consistent distributed job."""


def local_command(
    cumo_args: list[str], *, num_processes: int, device: str
) -> tuple[list[str], dict[str, str]]:
    """`cumo <cumo_args>` as `num_processes` ranks on this machine (device "cuda": one per GPU; "cpu")."""
    if num_processes < 1:
        raise LaunchError(f"num_processes must be at least 1, got {num_processes}")
    argv = [
        # The running interpreter's torchrun, so the virtualenv's torch launches the virtualenv's cumo.
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={num_processes}",
        "-m",
        "cumo",
        *cumo_args,
    ]
    # torchrun passes a SIGTERM on to the ranks, then SIGKILLs them after TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds
    # (default 30, torch/distributed/launcher/api.py): too short for a paper-scale save. 300 s is the lead the
    # Slurm profile's `--signal=TERM@300` gives before the time limit's own SIGKILL.
    return argv, {**_accelerator_env(device), "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(SAVE_GRACE_S)}


def srun_command(
    cumo_args: list[str], *, nodes: int, processes_per_node: int, cpus_per_task: int, device: str
) -> tuple[list[str], dict[str, str]]:
    """`cumo <cumo_args>` as `processes_per_node` Slurm tasks on each of `nodes` nodes, from inside the
    allocation (sbatch): one per GPU on "cuda"; CPU ranks on "cpu" (tests/test_slurm_nodes.py, two nodes).

    Under Snakemake's Slurm executor the rule declares the `mpi` resource: the job step then runs this
    srun itself instead of wrapping the rule's command in `srun -n1` (snakemake-executor-plugin-slurm-jobstep).
    That step also drops SLURM_JOB_NODELIST and the task variables from its environment, which is why each
    task reads its own, set by this srun, in `distributed_env_from_slurm`.
    """
    if nodes < 1 or processes_per_node < 1 or cpus_per_task < 1:
        raise LaunchError(
            "nodes, processes_per_node and cpus_per_task must be at least 1, "
            f"got {nodes}, {processes_per_node}, {cpus_per_task}"
        )
    env = _accelerator_env(device)
    # Every task sees all of its node's GPUs and takes the one at LOCAL_RANK, as under torchrun.
    gpus = [f"--gpus-per-node={processes_per_node}"] if device == "cuda" else []
    argv = [
        "srun",
        f"--nodes={nodes}",
        f"--ntasks-per-node={processes_per_node}",
        *gpus,
        # Since Slurm 22.05 srun no longer inherits sbatch's --cpus-per-task (srun man page), so it is
        # stated here or every task gets one core for its data loader workers.
        f"--cpus-per-task={cpus_per_task}",
        # One rank failing must end the step, or the others wait in their next collective until the time limit.
        "--kill-on-bad-exit=1",
        sys.executable,
        "-m",
        "cumo",
        *cumo_args,
    ]
    # A task's threads are its cores. Without this, torch starts one per core of the node, or as many as
    # Snakemake's shell exports for the rule's `threads` (OMP_ and MKL_NUM_THREADS: all of a node's ranks'),
    # which oversubscribes the node and changes float32 summation order (tests/test_slurm_nodes.py saw a
    # loss differ from the one-node run's by an ulp); torchrun sets OMP_NUM_THREADS=1 for the same reason.
    threads = {name: str(cpus_per_task) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return argv, {**env, RANKS_FROM: "slurm", **threads}


def supervise(argv: list[str], env: Mapping[str, str]) -> int:
    """Run `argv` (torchrun, `local_command`) as a child with `env` added, and return the job's exit code:
    EXIT_PREEMPTED when the ranks saved a checkpoint and stopped for a SIGTERM, else torchrun's own.

    Why not exec torchrun: on a SIGTERM the ranks save and exit EXIT_PREEMPTED, but torchrun raises on the
    signal (or sees a rank fail) and exits 1 (torch/distributed/elastic/agent/server/api.py, `run`), so the
    job's status said failed. And a second SIGTERM while torchrun waits for its ranks to stop (Slurm signals
    every process of the job; this process passes the signal on as well) raises again inside that wait:
    torchrun dies with its ranks still saving. Here:

    - a SIGTERM to this process is passed on to torchrun, which passes it on to the ranks;
    - this process is a child subreaper (Linux PR_SET_CHILD_SUBREAPER): the ranks of a torchrun that died
      become its children, and it returns only when every one of them has exited, so the job (a Slurm batch
      step ends, and its remaining processes are killed, when its script ends) lasts until the save is done;
    - torchrun gets SIGTERM from the kernel should this process die (PR_SET_PDEATHSIG), as the ranks do when
      torchrun dies (checkpoint.signal_on_parent_death).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    with tempfile.TemporaryDirectory(prefix="cumo-exit-codes-") as exit_codes:
        child = subprocess.Popen(
            argv,
            env={**os.environ, **env, EXIT_CODES: exit_codes},
            # libc loaded here, not in the forked child, where loading a library may deadlock on a lock that
            # another thread of this process held at the fork
            preexec_fn=lambda: libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0),
        )
        running = [True]  # after the wait the pid may be another process's: no signal is sent to it then

        def pass_on(signum, frame):
            if running[0]:
                os.kill(child.pid, signum)

        previous = signal.signal(signal.SIGTERM, pass_on)
        try:
            returncode = child.wait()
            running[0] = False
            _wait_for_orphans()
        finally:
            signal.signal(signal.SIGTERM, previous)
        rank_codes = [int(path.read_text()) for path in Path(exit_codes).glob("rank-*")]
    code = exit_code(returncode, rank_codes)
    if code == EXIT_PREEMPTED:
        print(
            f"cumo launch: the ranks saved a checkpoint and stopped on a signal (exit {EXIT_PREEMPTED}); "
            "the same command resumes from it",
            file=sys.stderr,
        )
    return code


def _wait_for_orphans() -> None:
    """Reap every process left to this subreaper (ranks and their data loader workers), until none is left."""
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


def exit_code(launcher_returncode: int, rank_codes: list[int]) -> int:
    """The job's exit code from torchrun's return code (negative: killed by that signal) and the codes the
    ranks reported. A rank exits EXIT_PREEMPTED only after every rank has saved (checkpoint.save ends in a
    barrier after the completion marker), so one is enough, unless another rank reported a failure; ranks
    that torchrun stopped after the first one left no code."""
    if launcher_returncode == 0:
        return 0
    if rank_codes and set(rank_codes) == {EXIT_PREEMPTED}:
        return EXIT_PREEMPTED
    # a shell's convention for a process killed by signal N
    return launcher_returncode if launcher_returncode > 0 else 128 - launcher_returncode


def write_exit_code(environ: Mapping[str, str], code: int) -> None:
    """Leave this rank's exit code where `supervise` reads it (nothing when not started by `supervise`)."""
    if EXIT_CODES in environ:
        Path(environ[EXIT_CODES], f"rank-{environ.get('RANK', '0')}").write_text(str(code))


def _accelerator_env(device: str) -> dict[str, str]:
    # Naming the accelerator makes DeepSpeed fail on a GPU node whose CUDA it cannot see, instead of
    # falling back to its CPU accelerator with a warning (deepspeed/accelerator/real_accelerator.py).
    if device not in ("cuda", "cpu"):
        raise LaunchError(f"device must be 'cuda' or 'cpu', got {device!r}")
    return {"DS_ACCELERATOR": device}


def master_port(job_id: str) -> int:
    """A rendezvous port every task of a job derives alike: 15000 + job id mod 10000.

    Lightning's choice (lightning/fabric/plugins/environments/slurm.py, `main_port`): below Linux's
    ephemeral range (32768-60999), so the kernel does not hand it out for outgoing connections, and
    different jobs on one node get different ports.
    """
    if not job_id.isdigit():
        raise LaunchError(f"SLURM_JOB_ID must be a number, got {job_id!r}")
    return 15000 + int(job_id) % 10000


def scontrol_hostnames(nodelist: str) -> list[str]:
    """Expand Slurm's compact nodelist ("gpu[01-04]") with `scontrol show hostnames`, in Slurm's order."""
    try:
        result = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        )
    except FileNotFoundError as error:
        raise LaunchError(
            "scontrol is not on PATH: Slurm's ranks can only be read inside a Slurm job (srun_command)"
        ) from error
    except subprocess.CalledProcessError as error:
        raise LaunchError(f"scontrol show hostnames {nodelist!r} failed: {error.stderr.strip()}") from error
    return result.stdout.split()


def distributed_env_from_slurm(
    environ: Mapping[str, str], hostnames_fn: Callable[[str], list[str]] = scontrol_hostnames
) -> dict[str, str]:
    """torch.distributed's variables for one srun task, from Slurm's (`hostnames_fn` expands the nodelist)."""
    needed = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_JOB_NODELIST", "SLURM_JOB_ID")
    missing = [name for name in needed if name not in environ]
    if missing:
        raise LaunchError(
            f"{', '.join(missing)} not set: this process was not started by srun inside a Slurm job; "
            "start it with srun_command (or on one machine with local_command)"
        )
    hosts = hostnames_fn(environ["SLURM_JOB_NODELIST"])
    if not hosts:
        raise LaunchError(f"SLURM_JOB_NODELIST={environ['SLURM_JOB_NODELIST']!r} expands to no host")
    return {
        "RANK": environ["SLURM_PROCID"],
        "LOCAL_RANK": environ["SLURM_LOCALID"],
        "WORLD_SIZE": environ["SLURM_NTASKS"],
        # Rank 0 is the first task of the first node under Slurm's default block distribution.
        "MASTER_ADDR": hosts[0],
        "MASTER_PORT": str(master_port(environ["SLURM_JOB_ID"])),
    }


def read_ranks(environ: Mapping[str, str]) -> tuple[int, int, int]:
    """(rank, local_rank, world_size) of this process; (0, 0, 1) when no launcher started it."""
    present = [name for name in RANK_VARIABLES if name in environ]
    if not present:
        return 0, 0, 1
    if len(present) < len(RANK_VARIABLES):
        missing = [name for name in RANK_VARIABLES if name not in environ]
        raise LaunchError(
            f"{', '.join(present)} set but {', '.join(missing)} not: start the job with torchrun "
            "(local_command) or srun (srun_command), which set all of RANK, LOCAL_RANK, WORLD_SIZE"
        )
    try:
        rank, local_rank, world_size = (int(environ[name]) for name in RANK_VARIABLES)
    except ValueError as error:
        values = ", ".join(f"{name}={environ[name]!r}" for name in RANK_VARIABLES)
        raise LaunchError(f"{values}: each must be an integer") from error
    if world_size < 1 or not 0 <= rank < world_size or not 0 <= local_rank < world_size:
        raise LaunchError(
            f"RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE={world_size}: need 0 <= RANK < WORLD_SIZE and "
            "0 <= LOCAL_RANK < WORLD_SIZE; a launcher left variables from another job in the environment?"
        )
    if "LOCAL_WORLD_SIZE" in environ and local_rank >= int(environ["LOCAL_WORLD_SIZE"]):
        raise LaunchError(
            f"LOCAL_RANK={local_rank} but LOCAL_WORLD_SIZE={environ['LOCAL_WORLD_SIZE']}: "
            "more ranks on this node than the launcher started"
        )
    if world_size > 1:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(name)]
        if missing:
            raise LaunchError(
                f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: ranks cannot meet; "
                "start the job with local_command or srun_command"
            )
    return rank, local_rank, world_size


def init_process_env(
    environ: MutableMapping[str, str], hostnames_fn: Callable[[str], list[str]] = scontrol_hostnames
) -> tuple[int, int, int]:
    """At the start of a launched process: complete `environ` for torch.distributed, return its ranks.

    A task of `srun_command` gets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from Slurm;
    under torchrun they are set already. Call with `os.environ` before `deepspeed.init_distributed`.
    """
    if environ.get(RANKS_FROM) == "slurm":
        environ.update(distributed_env_from_slurm(environ, hostnames_fn))
    return read_ranks(environ)

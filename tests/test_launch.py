"""Launch commands and process environments (cumo/train/launch.py), without Slurm or GPUs."""

import os
import subprocess
import sys

import pytest

from cumo.train.checkpoint import EXIT_PREEMPTED
from cumo.train.launch import (
    EXIT_CODES,
    RANKS_FROM,
    LaunchError,
    distributed_env_from_slurm,
    exit_code,
    init_process_env,
    local_command,
    master_port,
    read_ranks,
    srun_command,
    write_exit_code,
)

TRAIN = ["train", "--stage", "sft", "--config", "config/config.yaml"]


def fake_scontrol(expected_nodelist, hosts):
    """`scontrol show hostnames` for one nodelist; any other nodelist is a test failure."""

    def hostnames(nodelist):
        assert nodelist == expected_nodelist
        return hosts

    return hostnames


def slurm_task(procid, localid, ntasks, nodelist, job_id="4242"):
    """The variables srun gives one task (srun man page, OUTPUT ENVIRONMENT VARIABLES)."""
    return {
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(localid),
        "SLURM_NTASKS": str(ntasks),
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_JOB_ID": job_id,
    }


def test_one_node_of_8_gpus_runs_torchrun_over_them():
    argv, env = local_command(TRAIN, num_processes=8, device="cuda")
    assert argv == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=8",
        "-m",
        "cumo",
        *TRAIN,
    ]
    assert env == {"DS_ACCELERATOR": "cuda", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "300"}


def test_tiny_preset_runs_2_ranks_on_deepspeeds_cpu_accelerator():
    argv, env = local_command(TRAIN, num_processes=2, device="cpu")
    assert "--nproc-per-node=2" in argv
    assert env == {"DS_ACCELERATOR": "cpu", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "300"}


@pytest.mark.slow
def test_torchrun_starts_2_cpu_ranks_that_read_consistent_ranks(tmp_path):
    # The launcher part of the argv, with a script in place of `-m cumo ...`, run for real.
    argv, env = local_command(TRAIN, num_processes=2, device="cpu")
    script = tmp_path / "ranks.py"
    # Each rank writes its own file: two ranks printing to one pipe can interleave their lines.
    script.write_text(
        "import os, sys\n"
        "from pathlib import Path\n"
        "from cumo.train.launch import read_ranks\n"
        "ranks = read_ranks(os.environ)\n"
        "line = ' '.join(['ranks', *map(str, ranks), os.environ['DS_ACCELERATOR']])\n"
        "Path(sys.argv[1], f'rank{ranks[0]}.txt').write_text(line)\n"
    )
    launcher = argv[: argv.index("-m", 3)]
    result = subprocess.run(
        [*launcher, str(script), str(tmp_path)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = sorted(path.read_text() for path in tmp_path.glob("rank*.txt"))
    assert lines == ["ranks 0 0 2 cpu", "ranks 1 1 2 cpu"]


@pytest.mark.parametrize(
    "bad", [{"num_processes": 0, "device": "cpu"}, {"num_processes": 2, "device": "tpu"}]
)
def test_local_command_refuses_nonsense(bad):
    with pytest.raises(LaunchError):
        local_command(TRAIN, **bad)


def threads(count: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(count), "MKL_NUM_THREADS": str(count)}


def test_4_nodes_of_8_gpus_start_one_srun_task_per_gpu():
    argv, env = srun_command(TRAIN, nodes=4, processes_per_node=8, cpus_per_task=12, device="cuda")
    assert argv == [
        "srun",
        "--nodes=4",
        "--ntasks-per-node=8",
        "--gpus-per-node=8",
        "--cpus-per-task=12",
        "--kill-on-bad-exit=1",
        sys.executable,
        "-m",
        "cumo",
        *TRAIN,
    ]
    assert env == {"DS_ACCELERATOR": "cuda", RANKS_FROM: "slurm", **threads(12)}


def test_cpu_ranks_across_nodes_ask_for_no_gpu_and_name_the_cpu_accelerator():
    argv, env = srun_command(TRAIN, nodes=2, processes_per_node=2, cpus_per_task=1, device="cpu")
    assert not [arg for arg in argv if arg.startswith("--gpus")]
    assert argv[:4] == ["srun", "--nodes=2", "--ntasks-per-node=2", "--cpus-per-task=1"]
    assert env == {"DS_ACCELERATOR": "cpu", RANKS_FROM: "slurm", **threads(1)}


def test_task_13_of_4x8_is_rank_13_local_rank_5_on_the_second_node():
    environ = slurm_task(procid=13, localid=5, ntasks=32, nodelist="gpu[01-04]")
    env = distributed_env_from_slurm(
        environ, fake_scontrol("gpu[01-04]", ["gpu01", "gpu02", "gpu03", "gpu04"])
    )
    assert env == {
        "RANK": "13",
        "LOCAL_RANK": "5",
        "WORLD_SIZE": "32",
        "MASTER_ADDR": "gpu01",
        "MASTER_PORT": str(15000 + 4242),
    }


@pytest.mark.parametrize("procid", range(8))
def test_every_task_of_1x8_meets_on_the_one_node(procid):
    environ = slurm_task(procid=procid, localid=procid, ntasks=8, nodelist="gpu07")
    env = distributed_env_from_slurm(environ, fake_scontrol("gpu07", ["gpu07"]))
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == (str(procid), str(procid), "8")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("gpu07", "19242")


def test_outside_slurm_the_missing_variables_are_named():
    with pytest.raises(LaunchError, match="SLURM_JOB_NODELIST, SLURM_JOB_ID not set"):
        distributed_env_from_slurm({"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1"})


def test_port_is_the_same_for_every_task_and_in_the_safe_range():
    assert master_port("123456789") == 15000 + 6789
    assert all(15000 <= master_port(str(job)) < 25000 for job in (0, 9999, 10000, 31337, 2**40))
    with pytest.raises(LaunchError, match="SLURM_JOB_ID"):
        master_port("12_3")


def test_init_process_env_maps_slurm_for_an_srun_task_only():
    task = {**slurm_task(procid=13, localid=5, ntasks=32, nodelist="gpu[01-04]"), RANKS_FROM: "slurm"}
    assert init_process_env(task, fake_scontrol("gpu[01-04]", ["gpu01", "gpu02"])) == (13, 5, 32)
    assert (task["RANK"], task["MASTER_ADDR"]) == ("13", "gpu01")
    # A shell inside salloc has Slurm's variables too, but srun_command did not start it: one process.
    shell = slurm_task(procid=0, localid=0, ntasks=32, nodelist="gpu[01-04]")
    assert init_process_env(shell, fake_scontrol("never", [])) == (0, 0, 1)
    assert "RANK" not in shell


def test_read_ranks_under_torchrun():
    environ = {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29400",
    }
    assert read_ranks(environ) == (3, 1, 4)
    assert read_ranks({}) == (0, 0, 1)


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"RANK": "0", "WORLD_SIZE": "2"}, "LOCAL_RANK not"),
        ({"RANK": "a", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "must be an integer"),
        ({"RANK": "4", "LOCAL_RANK": "0", "WORLD_SIZE": "4"}, "0 <= RANK < WORLD_SIZE"),
        ({"RANK": "1", "LOCAL_RANK": "-1", "WORLD_SIZE": "4"}, "0 <= LOCAL_RANK"),
        ({"RANK": "3", "LOCAL_RANK": "2", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_WORLD_SIZE=2"),
        ({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, "MASTER_PORT not set"),
    ],
)
def test_inconsistent_rank_variables_are_refused(environ, message):
    with pytest.raises(LaunchError, match=message):
        read_ranks(environ)


@pytest.mark.parametrize(
    "torchrun, ranks, expected",
    [
        (0, [0, 0], 0),
        (1, [EXIT_PREEMPTED, EXIT_PREEMPTED], EXIT_PREEMPTED),  # the ranks saved; torchrun says a rank failed
        (
            -15,
            [EXIT_PREEMPTED],
            EXIT_PREEMPTED,
        ),  # torchrun died of the signal; the other rank was stopped by it
        (1, [], 1),  # the ranks crashed (no code left) or never started
        (1, [EXIT_PREEMPTED, 1], 1),  # a rank failed: not a clean preemption
        (-9, [], 128 + 9),
    ],
)
def test_the_jobs_exit_code_is_the_ranks_preemption_or_torchruns(torchrun, ranks, expected):
    assert exit_code(torchrun, ranks) == expected


def test_a_rank_leaves_its_exit_code_only_for_a_supervisor(tmp_path):
    write_exit_code({"RANK": "1"}, EXIT_PREEMPTED)  # not under `cumo launch`: nothing written, no error
    write_exit_code({EXIT_CODES: str(tmp_path), "RANK": "1"}, EXIT_PREEMPTED)
    assert (tmp_path / "rank-1").read_text() == str(EXIT_PREEMPTED)

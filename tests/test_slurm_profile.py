"""`make slurm-profile` (profiles/install_slurm.py): profiles/slurm as the user's Snakemake profile `slurm`,
the account and partition only where given, rewritten by a second run, a profile it did not write left as it
is; `snakemake --profile slurm all` from the repository root then plans the paper with the workflow profile's
resources and the account and partition on every job. tests/test_slurm.py runs that profile on real Slurm."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPOSITORY = Path(__file__).resolve().parents[1]
SOURCE = REPOSITORY / "profiles" / "slurm" / "config.yaml"


def user_env(env: dict, home: Path) -> dict:
    """`env` for a user whose home is `home`: Snakemake looks profile names up in $XDG_CONFIG_HOME/snakemake
    before ~/.config/snakemake, so that variable is dropped. The DeepSpeed ops that ranks compile at their
    first use stay in this process's cache (torch's, ~/.cache/torch_extensions): in a fresh home the first
    training job of every test rebuilt the CPU accelerator's shared-memory op, 40 s on this 2-core machine."""
    from torch.utils.cpp_extension import get_default_build_root  # deferred: importing torch takes seconds

    extensions = env.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    return {key: value for key, value in env.items() if key != "XDG_CONFIG_HOME"} | {
        "HOME": str(home),
        "TORCH_EXTENSIONS_DIR": extensions,
    }


def make_slurm_profile(home: Path, **variables: str) -> subprocess.CompletedProcess:
    """`make slurm-profile NAME=value ...` for the user whose home is `home`. The recipe is the one make
    prints (make --dry-run), run here: a .venv stamp older than pyproject.toml would make make reinstall the
    venv first."""
    printed = subprocess.run(
        ["make", "--silent", "--dry-run", "slurm-profile", *(f"{k}={v}" for k, v in variables.items())],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    recipe = printed.splitlines()[-1]
    assert "profiles/install_slurm.py" in recipe, printed
    return subprocess.run(
        ["bash", "-c", recipe], cwd=REPOSITORY, env=user_env(os.environ, home), capture_output=True, text=True
    )


def installed(home: Path) -> Path:
    return home / ".config" / "snakemake" / "slurm" / "config.yaml"


@pytest.mark.parametrize(
    "account, partition",
    [("", ""), ("proj-1", "gpu"), ("12345", ""), ("", "gpu,a100")],
    ids=["neither", "both", "numeric-account", "partitions"],
)
def test_installs_profiles_slurm_with_the_account_and_partition_given(tmp_path, account, partition):
    result = make_slurm_profile(tmp_path, SLURM_ACCOUNT=account, SLURM_PARTITION=partition)
    assert result.returncode == 0, result.stderr
    source = yaml.safe_load(SOURCE.read_text())
    assert "default-resources" not in source  # else the installed one would hold the key twice
    given = {"slurm_account": account, "slurm_partition": partition}
    expected = source | (
        {"default-resources": {k: v for k, v in given.items() if v}} if account or partition else {}
    )
    assert yaml.safe_load(installed(tmp_path).read_text()) == expected  # "12345" a string, not a number


def test_running_again_rewrites_its_own_copy_and_leaves_others_alone(tmp_path):
    path = installed(tmp_path)
    assert make_slurm_profile(tmp_path, SLURM_ACCOUNT="proj-1").returncode == 0
    first = path.read_text()
    assert make_slurm_profile(tmp_path, SLURM_ACCOUNT="proj-1").returncode == 0
    assert path.read_text() == first
    assert make_slurm_profile(tmp_path, SLURM_PARTITION="gpu").returncode == 0
    assert yaml.safe_load(path.read_text())["default-resources"] == {"slurm_partition": "gpu"}

    path.write_text(path.read_text().replace("jobs: 64", "jobs: 16"))  # the user's own edit
    edited = path.read_text()
    refused = make_slurm_profile(tmp_path, SLURM_PARTITION="gpu")
    assert refused.returncode != 0 and path.read_text() == edited
    assert f"mv {path.parent} {path.parent}.old" in refused.stderr, refused.stderr

    other = tmp_path / "other"  # another project's profile `slurm`, in the file Snakemake may prefer
    foreign = installed(other).with_name("profile.yaml")
    foreign.parent.mkdir(parents=True)
    foreign.write_text("executor: slurm\n")
    refused = make_slurm_profile(other)
    assert refused.returncode != 0 and "holds profile.yaml" in refused.stderr, refused.stderr
    assert os.listdir(foreign.parent) == ["profile.yaml"]


def test_snakemake_profile_slurm_plans_the_paper_with_account_and_partition(tmp_path):
    """The headline command, as a dry run (env modules instead of conda, which a dry run asks for and this
    machine lacks). The workflow profile profiles/default composes with the user's: per-rule runtimes and the
    training jobs' signal come from it, the account and partition from the user's default-resources."""
    assert make_slurm_profile(tmp_path, SLURM_ACCOUNT="proj-1", SLURM_PARTITION="gpu").returncode == 0
    result = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "--profile", "slurm", "all"]
        + ["--dry-run", "--forceall", "--nolock", "--software-deployment-method", "env-modules"],
        cwd=REPOSITORY,
        env=user_env(os.environ, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Using profiles slurm and workflow specific profile profiles/default" in result.stderr
    jobs = []  # (rule, first output, resources) per planned job
    for line in result.stdout.splitlines():
        if match := re.fullmatch(r"(?:local)?rule (\S+):", line):
            jobs.append([match[1], None, {}])
        elif jobs and (match := re.fullmatch(r"    output: ([^,]*).*", line)):
            jobs[-1][1] = match[1]
        elif jobs and (match := re.fullmatch(r"    resources: (.*)", line)):
            jobs[-1][2] = dict(pair.split("=", 1) for pair in match[1].split(", "))
    outputs = [output for _, output, _ in jobs if output]  # all: none
    assert {rule for rule, _, _ in jobs} >= {"download", "mixture", "train", "evaluate", "tables", "all"}
    assert all(output.startswith(("results/paper/", "data/")) for output in outputs), outputs  # not tiny's
    for rule, output, resources in jobs:
        assert (resources["slurm_account"], resources["slurm_partition"]) == ("proj-1", "gpu"), (rule, output)
        if rule == "train":
            assert resources["slurm_extra"] == "--signal=TERM@300", output
            assert resources["runtime"] == "1440", output  # profiles/default: 24 h on the first attempt

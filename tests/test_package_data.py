"""cumo's own data (the sources and their lock, the paper's numbers, the DeepSpeed files) lives in the package
and is read with importlib.resources: the steps that read it run from any directory, and a wheel carries it.
Before, they read config/... relative to the working directory and failed outside the checkout (issue 16)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from cumo.data import lockfile
from cumo.data.download import SOURCES
from cumo.report.tables import PAPER_RESULTS
from cumo.train.deepspeed_config import upstream_config
from cumo.train.stages import ZERO_CONFIGS

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PACKAGE_DATA = [
    SOURCES,
    lockfile.default_path(SOURCES),
    PAPER_RESULTS,
    *(upstream_config(zero) for zero in ZERO_CONFIGS),
]


def run_elsewhere(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    """argv run in `cwd`, outside the checkout, with this checkout's cumo imported."""
    return subprocess.run(
        argv,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{BIN}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_data_lies_in_the_package():
    for path in PACKAGE_DATA:
        assert Path(str(path)).is_relative_to(ROOT / "cumo") and path.is_file(), path


def test_the_report_reads_the_papers_numbers_from_any_directory(tmp_path):
    result = run_elsewhere(
        tmp_path, "cumo", "report", "tables", "--eval", str(tmp_path / "eval"), "--models", "cumo-mistral-7b",
        "--benchmarks", "sqa", "gqa", "--out", "tables",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "tables" / "main.md").read_text()
    assert "| reported | 73.9 | 64.9 |" in table, table  # Table 1, CuMo-Mistral-7B


def test_the_plan_reads_the_deepspeed_files_from_any_directory(tmp_path):
    """`cumo plan` fills every stage's DeepSpeed file (ZeRO-2, 3, 3 with offload) for the paper's config."""
    result = run_elsewhere(tmp_path, "cumo", "plan", str(ROOT / "config" / "config.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "train cumo-mixtral-8x7b sft" in result.stdout


def test_the_sources_and_their_lock_are_read_from_any_directory(tmp_path):
    code = (
        "from cumo.data import lockfile\n"
        "from cumo.data.download import SOURCES, load_sources\n"
        "print(len(load_sources()), lockfile.read(lockfile.default_path(SOURCES)) is not None)"
    )
    result = run_elsewhere(tmp_path, sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    count, locked = result.stdout.split()
    assert int(count) > 30 and locked == "True"


def test_a_built_wheel_carries_the_package_data(tmp_path):
    """pyproject.toml's package-data, as a non-editable install gets it (built from a copy: setuptools writes
    build/ and *.egg-info next to the sources)."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "cumo", source / "cumo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("cumo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in PACKAGE_DATA:
        assert Path(str(path)).relative_to(ROOT).as_posix() in names, path


def test_an_installed_cumo_reports_no_commit_rather_than_the_repository_around_it(tmp_path):
    """A venv inside another project: site-packages lies in that project's checkout, whose commit is not cumo's."""
    project = tmp_path / "project"
    site = project / ".venv" / "site-packages"
    shutil.copytree(ROOT / "cumo", site / "cumo", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(project)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "theirs"], check=True)
    code = "from cumo.provenance import git_commit; print(git_commit())"
    installed = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    assert installed.stdout.strip() == "None"
    assert run_elsewhere(tmp_path, sys.executable, "-c", code).stdout.strip() not in (
        "",
        "None",
    )  # the checkout's

"""Where a result came from: the code's commit, the packages' versions, files' digests.

Written into every stage's `finished.json` and every benchmark's `metrics.json`, so a number in a table can
be traced to the code, the environment and the exact model and data that made it.
"""

import hashlib
import subprocess
import sys
from importlib import metadata as package_metadata
from pathlib import Path


def git_commit() -> str | None:
    """The commit of the cumo checkout, with "-dirty" when files differ from it; None for an installed cumo,
    whose site-packages may lie inside some other repository (a venv in a project) whose commit is not ours."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():  # a folder in a clone, a file in a worktree
        return None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    names = ("cumo", "torch", "deepspeed", "transformers", "datasets", "tokenizers", "safetensors")
    versions = {"python": sys.version.split()[0]}
    for name in names:
        try:
            versions[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def sha256_tree(directory: Path) -> str:
    """One digest over a directory's files (relative names and contents, in name order), e.g. a model."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()

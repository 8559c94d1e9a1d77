"""The sources' lock file, `cumo/data/sources.lock.yaml`: the pins each source's first download learns, so that
every later download, on any machine, gets the same bytes.

`cumo/data/sources.yaml` declares what to fetch, but a Hub `revision: main` or a web `sha256: null` there cannot
become a pin without the network. The first download of a source records here the commit each Hub revision
resolved to and the sha256 of every file fetched or placed by hand; a later download fetches the locked
commit, not wherever `main` has moved since, and stops where a file's sha256 differs from the locked one
(cumo/data/download.py does both). `cumo download NAME --update-lock` renews a source's entry on purpose. As
with Cargo.lock or poetry.lock, the file is committed next to the declarations.

One entry per source, sources sorted by name, files by path, pins in declaration order:

    <source>:
      hub:
      - {repo: <owner/name>, revision: <as declared>, commit: <40 hex>, files: {<repo path>: <sha256>}}
      web:
      - {url: <as declared>, sha256: <64 hex>}
      manual:
      - {file: <name in the source's folder>, sha256: <64 hex>}

The workflow runs one download job per source, several at once, possibly on several hosts sharing the
checkout: each job re-reads the file and replaces it whole while it holds an exclusive lock, so no job loses
another's entry and no reader sees half a file.
"""

import fcntl
import re
from contextlib import contextmanager
from pathlib import Path

import yaml

COMMIT = re.compile(r"[0-9a-f]{40}")
SHA256 = re.compile(r"[0-9a-f]{64}")

# The fields of each kind of pin, with the pattern a value must match (None: any text); `files` maps repo
# paths to sha256 digests.
FIELDS = {
    "hub": {"repo": None, "revision": None, "commit": COMMIT, "files": SHA256},
    "web": {"url": None, "sha256": SHA256},
    "manual": {"file": None, "sha256": SHA256},
}
HEADER = """\
# Pins learned by the first download of each source (cumo/data/lockfile.py): the commit each Hub revision
# resolved to and the sha256 of every file fetched or placed by hand. Later downloads fetch the locked commits
# and stop where a file differs. Written by `cumo download`; renew a source's pins on purpose with
# `cumo download NAME --update-lock`. Commit this file with cumo/data/sources.yaml; do not edit it by hand.
"""
RESTORE = (
    "restore the file from git, or delete the source's entry and download it again to learn its pins anew"
)


class LockFileError(ValueError):
    """The lock file is malformed, or disagrees with the declarations; the message names the file, the source,
    both values and the fix."""


def default_path(sources: str | Path) -> Path:
    """The lock kept with a sources file: cumo/data/sources.yaml -> cumo/data/sources.lock.yaml."""
    sources = Path(sources)
    return sources.with_name(f"{sources.stem}.lock.yaml")


@contextmanager
def exclusive(path: Path):
    """Hold an exclusive lock on `path` (created if needed) until the block ends. flock reaches the server on
    NFS, so processes on other hosts wait too (nfs(5), `local_lock`: none by default)."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _check(entry, where: str) -> None:
    if not isinstance(entry, dict) or set(entry) - set(FIELDS):
        raise LockFileError(
            f"{where}: expected a mapping of {'/'.join(FIELDS)} pins, got {entry!r}; {RESTORE}"
        )
    for kind, pins in entry.items():
        if not isinstance(pins, list):
            raise LockFileError(f"{where}, {kind}: expected a list, got {pins!r}; {RESTORE}")
        for i, pin in enumerate(pins):
            at = f"{where}, {kind}[{i}]"
            if not isinstance(pin, dict) or set(pin) != set(FIELDS[kind]):
                raise LockFileError(f"{at}: expected the fields {list(FIELDS[kind])}, got {pin!r}; {RESTORE}")
            for field, pattern in FIELDS[kind].items():
                value = pin[field]
                if field == "files" and not (isinstance(value, dict) and value):
                    raise LockFileError(
                        f"{at}: files must map repo paths to sha256, got {value!r}; {RESTORE}"
                    )
                for text in value.values() if field == "files" else [value]:
                    if not isinstance(text, str) or (pattern is not None and not pattern.fullmatch(text)):
                        raise LockFileError(
                            f"{at}: {field} holds {text!r}, not "
                            f"{'text' if pattern is None else repr(pattern.pattern)}; {RESTORE}"
                        )


def read(path: str | Path) -> dict[str, dict]:
    """The lock's entries by source name, each checked ({} before the first download writes the file)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise LockFileError(f"{path} is not valid YAML ({error}); {RESTORE}") from error
    if raw is None:  # the header alone
        return {}
    if not isinstance(raw, dict):
        raise LockFileError(f"{path}: expected a mapping from source name to its pins; {RESTORE}")
    for name, entry in raw.items():
        _check(entry, f"{path}: source {name!r}")
    return raw


def render(entries: dict[str, dict]) -> str:
    """The file's text: the header, then the entries sorted by source name (each entry keeps its own order)."""
    if not entries:
        return HEADER
    ordered = {name: entries[name] for name in sorted(entries)}
    return HEADER + yaml.safe_dump(ordered, sort_keys=False, width=float("inf"))


def record(path: str | Path, name: str, entry: dict) -> None:
    """Make `entry` source `name`'s pins in the lock at `path`, keeping every other source's.

    The lock is taken on a sidecar file, not on the lock file itself: the lock file is replaced by a rename,
    and a process that opened the new file would not wait for one holding the old.
    """
    path = Path(path)
    _check(entry, f"{path}: source {name!r} (to be written)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(path.with_name(f".{path.name}.flock")):
        entries = read(path)
        entries[name] = entry
        partial = path.with_name(f"{path.name}.part")
        partial.write_text(render(entries))
        partial.replace(path)

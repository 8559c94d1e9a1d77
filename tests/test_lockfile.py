"""The sources' lock file (cumo/data/lockfile.py, issue 15): its format checked on reading, naming the file,
source and field; writers finishing at once keep each other's entries; the shipped lock is as written."""

import threading
from pathlib import Path

import pytest

from cumo.data import lockfile
from cumo.data.download import load_sources
from cumo.data.lockfile import LockFileError

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_download_jobs_finishing_at_once_keep_each_others_entries(tmp_path, monkeypatch):
    """The first writer is held between reading the lock and replacing it; the second must wait for it, or
    the first would replace the file with its own entry alone."""
    lock = tmp_path / "sources.lock.yaml"
    read, first_read, go_on = lockfile.read, threading.Event(), threading.Event()

    def held_read(path):
        entries = read(path)
        if threading.current_thread().name == "first":
            first_read.set()
            go_on.wait(10)
        return entries

    monkeypatch.setattr(lockfile, "read", held_read)
    writers = [
        threading.Thread(
            target=lockfile.record,
            args=(lock, name, {"manual": [{"file": name, "sha256": "a" * 64}]}),
            name=name,
        )
        for name in ("first", "second")
    ]
    writers[0].start()
    assert first_read.wait(10)
    writers[1].start()
    writers[1].join(0.5)
    assert writers[1].is_alive()  # waits for the first
    go_on.set()
    for writer in writers:
        writer.join(10)
    assert set(read(lock)) == {"first", "second"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("shapes: {hub: [{repo: org/shapes, revision: main, commit: main, files: {a: " + "a" * 64 + "}}]}",
         r"source 'shapes', hub\[0\]: commit holds 'main', not '\[0-9a-f\]\{40\}'"),
        ("shapes: {web: [{url: https://example.org/a}]}", r"source 'shapes', web\[0\]: expected the fields \['url', 'sha256'\]"),
        ("shapes: {web: [{url: x, sha256: y}]\n", "is not valid YAML"),
    ],
)  # fmt: skip
def test_a_malformed_lock_names_the_file_source_and_field(tmp_path, text, expected):
    lock = tmp_path / "sources.lock.yaml"
    lock.write_text(text)
    with pytest.raises(LockFileError, match=expected) as error:
        lockfile.read(lock)
    assert str(lock) in str(error.value) and "restore the file from git" in str(error.value)


def test_the_shipped_lock_pins_declared_sources_only_in_the_written_format():
    """Entries are learned by real downloads and committed: each must still name a declared source (delete it
    when its source goes), and the file must be as the writer writes it, so that diffs stay minimal."""
    lock = REPO_ROOT / "config/sources.lock.yaml"
    entries = lockfile.read(lock)
    assert set(entries) <= set(load_sources(REPO_ROOT / "config/sources.yaml"))
    assert lock.read_text() == lockfile.render(entries)
    assert lockfile.default_path(REPO_ROOT / "config/sources.yaml") == lock

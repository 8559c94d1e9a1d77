"""Pins learned on first download (cumo/data/lockfile.py, issue 15): the first download of a source writes its
Hub commits and every file's sha256 to the lock file, later downloads get those bytes or stop naming the file
and both digests, `--update-lock` renews them, and download jobs finishing at once keep each other's entries.
Against the servers of tests/servers.py, as tests/test_download.py."""

import threading
import warnings
from pathlib import Path

import pytest

from cumo.data import lockfile
from cumo.data.download import SOURCES, ChecksumError, download, load_sources
from cumo.data.lockfile import LockFileError
from tests.servers import FileServer, HubServer, local_only
from tests.test_download import (  # noqa: F401 (hub_env is a fixture)
    SHAPES_REPO,
    cumo_download,
    hub_env,
    sha256,
    write_config,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
IDS = b"1\n2\n"
COMMIT = HubServer.commit("org/shapes")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    local_only(monkeypatch)


def shapes_config(tmp_path: Path, server: FileServer, revision: str = "main", sha: str | None = None) -> Path:
    """A source with a Hub repo at `revision` and a web file declared with `sha` (the lock sits beside it)."""
    return write_config(
        tmp_path / "sources.yaml",
        {
            "shapes": {
                "page": "https://example.org/shapes",
                "folder": "shapes",
                "hub": [
                    {"repo": "org/shapes", "revision": revision, "allow": ["captions.json", "images.zip"]}
                ],
                "web": [{"url": f"{server.url}/ids.csv", "sha256": sha}],
            }
        },
    )


def ids_config(tmp_path: Path, server: FileServer) -> Path:
    """A source of one web file, its sha256 not declared (the lock sits beside it)."""
    body = {
        "page": "https://example.org/ids",
        "folder": "ids",
        "web": [{"url": f"{server.url}/ids.csv", "sha256": None}],
    }
    return write_config(tmp_path / "sources.yaml", {"ids": body})


def first_download(config: Path, data_root: Path) -> None:
    with pytest.warns(UserWarning, match="'main' is not a commit: this download pins the commit"):
        download(["shapes"], data_root, config)


def pins(url: str, repo: dict[str, bytes], commit: str = COMMIT, ids: bytes = IDS) -> dict:
    return {
        "hub": [
            {
                "repo": "org/shapes",
                "revision": "main",
                "commit": commit,
                "files": {name: sha256(repo[name]) for name in ("captions.json", "images.zip")},
            }
        ],
        "web": [{"url": url, "sha256": sha256(ids)}],
    }


@pytest.mark.usefixtures("hub_env")
def test_the_first_download_pins_commits_and_digests_and_a_moved_branch_is_fetched_at_the_pin(
    tmp_path, monkeypatch
):
    lock = tmp_path / "sources.lock.yaml"
    moved = SHAPES_REPO | {"captions.json": b'[{"id": "2"}]'}
    with FileServer({"/ids.csv": IDS}) as server, HubServer({"org/shapes": SHAPES_REPO}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        config = shapes_config(tmp_path, server)
        first_download(config, tmp_path / "data")
        assert lockfile.read(lock) == {"shapes": pins(f"{server.url}/ids.csv", SHAPES_REPO)}
        assert lock.read_text().startswith(lockfile.HEADER)
        written = lock.read_text()

        new = hub.push("org/shapes", moved)  # main moves on upstream
        asked = len(hub.requests)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a locked revision is reproducible: nothing to warn about
            download(["shapes"], tmp_path / "elsewhere", config)  # another machine, the lock committed
        resolved = [path for _, path, _ in hub.requests[asked:] if "/resolve/" in path]
        assert resolved and all(f"/resolve/{COMMIT}/" in path for path in resolved)
        assert not any("/revision/main" in path for _, path, _ in hub.requests[asked:])
        assert (tmp_path / "elsewhere/shapes/captions.json").read_bytes() == SHAPES_REPO["captions.json"]
        assert lock.read_text() == written

        with pytest.warns(UserWarning, match="'main' is not a commit"):
            download(["shapes"], tmp_path / "elsewhere", config, update_lock=True)
    assert lockfile.read(lock) == {"shapes": pins(f"{server.url}/ids.csv", moved, commit=new)}
    assert (tmp_path / "elsewhere/shapes/captions.json").read_bytes() == moved["captions.json"]


def test_a_file_changed_upstream_stops_naming_it_and_both_digests_until_the_lock_is_renewed(tmp_path):
    changed = b"1\n2\n3\n"
    with FileServer({"/ids.csv": IDS}) as server:
        config = ids_config(tmp_path, server)
        assert cumo_download(config, tmp_path / "data", "ids") is None
        written = (tmp_path / "sources.lock.yaml").read_text()
        server.files["/ids.csv"] = changed
        message = cumo_download(config, tmp_path / "elsewhere", "ids")
        local = tmp_path / "elsewhere/ids/ids.csv"
        assert (
            f"{local} has sha256 {sha256(changed)}, but {tmp_path / 'sources.lock.yaml'} pins {sha256(IDS)}"
            in message
        )
        assert "`cumo download ids --update-lock`" in message
        assert not local.exists() and not (tmp_path / "elsewhere/ids/.ids.done").exists()
        assert (tmp_path / "sources.lock.yaml").read_text() == written

        assert cumo_download(config, tmp_path / "elsewhere", "ids", "--update-lock") is None
    assert lockfile.read(tmp_path / "sources.lock.yaml")["ids"] == {
        "web": [{"url": f"{server.url}/ids.csv", "sha256": sha256(changed)}]
    }
    assert local.read_bytes() == changed


@pytest.mark.usefixtures("hub_env")
def test_a_hub_file_other_than_pinned_at_the_locked_commit_is_named_and_deleted(tmp_path, monkeypatch):
    repo = dict(SHAPES_REPO)
    with FileServer({"/ids.csv": IDS}) as server, HubServer({"org/shapes": repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        config = shapes_config(tmp_path, server)
        first_download(config, tmp_path / "data")
        repo["images.zip"] = b"history rewritten"  # the same commit, other bytes (and hashes listed for them)
        with pytest.raises(ChecksumError) as error:
            download(["shapes"], tmp_path / "elsewhere", config)
    local = tmp_path / "elsewhere/shapes/images.zip"
    assert f"{local} has sha256 {sha256(repo['images.zip'])}, but " in str(error.value)
    assert sha256(SHAPES_REPO["images.zip"]) in str(error.value)
    assert not local.exists() and (tmp_path / "elsewhere/shapes/captions.json").is_file()


@pytest.mark.usefixtures("hub_env")
def test_a_lock_that_contradicts_a_declared_pin_stops_before_anything_is_fetched(tmp_path, monkeypatch):
    other = "0" * 40
    with FileServer({"/ids.csv": IDS}) as server, HubServer({"org/shapes": SHAPES_REPO}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        first_download(shapes_config(tmp_path, server), tmp_path / "data")
        asked = len(server.requests), len(hub.requests)
        config = shapes_config(tmp_path, server, revision=other, sha=sha256(b"another release"))
        with pytest.raises(LockFileError) as error:
            download(["shapes"], tmp_path / "elsewhere", config)
        assert (len(server.requests), len(hub.requests)) == asked
    message = str(error.value)
    assert f"org/shapes at commit {other}, the lock at {COMMIT}" in message
    assert f"ids.csv with sha256 {sha256(b'another release')}, the lock with {sha256(IDS)}" in message
    assert "`cumo download shapes --update-lock`" in message


def test_a_source_done_before_the_lock_existed_has_its_pins_learned_from_its_marker(tmp_path):
    with FileServer({"/ids.csv": IDS}) as server:
        config = ids_config(tmp_path, server)
        download(["ids"], tmp_path / "data", config)
        asked = len(server.requests)
        download(["ids"], tmp_path / "data", config, lock=tmp_path / "new.lock.yaml")
        assert len(server.requests) == asked
    assert lockfile.read(tmp_path / "new.lock.yaml") == lockfile.read(tmp_path / "sources.lock.yaml")


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
    lock = lockfile.default_path(SOURCES)
    entries = lockfile.read(lock)
    assert set(entries) <= set(load_sources())
    assert lock.read_text() == lockfile.render(entries)
    assert lock == REPO_ROOT / "cumo/data/sources.lock.yaml"

"""Every download path of cumo.data.download against servers on 127.0.0.1 (tests/servers.py): plain HTTPS
files (whole, resumed after a dropped connection, retried, refused for a wrong digest), files placed by
hand, Hub repos through HF_ENDPOINT (pinned commit, allow-patterns, gated, corrupted; datasets and model
weights that from_pretrained then reads offline), safe extraction, markers and idempotency, and the
declarations in cumo/data/sources.yaml."""

import fnmatch
import hashlib
import io
import json
import tarfile
import warnings
import zipfile
from pathlib import Path

import huggingface_hub.constants
import pytest
import yaml
from huggingface_hub.utils import filter_repo_objects

from cumo.data import download as dl
from cumo.data.download import (
    SOURCES,
    ChecksumError,
    DownloadError,
    ManualStepNeeded,
    SourceConfigError,
    UnsafeArchiveError,
    download,
    extract_archive,
    fetch_url,
    load_sources,
    plan,
    source_folder,
)
from tests.servers import FileServer, HubServer, local_only

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTENT = bytes(range(256)) * 400  # 100 KiB


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    local_only(monkeypatch)


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def write_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                archive.addfile(info, io.BytesIO(member[1]))
    return path


def link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def write_config(path: Path, sources: dict) -> Path:
    path.write_text(yaml.safe_dump(sources))
    return path


# -- HTTPS -------------------------------------------------------------------------------------------------


def test_fetch_url_writes_the_whole_file_and_returns_its_digest(tmp_path):
    with FileServer({"/a.bin": CONTENT}) as server:
        digest = fetch_url(f"{server.url}/a.bin", tmp_path / "a.bin", sha256(CONTENT))
    assert digest == sha256(CONTENT)
    assert (tmp_path / "a.bin").read_bytes() == CONTENT
    assert not (tmp_path / "a.bin.part").exists()


def test_fetch_url_resumes_after_a_dropped_connection(tmp_path):
    with FileServer({"/a.bin": CONTENT}, drop={"/a.bin"}) as server:
        fetch_url(f"{server.url}/a.bin", tmp_path / "a.bin", sha256(CONTENT), backoff_s=0)
    first, second = server.requested("GET", "/a.bin")
    assert "Range" not in first
    assert second["Range"] == f"bytes={len(CONTENT) // 2}-"  # only the missing half was asked for
    assert (tmp_path / "a.bin").read_bytes() == CONTENT


def test_fetch_url_retries_server_errors_with_exponential_back_off(tmp_path, monkeypatch):
    delays = []
    monkeypatch.setattr(dl.time, "sleep", delays.append)
    with FileServer({"/a.bin": CONTENT}, errors={"/a.bin": [503, 502]}) as server:
        fetch_url(f"{server.url}/a.bin", tmp_path / "a.bin", backoff_s=1.5)
    assert delays == [1.5, 3.0]
    assert len(server.requested("GET", "/a.bin")) == 3
    assert (tmp_path / "a.bin").read_bytes() == CONTENT


def test_fetch_url_gives_up_after_its_attempts(tmp_path):
    with FileServer({"/a.bin": CONTENT}, errors={"/a.bin": [503] * 3}) as server:
        with pytest.raises(DownloadError, match="failed 2 times") as error:
            fetch_url(f"{server.url}/a.bin", tmp_path / "a.bin", attempts=2, backoff_s=0)
    assert f"{server.url}/a.bin" in str(error.value)
    assert not (tmp_path / "a.bin").exists()


def test_fetch_url_does_not_retry_a_missing_file(tmp_path):
    with FileServer({}) as server:
        with pytest.raises(DownloadError, match="HTTP 404") as error:
            fetch_url(f"{server.url}/gone.zip", tmp_path / "gone.zip", backoff_s=0)
    assert "cumo/data/sources.yaml" in str(error.value)
    assert len(server.requested("GET", "/gone.zip")) == 1


def test_fetch_url_removes_a_download_whose_digest_differs(tmp_path):
    declared = sha256(b"what the config expects")
    with FileServer({"/a.bin": CONTENT}) as server:
        with pytest.raises(ChecksumError) as error:
            fetch_url(f"{server.url}/a.bin", tmp_path / "a.bin", declared)
    message = str(error.value)
    assert str(tmp_path / "a.bin") in message and declared in message and sha256(CONTENT) in message
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part is left


# -- Archives ----------------------------------------------------------------------------------------------


def test_extract_archive_unpacks_zip_and_tar_gz_and_flattens(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"images/x/1.jpg": b"1", "images/y/2.jpg": b"2"}))
    assert extract_archive(archive, tmp_path / "zip") == 2
    assert (tmp_path / "zip/images/x/1.jpg").read_bytes() == b"1"
    assert extract_archive(archive, tmp_path / "flat", flatten=True) == 2
    assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == ["1.jpg", "2.jpg"]
    tarred = write_tar(
        tmp_path / "b.tar.gz", [("train/documents/p.png", b"p"), link("train/alias.png", "documents/p.png")]
    )
    assert extract_archive(tarred, tmp_path / "tar") == 1
    assert (tmp_path / "tar/train/alias.png").read_bytes() == b"p"


@pytest.mark.parametrize(
    "kind, member, name",
    [
        ("zip", "../evil.txt", "../evil.txt"),
        ("zip", "/etc/evil.txt", "/etc/evil.txt"),
        ("zip", "a/../../evil.txt", "a/../../evil.txt"),
        ("tar", ("../evil.txt", b"x"), "../evil.txt"),
        ("tar", ("/abs/evil.txt", b"x"), "/abs/evil.txt"),
        ("tar", link("etc", "/etc"), "etc"),
        ("tar", link("a/up", "../../outside"), "a/up"),
        ("tar", link("hard", "../outside", tarfile.LNKTYPE), "hard"),
    ],
)
def test_extract_archive_refuses_members_that_escape(tmp_path, kind, member, name):
    if kind == "zip":
        archive = tmp_path / "bad.zip"
        archive.write_bytes(zip_bytes({"ok.txt": b"ok", member: b"x"}))
    else:
        archive = write_tar(tmp_path / "bad.tar.gz", [("ok.txt", b"ok"), member])
    into = tmp_path / "into"
    with pytest.raises(UnsafeArchiveError) as error:
        extract_archive(archive, into)
    assert str(archive) in str(error.value) and repr(name) in str(error.value)
    assert list(into.iterdir()) == []  # refused before anything was written
    assert not (tmp_path / "evil.txt").exists()


def test_extract_archive_names_a_file_that_is_no_archive(tmp_path):
    page = tmp_path / "images.zip"
    page.write_text("<html>Please log in</html>")
    with pytest.raises(DownloadError, match="neither a zip nor a tar"):
        extract_archive(page, tmp_path / "into")


# -- A web source end to end -------------------------------------------------------------------------------


def test_web_source_is_fetched_extracted_marked_and_then_left_alone(tmp_path, capsys):
    shapes = zip_bytes({"train/1.jpg": b"one", "train/2.jpg": b"two"})
    ids = b"1\n2\n"
    with FileServer({"/shapes.zip": shapes, "/ids.csv": ids}) as server:
        config = write_config(
            tmp_path / "sources.yaml",
            {
                "shapes": {
                    "page": "https://example.org/shapes",
                    "folder": "shapes",
                    "web": [
                        {"url": f"{server.url}/shapes.zip", "sha256": sha256(shapes)},
                        {"url": f"{server.url}/ids.csv", "sha256": None},
                    ],
                    "extract": [{"archive": "shapes.zip", "into": ".", "expect": ["train"]}],
                }
            },
        )
        (record,) = download(["shapes"], tmp_path / "data", config)
        requests_after_first = len(server.requests)
        (tmp_path / "data/shapes/shapes.zip").unlink()  # archives may go once the marker is there
        again = download(["shapes"], tmp_path / "data", config)
    marker = tmp_path / "data/shapes/.shapes.done"
    assert json.loads(marker.read_text()) == record == again[0]
    assert record["sha256"] == {"shapes.zip": sha256(shapes), "ids.csv": sha256(ids)}
    assert record["extracted"] == {"shapes.zip": 2}
    assert (tmp_path / "data/shapes/train/2.jpg").read_bytes() == b"two"
    assert f"sha256 {sha256(ids)}" in capsys.readouterr().out  # the unknown digest is printed to be declared
    assert len(server.requests) == requests_after_first  # the second call asked for nothing


def test_an_archive_of_another_layout_stops_the_source_without_a_marker(tmp_path):
    shapes = zip_bytes({"pictures/1.jpg": b"one"})
    with FileServer({"/shapes.zip": shapes}) as server:
        config = write_config(
            tmp_path / "sources.yaml",
            {
                "shapes": {
                    "page": "https://example.org/shapes",
                    "folder": "shapes",
                    "web": [{"url": f"{server.url}/shapes.zip", "sha256": None}],
                    "extract": [{"archive": "shapes.zip", "expect": ["train"]}],
                }
            },
        )
        with pytest.raises(DownloadError, match="fix extract of shapes") as error:
            download(["shapes"], tmp_path / "data", config)
    assert str(tmp_path / "data/shapes/train") in str(error.value)
    assert not (tmp_path / "data/shapes/.shapes.done").exists()


# -- Files behind a registration ---------------------------------------------------------------------------


def test_manual_source_stops_with_instructions_then_checks_and_takes_the_files(tmp_path):
    images, questions = b"images archive", b"questions"
    with FileServer({"/extra.txt": b"extra"}) as server:
        config = write_config(
            tmp_path / "sources.yaml",
            {
                "docs": {
                    "page": "https://example.org/docs",
                    "folder": "docs",
                    "manual": [
                        {
                            "file": "images.tar.gz",
                            "get": "register at https://example.org/register",
                            "sha256": sha256(images),
                        },
                        {
                            "file": "questions.json",
                            "get": "download the questions from https://example.org/q",
                            "sha256": None,
                        },
                    ],
                    "web": [{"url": f"{server.url}/extra.txt", "sha256": None}],
                }
            },
        )
        folder = tmp_path / "data/docs"
        with pytest.raises(ManualStepNeeded) as error:
            download(["docs"], tmp_path / "data", config)
        message = str(error.value)
        assert "https://example.org/register" in message and "https://example.org/q" in message
        assert str(folder / "images.tar.gz") in message and str(folder / "questions.json") in message
        assert (
            f"checked against sha256 {sha256(images)}" in message and "no sha256 is declared yet" in message
        )
        assert server.requests == []  # nothing of the source was fetched

        (folder / "images.tar.gz").write_bytes(b"a truncated download")
        (folder / "questions.json").write_bytes(questions)
        with pytest.raises(ChecksumError) as error:
            download(["docs"], tmp_path / "data", config)
        assert str(folder / "images.tar.gz") in str(error.value) and sha256(images) in str(error.value)
        assert sha256(b"a truncated download") in str(error.value)
        assert server.requests == []

        (folder / "images.tar.gz").write_bytes(images)
        (record,) = download(["docs"], tmp_path / "data", config)
    assert record["sha256"] == {
        "images.tar.gz": sha256(images),
        "questions.json": sha256(questions),
        "extra.txt": sha256(b"extra"),
    }


# -- Hugging Face Hub --------------------------------------------------------------------------------------

SHAPES_REPO = {
    "captions.json": b'[{"id": "1"}]',
    "images.zip": zip_bytes({"00000/1.jpg": b"one"}),
    "README.md": b"# shapes",
    "extra/big.parquet": b"not wanted",
}


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """No token, and whatever huggingface_hub caches goes to tmp_path; HF_ENDPOINT is set by each test."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf/token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf/hub"))
    return monkeypatch


def hub_config(tmp_path: Path, revision: str = "main", allow=("captions.json", "images.zip"), **repo) -> Path:
    archive = f"{repo['into']}/images.zip" if "into" in repo else "images.zip"
    return write_config(
        tmp_path / "sources.yaml",
        {
            "shapes": {
                "page": "https://huggingface.co/datasets/org/shapes",
                "folder": "shapes",
                "hub": [{"repo": "org/shapes", "revision": revision, "allow": list(allow), **repo}],
                "extract": [{"archive": archive, "into": "images", "expect": ["images/00000"]}],
            }
        },
    )


def test_hub_source_fetches_the_allowed_files_at_the_resolved_commit(tmp_path, hub_env):
    commit = HubServer.commit("org/shapes")
    with HubServer({"org/shapes": SHAPES_REPO}) as hub:
        hub_env.setenv("HF_ENDPOINT", hub.url)
        with pytest.warns(UserWarning, match="'main' is not a commit"):
            (record,) = download(["shapes"], tmp_path / "data", hub_config(tmp_path))
    assert record["hub"] == [
        {
            "repo": "org/shapes",
            "repo_type": "dataset",
            "revision": "main",
            "commit": commit,
            "sha256": {name: sha256(SHAPES_REPO[name]) for name in ("captions.json", "images.zip")},
        }
    ]
    folder = tmp_path / "data/shapes"
    assert (folder / "captions.json").read_bytes() == SHAPES_REPO["captions.json"]
    assert (folder / "images/00000/1.jpg").read_bytes() == b"one"
    assert not (folder / "README.md").exists() and not (folder / "extra").exists()
    resolved = [path for method, path, _ in hub.requests if "/resolve/" in path]
    assert resolved and all(f"/resolve/{commit}/" in path for path in resolved)  # one commit for all files
    assert not any("README" in path or "parquet" in path for path in resolved)
    assert not (tmp_path / "hf/hub").exists()  # huggingface_hub's own cache was not used


def test_hub_source_pinned_to_a_commit_does_not_warn(tmp_path, hub_env):
    with HubServer({"org/shapes": SHAPES_REPO}) as hub:
        hub_env.setenv("HF_ENDPOINT", hub.url)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            config = hub_config(tmp_path, HubServer.commit("org/shapes"), into="raw")
            (record,) = download(["shapes"], tmp_path / "data", config)
    assert record["hub"][0]["commit"] == record["hub"][0]["revision"]
    assert (tmp_path / "data/shapes/raw/captions.json").is_file()  # `into`: a sub-folder of the source's
    assert record["extracted"] == {"raw/images.zip": 1}


def test_gated_repo_without_a_token_stops_before_any_request(tmp_path, hub_env):
    with HubServer({"org/shapes": SHAPES_REPO}, gated={"org/shapes"}) as hub:
        hub_env.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(ManualStepNeeded) as declared:
            download(["shapes"], tmp_path / "data", hub_config(tmp_path, gated=True))
        assert hub.requests == []
        # Declared or not, the Hub's answer for a gated repo gives the same instructions.
        with pytest.warns(UserWarning), pytest.raises(ManualStepNeeded) as answered:
            download(["shapes"], tmp_path / "data", hub_config(tmp_path))
        hub_env.setenv("HF_TOKEN", "hf_test")
        with pytest.warns(UserWarning):
            (record,) = download(["shapes"], tmp_path / "data", hub_config(tmp_path, gated=True))
    for error in (declared, answered):
        message = str(error.value)
        assert "HF_TOKEN" in message and "https://huggingface.co/datasets/org/shapes" in message
        assert str(tmp_path / "data/shapes") in message and "sha256" in message
    assert record["hub"][0]["sha256"]["images.zip"] == sha256(SHAPES_REPO["images.zip"])


def test_hub_file_with_another_digest_is_deleted_and_named(tmp_path, hub_env):
    wrong = bytes(255 - b for b in SHAPES_REPO["images.zip"])  # same size: only the digest tells
    with HubServer({"org/shapes": SHAPES_REPO}, corrupt={("org/shapes", "images.zip"): wrong}) as hub:
        hub_env.setenv("HF_ENDPOINT", hub.url)
        with pytest.warns(UserWarning), pytest.raises(ChecksumError) as error:
            download(["shapes"], tmp_path / "data", hub_config(tmp_path))
    local = tmp_path / "data/shapes/images.zip"
    message = str(error.value)
    assert str(local) in message and sha256(wrong) in message and sha256(SHAPES_REPO["images.zip"]) in message
    assert not local.exists()
    assert not (tmp_path / "data/shapes/.shapes.done").exists()


def test_hub_allow_pattern_matching_nothing_names_the_repo_files(tmp_path, hub_env):
    with HubServer({"org/shapes": SHAPES_REPO}) as hub:
        hub_env.setenv("HF_ENDPOINT", hub.url)
        with pytest.warns(UserWarning), pytest.raises(DownloadError) as error:
            download(
                ["shapes"], tmp_path / "data", hub_config(tmp_path, allow=["images.zip", "captions_v2.json"])
            )
    assert "'captions_v2.json'" in str(error.value) and "captions.json" in str(error.value)


def test_gated_hub_source_with_a_conversion_writes_its_entries(tmp_path, hub_env):
    lima = b'{"conversations": ["Hi?", "Hello."], "source": "test"}\n'
    config = write_config(
        tmp_path / "sources.yaml",
        {
            "lima": {
                "page": "https://huggingface.co/datasets/GAIR/lima",
                "folder": "lima",
                "hub": [{"repo": "GAIR/lima", "revision": "main", "allow": ["train.jsonl"], "gated": True}],
            }
        },
    )
    with HubServer({"GAIR/lima": {"train.jsonl": lima}}, gated={"GAIR/lima"}) as hub:
        hub_env.setenv("HF_ENDPOINT", hub.url)
        hub_env.setenv("HF_TOKEN", "hf_test")
        with pytest.warns(UserWarning):
            (record,) = download(["lima"], tmp_path / "data", config)
    assert record["converted"] == {"lima": 1}
    entries = json.loads((tmp_path / "data/jsons/sources/lima.json").read_text())
    assert entries == [
        {
            "id": "lima_0",
            "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}],
        }
    ]


def tiny_mistral_repo(tmp_path: Path) -> tuple[dict[str, bytes], object]:
    """A real (tiny) Mistral checkpoint as transformers writes it, sharded like Mistral-7B's, and next to it
    a consolidated.safetensors in Mistral's own format, as the mistralai repos carry: the files of a model
    repo, and the model they hold."""
    import torch
    from safetensors.torch import save_file
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MistralForCausalLM(config)
    model.save_pretrained(tmp_path / "saved", max_shard_size="8KB")
    files = {path.name: path.read_bytes() for path in (tmp_path / "saved").iterdir()}
    save_file(model.state_dict(), tmp_path / "consolidated.safetensors")
    files["consolidated.safetensors"] = (tmp_path / "consolidated.safetensors").read_bytes()
    files["README.md"] = b"# tiny mistral"
    return files, model


def model_config(tmp_path: Path, gated: bool = False) -> Path:
    """A model source with the weights patterns cumo/data/sources.yaml declares for Mistral-7B-Instruct-v0.2
    (its tokenizer's aside: the tiny model has none)."""
    shipped = load_sources(SOURCES)["mistral_7b_instruct_v0_2"].hub[0]
    repo = {
        "repo": "org/tiny-lm",
        "repo_type": "model",
        "revision": "main",
        "gated": gated,
        "allow": [pattern for pattern in shipped.allow if "token" not in pattern],
    }
    return write_config(
        tmp_path / "sources.yaml",
        {
            "tiny_lm": {
                "page": "https://huggingface.co/org/tiny-lm",
                "folder": "models/tiny-lm",
                "hub": [repo],
            }
        },
    )


def test_model_repo_lands_as_a_directory_from_pretrained_reads_offline(tmp_path, hub_env):
    import torch
    from transformers import AutoModelForCausalLM

    files, model = tiny_mistral_repo(tmp_path)
    config = model_config(tmp_path)
    data = tmp_path / "data"
    with pytest.raises(FileNotFoundError, match="Run `cumo download tiny_lm --data-root"):
        source_folder("tiny_lm", data, config)
    with HubServer({"org/tiny-lm": files}, models={"org/tiny-lm"}) as hub:
        hub_env.setenv("HF_ENDPOINT", hub.url)
        with pytest.warns(UserWarning, match="'main' is not a commit"):
            (record,) = download(["tiny_lm"], data, config)
    commit = HubServer.commit("org/tiny-lm")
    fetched = {name for name in files if name.startswith("model") or name.endswith(".json")}
    assert len([name for name in fetched if name.endswith(".safetensors")]) > 1  # sharded, with an index
    assert record["hub"] == [
        {
            "repo": "org/tiny-lm",
            "repo_type": "model",
            "revision": "main",
            "commit": commit,
            "sha256": {name: sha256(files[name]) for name in sorted(fetched)},
        }
    ]
    folder = source_folder("tiny_lm", data, config)
    assert folder == data / "models/tiny-lm" and (folder / ".tiny_lm.done").is_file()
    assert not (folder / "consolidated.safetensors").exists() and not (folder / "README.md").exists()
    # Asked as a model, never as a dataset; every file at the one resolved commit.
    paths = [path for _, path, _ in hub.requests]
    assert not any("datasets" in path for path in paths)
    assert any(path.startswith("/api/models/org/tiny-lm/") for path in paths)
    resolved = [path for path in paths if "/resolve/" in path]
    assert resolved and all(path.startswith(f"/org/tiny-lm/resolve/{commit}/") for path in resolved)
    # The server is gone: the directory alone is the model, tensor for tensor.
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(tensor, expected[key]) for key, tensor in loaded.state_dict().items())


def test_gated_model_repo_without_a_token_names_the_model_page(tmp_path, hub_env):
    names = (
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "model-00001-of-00001.safetensors",
    )
    files = {name: name.encode() for name in names}
    with HubServer({"org/tiny-lm": files}, gated={"org/tiny-lm"}, models={"org/tiny-lm"}) as hub:
        hub_env.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(ManualStepNeeded) as declared:
            download(["tiny_lm"], tmp_path / "data", model_config(tmp_path, gated=True))
        assert hub.requests == []
        # Not declared gated: the Hub's 401 for the model's files gives the same instructions.
        with pytest.warns(UserWarning), pytest.raises(ManualStepNeeded) as answered:
            download(["tiny_lm"], tmp_path / "data", model_config(tmp_path))
        assert any("/org/tiny-lm/resolve/" in path for _, path, _ in hub.requests)
    for error in (declared, answered):
        message = str(error.value)
        assert (
            "accept its terms at https://huggingface.co/org/tiny-lm," in message and "datasets" not in message
        )
        assert "HF_TOKEN" in message and str(tmp_path / "data/models/tiny-lm") in message
    assert not (tmp_path / "data/models/tiny-lm/.tiny_lm.done").exists()


def test_source_folder_of_an_undeclared_source_lists_the_declared_ones(tmp_path):
    with pytest.raises(
        SourceConfigError, match=r"unknown source 'clip'; the declared ones are \[.*'clip_vit"
    ):
        source_folder("clip", tmp_path, SOURCES)


# -- Declarations ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"page": "p", "folder": "x", "mirror": "y"}, r"source 'bad': unknown field\(s\) \['mirror'\]"),
        ({"page": "p"}, r"source 'bad': missing field\(s\) \['folder'\]"),
        (
            {
                "page": "p",
                "folder": "x",
                "hub": [{"repo": "a/b", "revision": "main", "allow": ["*"], "repo_type": "space"}],
            },
            r"source 'bad', hub\[0\]: repo_type 'space' is not one of \['dataset', 'model'\]",
        ),
        ({"page": "p", "folder": "../x"}, "folder: '../x' must be a relative path"),
        (
            {"page": "p", "folder": "x", "web": [{"url": "u", "sha256": "abc"}]},
            r"web\[0\]: sha256 'abc' is not 64",
        ),
        (
            {"page": "p", "folder": "x", "hub": [{"repo": "a/b", "revision": "main"}]},
            r"hub\[0\]: missing field\(s\) \['allow'\]",
        ),
        (
            {"page": "p", "folder": "x", "requires": ["nowhere"]},
            r"'bad' requires unknown source\(s\) \['nowhere'\]",
        ),
    ],
)
def test_load_sources_names_the_source_and_field_of_a_bad_declaration(tmp_path, body, expected):
    with pytest.raises(SourceConfigError, match=expected):
        load_sources(write_config(tmp_path / "sources.yaml", {"bad": body}))


def test_plan_puts_requirements_first_once_and_refuses_cycles(tmp_path):
    def source(*requires):
        return {"page": "p", "folder": "x", "requires": list(requires)}

    sources = load_sources(
        write_config(
            tmp_path / "a.yaml", {"mix": source("coco", "vg"), "vg": source("coco"), "coco": source()}
        )
    )
    assert [s.name for s in plan(["mix", "coco"], sources)] == ["coco", "vg", "mix"]
    with pytest.raises(SourceConfigError, match="unknown source 'cocoa'"):
        plan(["cocoa"], sources)
    cyclic = load_sources(write_config(tmp_path / "b.yaml", {"a": source("b"), "b": source("a")}))
    with pytest.raises(SourceConfigError, match="a -> b -> a"):
        plan(["a"], cyclic)


# The issue's list of training sources, and DESIGN section 1's data tree.
ISSUE_SOURCES = {
    "llava_pretrain", "allava", "llava_665k", "coco", "gqa", "ocr_vqa", "textvqa", "vg", "sharegpt4v", "sam",
    "share_textvqa", "web_celebrity", "web_landmark", "wikiart", "laion_gpt4v", "docvqa", "syndog_en",
    "chartqa", "dvqa", "ai2d", "infovqa", "lima", "cumo_mixtures",
}  # fmt: skip
DESIGN_FOLDERS = {
    "llava/llava_pretrain", "coco", "gqa", "ocr_vqa", "textvqa", "vg", "sam", "share_textvqa", "web-celebrity",
    "web-landmark", "wikiart", "ALLaVA", "docvqa", "chartqa", "dvqa", "ai2d", "infovqa", "lima", "syndog-en",
    "jsons",
}  # fmt: skip


def test_shipped_declarations_cover_every_source_in_cumos_tree():
    sources = load_sources(SOURCES)
    # The evaluation sources (eval_*) are tests/test_eval_sources.py's.
    assert {name for name in sources if not name.startswith("eval_")} == ISSUE_SOURCES | set(
        BASE_MODELS
    ) | set(RELEASED)
    assert DESIGN_FOLDERS <= {source.folder for source in sources.values()}
    assert {repo.repo for s in sources.values() for repo in s.hub} >= {
        "liuhaotian/LLaVA-Pretrain", "FreedomIntelligence/ALLaVA-4V", "liuhaotian/LLaVA-Instruct-150K",
        "laion/gpt4v-dataset", "naver-clova-ix/synthdog-en", "GAIR/lima", "shi-labs/CuMo_dataset",
    }  # fmt: skip
    assert [r.gated for r in sources["lima"].hub] == [True]
    assert {source.name for source in sources.values() if source.manual} >= {"docvqa", "infovqa"}
    assert plan(["llava_665k"], sources)[-1].name == "llava_665k"
    # No invented pins: a revision is a branch (warned about at download) or a full commit.
    assert all(
        r.revision == "main" or dl.COMMIT.fullmatch(r.revision) for s in sources.values() for r in s.hub
    )


# The base models' sources, and the Hub ids pretrain loads (cumo/train/stages.py): the same repos.
BASE_MODELS = {
    "clip_vit_large_patch14_336": "openai/clip-vit-large-patch14-336",
    "mistral_7b_instruct_v0_2": "mistralai/Mistral-7B-Instruct-v0.2",
    "mixtral_8x7b_instruct_v0_1": "mistralai/Mixtral-8x7B-Instruct-v0.1",
}
# File listings as the Hub shows them, each with the files from_pretrained reads. CLIP: the files of
# openai/clip-vit-large-patch14-336 (no safetensors). Mistral: the layout of mistralai/Mistral-7B-Instruct-v0.3
# (HF shards next to consolidated.safetensors, params.json and tokenizer.model.v3), with the .bin shards and
# consolidated.0N.pt that older mistralai repos (Mixtral-8x7B-v0.1) add.
CLIP_LISTING = (
    ".gitattributes", "README.md", "config.json", "merges.txt", "preprocessor_config.json", "pytorch_model.bin",
    "special_tokens_map.json", "tf_model.h5", "tokenizer.json", "tokenizer_config.json", "vocab.json",
)  # fmt: skip
CLIP_WANTED = {"config.json", "preprocessor_config.json", "pytorch_model.bin"}
MISTRAL_LISTING = (
    ".gitattributes", "README.md", "config.json", "consolidated.safetensors", "consolidated.00.pt",
    "generation_config.json", "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors", "model.safetensors.index.json", "params.json",
    "pytorch_model-00001-of-00003.bin", "pytorch_model.bin.index.json", "special_tokens_map.json",
    "tokenizer.json", "tokenizer.model", "tokenizer.model.v3", "tokenizer_config.json",
)  # fmt: skip
MISTRAL_WANTED = {
    "config.json", "generation_config.json", "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", "model.safetensors.index.json",
    "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
}  # fmt: skip


def test_base_models_are_model_repos_that_fetch_only_what_from_pretrained_reads():
    from cumo.train.stages import CLIP_SOURCE, LLM_SOURCES

    sources = load_sources(SOURCES)
    assert set(BASE_MODELS.values()) == {CLIP_SOURCE, *LLM_SOURCES.values()}
    for name, repo_id in BASE_MODELS.items():
        (repo,) = sources[name].hub
        assert (repo.repo, repo.repo_type, repo.gated) == (repo_id, "model", repo_id.startswith("mistralai/"))
        assert sources[name].page == repo.page == f"https://huggingface.co/{repo_id}"
        assert sources[name].folder == f"models/{repo_id.split('/')[1]}"
        listing, wanted = (CLIP_LISTING, CLIP_WANTED) if "clip" in name else (MISTRAL_LISTING, MISTRAL_WANTED)
        # Every pattern selects something (else fetch_hub stops), and together only the wanted files: not
        # Mistral's own-format copies of the weights, which would double the download.
        for pattern in repo.allow:
            assert list(filter_repo_objects(listing, allow_patterns=[pattern])), (name, pattern)
        assert set(filter_repo_objects(listing, allow_patterns=list(repo.allow))) == wanted, name


# The released checkpoints' sources (config/released.yaml evaluates them) and their Hub repos (CuMo's README).
RELEASED = {"cumo_mistral_7b": "shi-labs/CuMo-mistral-7b", "cumo_mixtral_8x7b": "shi-labs/CuMo-mixtral-8x7b"}
# What CuMo's training left in such a repo, as its code writes it (not seen here: no network): transformers
# 4.37's Trainer.save_model, i.e. save_pretrained's 5 GB safetensors shards with their index, the generation
# config and training_args.bin, and the slow Llama tokenizer's files (cumo/train/train.py: use_fast=False).
RELEASED_LISTING = (
    ".gitattributes", "README.md", "config.json", "generation_config.json", "model-00001-of-00004.safetensors",
    "model-00002-of-00004.safetensors", "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
    "model.safetensors.index.json", "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json",
    "training_args.bin",
)  # fmt: skip
RELEASED_WANTED = {
    "config.json", "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
    "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors", "model.safetensors.index.json",
    "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json",
}  # fmt: skip


def test_released_checkpoints_are_model_repos_that_fetch_only_what_the_conversion_reads():
    sources = load_sources(SOURCES)
    released = yaml.safe_load((REPO_ROOT / "config/released.yaml").read_text())["models"]
    assert {entry["released"] for entry in released.values()} == set(RELEASED)
    for name, repo_id in RELEASED.items():
        (repo,) = sources[name].hub
        assert (repo.repo, repo.repo_type, repo.gated, repo.revision) == (repo_id, "model", False, "main")
        assert sources[name].page == repo.page == f"https://huggingface.co/{repo_id}"
        assert sources[name].folder == f"models/{repo_id.split('/')[1]}"
        for pattern in repo.allow:
            assert list(filter_repo_objects(RELEASED_LISTING, allow_patterns=[pattern])), (name, pattern)
        assert set(filter_repo_objects(RELEASED_LISTING, allow_patterns=list(repo.allow))) == RELEASED_WANTED


def test_every_archive_to_extract_is_one_its_source_fetches():
    for source in load_sources(SOURCES).values():
        fetched = [item.file for item in (*source.web, *source.manual)]
        fetched += [
            f"{repo.into}/{pattern}".removeprefix("./") for repo in source.hub for pattern in repo.allow
        ]
        for step in source.extract:
            assert any(fnmatch.fnmatch(name, step.archive) or name == step.archive for name in fetched), (
                source.name,
                step.archive,
            )


def test_every_source_module_belongs_to_a_declared_source():
    sources = load_sources(SOURCES)
    modules = {path.stem for path in (REPO_ROOT / "cumo/data/sources").glob("*.py")} - {"__init__"}
    assert modules <= set(sources)
    for name in modules:
        module = dl.source_module(name)
        assert hasattr(module, "fetch") or hasattr(module, "convert"), name


# -- Complete or not taken (issue 17) -------------------------------------------------------------------------

BIG = bytes(range(256)) * 4096  # 1 MiB, as in the issue


def cumo_download(config: Path, data_root: Path, *names: str) -> str | None:
    """`cumo download NAMES` as a user runs it: its one-line error, or None."""
    from cumo.cli import main

    try:
        main(["download", *names, "--config", str(config), "--data-root", str(data_root)])
    except SystemExit as stop:
        assert "\n" not in str(stop.code)
        return str(stop.code)
    return None


def web_source(tmp_path, server, sha=None, name="big.bin", extract=None) -> Path:
    body = {
        "page": "https://example.org/big",
        "folder": "big",
        "web": [{"url": f"{server.url}/{name}", "sha256": sha}],
    }
    return write_config(
        tmp_path / "sources.yaml", {"big": body | ({"extract": [extract]} if extract else {})}
    )


def test_a_body_without_a_length_cut_short_is_not_taken_nor_offered_for_pinning(tmp_path, capsys):
    """The issue's case: no Content-Length, the connection closed halfway, no sha256 declared. Before, the half
    file was taken, marked done and its digest printed as the one to declare."""
    with FileServer({"/big.bin": BIG}, modes={"/big.bin": ["cut"]}) as server:
        config = web_source(tmp_path, server)
        message = cumo_download(config, tmp_path / "data", "big")
        folder = tmp_path / "data" / "big"
        assert message.startswith(
            f"cumo download: {server.url}/big.bin: the server sent {len(BIG) // 2} bytes"
        )
        assert "no length" in message and "declares no sha256 for big.bin" in message
        assert not (folder / "big.bin").exists() and not (folder / ".big.done").exists()
        assert (folder / "big.bin.part").stat().st_size == len(BIG) // 2
        assert "sha256 " not in capsys.readouterr().out  # no digest offered for pinning
        # Run again: the resume is answered with a Content-Range, which gives the size: now it is known whole.
        assert cumo_download(config, tmp_path / "data", "big") is None
    assert server.requested("GET", "/big.bin")[1]["Range"] == f"bytes={len(BIG) // 2}-"
    assert (folder / "big.bin").read_bytes() == BIG
    assert f"sha256 {sha256(BIG)}" in capsys.readouterr().out


def test_a_body_without_a_length_is_taken_with_a_declared_digest(tmp_path):
    with FileServer({"/big.bin": BIG}, modes={"/big.bin": ["no-length"]}) as server:
        assert cumo_download(web_source(tmp_path, server, sha256(BIG)), tmp_path / "data", "big") is None
    assert (tmp_path / "data" / "big" / "big.bin").read_bytes() == BIG


def test_a_chunked_body_ends_where_it_says_and_is_taken(tmp_path):
    with FileServer({"/big.bin": BIG}, modes={"/big.bin": ["chunked"]}) as server:
        assert cumo_download(web_source(tmp_path, server), tmp_path / "data", "big") is None
    assert (tmp_path / "data" / "big" / "big.bin").read_bytes() == BIG


@pytest.mark.parametrize("answer", ["206-whole", "206-no-range"])
def test_a_resume_answered_with_other_bytes_restarts_the_file(tmp_path, answer, monkeypatch):
    """A resume answered 206 with the whole file: appended, it made a 1,548,576-byte file of 1,048,576."""
    monkeypatch.setattr(dl.time, "sleep", lambda seconds: None)
    with FileServer({"/big.bin": BIG}, drop={"/big.bin"}, modes={"/big.bin": ["normal", answer]}) as server:
        assert cumo_download(web_source(tmp_path, server), tmp_path / "data", "big") is None
    ranges = [headers.get("Range") for headers in server.requested("GET", "/big.bin")]
    assert ranges == [None, f"bytes={len(BIG) // 2}-", None]  # dropped, resumed wrongly, fetched anew
    assert (tmp_path / "data" / "big" / "big.bin").read_bytes() == BIG


def test_a_part_already_whole_is_taken_once_the_server_confirms_its_size(tmp_path):
    folder = tmp_path / "data" / "big"
    folder.mkdir(parents=True)
    (folder / "big.bin.part").write_bytes(BIG)  # killed between the last byte and the rename
    with FileServer({"/big.bin": BIG}) as server:
        assert cumo_download(web_source(tmp_path, server), tmp_path / "data", "big") is None
    assert server.requested("GET", "/big.bin")[0]["Range"] == f"bytes={len(BIG)}-"  # answered 416 */size
    assert (folder / "big.bin").read_bytes() == BIG


def test_a_cut_archive_does_not_keep_its_name(tmp_path, capsys):
    """A zip cut short upstream (its length as served): extraction fails, the archive is deleted, the next run
    fetches it anew; before, every rerun failed on it until it was deleted by hand."""
    whole = zip_bytes({"train/1.jpg": b"one" * 1000, "train/2.jpg": b"two" * 1000})
    files = {"/shapes.zip": whole[: len(whole) * 2 // 3]}
    extract = {"archive": "shapes.zip", "into": ".", "expect": ["train"]}
    with FileServer(files) as server:
        config = web_source(tmp_path, server, name="shapes.zip", extract=extract)
        message = cumo_download(config, tmp_path / "data", "big")
        folder = tmp_path / "data" / "big"
        assert "shapes.zip is neither a zip nor a tar archive" in message
        assert "it was deleted: run again to fetch it anew" in message
        assert not (folder / "shapes.zip").exists() and not (folder / ".big.done").exists()
        assert "sha256 " not in capsys.readouterr().out  # nothing offered to pin
        files["/shapes.zip"] = whole  # upstream fixed
        assert cumo_download(config, tmp_path / "data", "big") is None
    assert (folder / "train" / "2.jpg").read_bytes() == b"two" * 1000

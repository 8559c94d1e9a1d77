"""The evaluation sources of cumo/data/sources.yaml (eval_*): one per benchmark, filling the folder its
declaration reads; together they produce every file of LLaVA-1.5's evaluation layout that the synthetic
benchmarks write (cumo/data/synthetic_benchmarks/, written independently from the upstream scripts); and
the shipped declarations, with their addresses pointed at servers on 127.0.0.1 (tests/servers.py) serving
files shaped as upstream publishes them, rebuild that layout byte for byte: a Hub dataset (MMMU), release
archives (MM-Vet, GQA, with LLaVA's eval.zip before them) and a registration-only benchmark (MME)."""

import fnmatch
import hashlib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from cumo.data.download import (
    SOURCES,
    ChecksumError,
    ManualStepNeeded,
    Source,
    download,
    download_source,
    extract_archive,
    load_sources,
    marker_path,
    plan,
)
from cumo.data.synthetic_benchmarks import BENCHMARKS
from cumo.eval.benchmarks import NAMES
from tests.servers import FileServer, HubServer, local_only
from tests.test_download import hub_env, write_tar, zip_bytes  # noqa: F401 (hub_env is a fixture)

REPO_ROOT = Path(__file__).resolve().parents[1]

# LLaVA's question files, as its scripts/v1_5/eval/*.sh name them under ./playground/data/eval: the part of
# the layout that only eval.zip provides.
LLAVA_QUESTION_FILES = (
    "scienceqa/llava_test_CQM-A.json",
    "textvqa/llava_textvqa_val_v051_ocr.jsonl",
    "gqa/llava_gqa_testdev_balanced.jsonl",
    "pope/llava_pope_test.jsonl",
    "MME/llava_mme.jsonl",
    "seed_bench/llava-seed-bench.jsonl",
    "mm-vet/llava-mm-vet.jsonl",
    "vqav2/llava_vqav2_mscoco_test-dev2015.jsonl",
    "vqav2/llava_vqav2_mscoco_test2015.jsonl",
)
POPE_LABEL_FILES = tuple(f"coco/coco_pope_{setting}.json" for setting in ("adversarial", "popular", "random"))
# The tiny world's VQAv2 val files (a local accuracy) have no upstream counterpart to download.
NOT_DOWNLOADED = {
    "vqav2/llava_vqav2_mscoco_val2014.jsonl",
    "vqav2/v2_OpenEnded_mscoco_val2014_questions.json",
    "vqav2/v2_mscoco_val2014_annotations.json",
    "vqav2/val2014",
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    local_only(monkeypatch)


@pytest.fixture(scope="module")
def sources() -> dict[str, Source]:
    return load_sources(SOURCES)


def files_under(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path, leaving out what the machinery adds beside the data:
    markers, locks and huggingface_hub's metadata (hidden names), and the downloaded archives."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
        and path.suffix != ".zip"
    }


def llava_eval_zip(eval_root: Path) -> bytes:
    """eval.zip as LLaVA's docs describe it ("extract to ./playground/data/eval"): one folder per benchmark at
    the top, as setup scripts that unzip it into eval/ find it (the real archive was not opened here)."""
    return zip_bytes({name: (eval_root / name).read_bytes() for name in LLAVA_QUESTION_FILES})


def shipped_config(
    tmp_path: Path,
    names: list[str],
    server: FileServer,
    content: dict[str, bytes],
    declare_served: bool = True,
) -> Path:
    """The shipped declarations of `names` and what they require, written to tmp_path with every web address
    moved to `server` (same path and query), which answers it with `content[<the file it declares>]`.
    A declared sha256 is the real file's; with `declare_served` the copy declares the served stand-in's instead,
    so that the check still runs and passes."""
    raw = yaml.safe_load(SOURCES.read_text())
    order = plan(names, load_sources(SOURCES))
    for source in order:
        for item, declared in zip(raw[source.name].get("web", []), source.web, strict=True):
            url = urlsplit(item["url"])
            server.files[url.path] = content[declared.file]
            item["url"] = f"{server.url}{url.path}" + (f"?{url.query}" if url.query else "")
            if declare_served and item["sha256"] is not None:
                item["sha256"] = hashlib.sha256(content[declared.file]).hexdigest()
    config = tmp_path / "sources.yaml"
    config.write_text(yaml.safe_dump({source.name: raw[source.name] for source in order}))
    return config


# -- The declarations ----------------------------------------------------------------------------------------


def test_every_benchmark_has_a_source_filling_its_folder(sources):
    assert set(NAMES) == set(BENCHMARKS)
    for name in NAMES:
        assert sources[f"eval_{name}"].folder == f"eval/{BENCHMARKS[name][0]}", name
    # Nothing else is declared under eval/ but LLaVA's question files, which the benchmarks require.
    evaluation = {name for name in sources if name.startswith("eval_")}
    assert evaluation == {f"eval_{name}" for name in NAMES} | {"eval_llava"}
    needs_llava = {
        name for name in NAMES if any(f.split("/")[0] == BENCHMARKS[name][0] for f in LLAVA_QUESTION_FILES)
    }
    assert {name for name in NAMES if "eval_llava" in sources[f"eval_{name}"].requires} == needs_llava


def test_the_issues_upstream_sources_are_the_ones_declared(sources):
    repos = {name: [repo.repo for repo in sources[f"eval_{name}"].hub] for name in NAMES}
    assert repos["mmmu"] == ["MMMU/MMMU"] and repos["mathvista"] == ["AI4Math/MathVista"]
    assert repos["seed"] == ["AILab-CVC/SEED-Bench"]
    assert repos["llava_wild"] == ["liuhaotian/llava-bench-in-the-wild"]
    hosts = {urlsplit(item.url).netloc for name in NAMES for item in sources[f"eval_{name}"].web}
    assert {"images.cocodataset.org", "dl.fbaipublicfiles.com", "downloads.cs.stanford.edu"} <= hosts
    assert {"download.openmmlab.com", "github.com", "raw.githubusercontent.com"} <= hosts
    # MME is behind a registration: placed by hand, nothing fetched.
    mme = sources["eval_mme"]
    assert mme.manual and not mme.web and not mme.hub
    # POPE's files at the commit LLaVA's docs link.
    assert all(
        "e3e39262c85a6a83f26cf5094022a782cb0df58d" in item.url for item in sources["eval_pope"].web[:3]
    )
    # ScienceQA's files at a commit, not at `main`.
    github = [item.url for item in sources["eval_sqa"].web if "githubusercontent" in item.url]
    assert len(github) == 2 and all("/2cbf8318e07b9ece895bb2ae605e71e38d623264/" in url for url in github)


def produced_by(source: Source, path: str) -> bool:
    """Whether `source` puts the data-root-relative `path` in place: a web or hand-placed file, a file its
    Hub patterns select, or something at or under a path its extraction must produce."""
    folder = PurePosixPath(source.folder)
    if not PurePosixPath(path).is_relative_to(folder):
        return False
    local = PurePosixPath(path).relative_to(folder).as_posix()
    named = {item.file for item in (*source.web, *source.manual)}
    patterns = [f"{repo.into}/{pattern}".removeprefix("./") for repo in source.hub for pattern in repo.allow]
    expected = [expect for step in source.extract for expect in step.expect]
    return (
        local in named
        or any(fnmatch.fnmatch(local, pattern) for pattern in patterns)
        or any(local == expect or local.startswith(f"{expect}/") for expect in expected)
    )


def test_the_sources_produce_every_file_of_the_synthetic_layout(sources, eval_root):
    """The synthetic benchmarks are the layout the evaluation reads; every file of it must come from the
    benchmark's own source or from LLaVA's eval.zip, and only the VQAv2 val files may come from neither."""
    missing = set()
    for path in files_under(eval_root):
        folder = path.split("/")[0]
        candidates = [sources[f"eval_{name}"] for name in NAMES if BENCHMARKS[name][0] == folder]
        if not any(produced_by(source, f"eval/{path}") for source in [*candidates, sources["eval_llava"]]):
            missing.add(next((x for x in NOT_DOWNLOADED if path == x or path.startswith(f"{x}/")), path))
    assert missing == NOT_DOWNLOADED


def test_extract_only_takes_the_members_that_match(tmp_path):
    members = {
        "testdev_balanced_questions.json": b"dev",
        "train_all_questions/train_all_questions_0.json": b"x",
    }
    (tmp_path / "q.zip").write_bytes(zip_bytes(members))
    write_tar(tmp_path / "q.tar.gz", list(members.items()))
    for archive in ("q.zip", "q.tar.gz"):
        into = tmp_path / archive.split(".", 1)[1]
        assert extract_archive(tmp_path / archive, into, only=("testdev_*.json",)) == 1
        assert files_under(into) == {"testdev_balanced_questions.json": b"dev"}


# -- End to end, against servers on 127.0.0.1 ----------------------------------------------------------------


@pytest.mark.usefixtures("hub_env")
def test_mmmu_from_the_hub_lands_where_cumo_loads_it(sources, eval_root, tmp_path, monkeypatch):
    synthetic = files_under(eval_root / "MMMU")
    answers = synthetic.pop("eval/answer_dict_val.json")
    repo = dict(synthetic)
    for path, content in synthetic.items():
        if path.endswith(".parquet"):  # the repo also holds the splits CuMo does not read
            repo[path.replace("validation-", "dev-")] = repo[path.replace("validation-", "test-")] = content
    with FileServer({}) as server, HubServer({"MMMU/MMMU": repo}) as hub:
        config = shipped_config(tmp_path, ["eval_mmmu"], server, {"eval/answer_dict_val.json": answers})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.warns(UserWarning, match="'main' is not a commit"):
            (record,) = download(["eval_mmmu"], tmp_path / "data", config)
    assert files_under(tmp_path / "data/eval/MMMU") == synthetic | {"eval/answer_dict_val.json": answers}
    assert record["hub"][0]["commit"] == HubServer.commit("MMMU/MMMU")
    assert marker_path(sources["eval_mmmu"], tmp_path / "data").is_file()


def test_mmvet_release_zip_lands_where_cumos_script_reads_it(sources, eval_root, tmp_path):
    # yuweihao/MM-Vet's release v1: mm-vet.zip holds mm-vet/images/ and mm-vet/mm-vet.json.
    mmvet = files_under(eval_root / "mm-vet")
    release = zip_bytes({path: content for path, content in mmvet.items() if path.startswith("mm-vet/")})
    with FileServer({}) as server:
        content = {"eval/eval.zip": llava_eval_zip(eval_root), "mm-vet.zip": release}
        config = shipped_config(tmp_path, ["eval_mmvet"], server, content)
        records = download(["eval_mmvet"], tmp_path / "data", config)
        asked = len(server.requests)
        again = download(["eval_mmvet"], tmp_path / "data", config)
    assert [record["source"] for record in records] == ["eval_llava", "eval_mmvet"] and again == records
    assert len(server.requests) == asked == 2  # eval.zip and mm-vet.zip, once each
    assert files_under(tmp_path / "data/eval/mm-vet") == mmvet
    for name in LLAVA_QUESTION_FILES:  # eval.zip filled the other benchmarks' folders on the way
        assert (tmp_path / "data/eval" / name).read_bytes() == (eval_root / name).read_bytes()


def test_gqa_takes_only_the_test_dev_questions_out_of_the_question_archive(eval_root, tmp_path):
    gqa = files_under(eval_root / "gqa")
    # questions1.2.zip and images.zip of https://cs.stanford.edu/people/dorarad/gqa/download.html, top level
    questions = zip_bytes(
        {
            "testdev_balanced_questions.json": gqa["data/testdev_balanced_questions.json"],
            "train_balanced_questions.json": b"{}",
            "train_all_questions/train_all_questions_0.json": b"{}",
        }
    )
    images = zip_bytes(
        {path.removeprefix("data/"): content for path, content in gqa.items() if "/images/" in path}
    )
    with FileServer({}) as server:
        content = {
            "eval/eval.zip": llava_eval_zip(eval_root),
            "questions1.2.zip": questions,
            "images.zip": images,
        }
        config = shipped_config(tmp_path, ["eval_gqa"], server, content)
        _, record = download(["eval_gqa"], tmp_path / "data", config)
    assert files_under(tmp_path / "data/eval/gqa") == gqa
    assert record["extracted"] == {"questions1.2.zip": 1, "images.zip": len(gqa) - 2}


def test_pinned_digests_refuse_other_bytes(eval_root, tmp_path):
    """POPE's label files at another commit than e3e39262 (here: the tiny world's) are not taken."""
    with FileServer({}) as server:
        content = {name: (eval_root / "pope" / name).read_bytes() for name in POPE_LABEL_FILES}
        content |= {"eval/eval.zip": llava_eval_zip(eval_root), "val2014.zip": zip_bytes({})}
        config = shipped_config(tmp_path, ["eval_pope"], server, content, declare_served=False)
        with pytest.raises(
            ChecksumError, match=r"coco_pope_adversarial\.json: downloaded from .* but cumo/data/sources"
        ):
            download(["eval_pope"], tmp_path / "data", config)
    assert not (tmp_path / "data/eval/pope/coco/coco_pope_adversarial.json").exists()


def test_mme_stops_with_the_registration_steps_then_takes_the_archive(sources, eval_root, tmp_path):
    data = tmp_path / "data"
    with pytest.raises(ManualStepNeeded) as error:
        download_source(sources["eval_mme"], data, tmp_path / "sources.lock.yaml")
    message = str(error.value)
    archive = data / "eval/MME/MME_Benchmark_release_version.zip"
    assert str(archive) in message and "Nothing of eval_mme was downloaded" in message
    assert "https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models/tree/Evaluation" in message
    assert not marker_path(sources["eval_mme"], data).exists()
    # Placed by hand as the authors send it: the release folder inside the archive.
    mme = files_under(eval_root / "MME")
    archive.write_bytes(zip_bytes({path: content for path, content in mme.items() if "/" in path}))
    with FileServer({}) as server:
        config = shipped_config(tmp_path, ["eval_mme"], server, {"eval/eval.zip": llava_eval_zip(eval_root)})
        _, record = download(["eval_mme"], data, config)
    assert files_under(data / "eval/MME") == mme
    assert list(record["sha256"]) == ["MME_Benchmark_release_version.zip"]


def test_a_question_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    from cumo.eval.benchmarks.common import read_jsonl

    path = tmp_path / "questions.jsonl"
    path.write_bytes(b'{"question_id": 1, "text": "ok"}\n{"question_id": 2, "text": "\xe6\x97"}\n')
    with pytest.raises(ValueError, match=rf"{path}: line 2 holds bytes that are not UTF-8 .* fetch it again"):
        read_jsonl(path, "questions")

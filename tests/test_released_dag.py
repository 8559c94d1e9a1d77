"""A released checkpoint through the whole DAG, as config/released.yaml takes the two CuMo checkpoints (issue
15): a tiny model written in the released layout (CuMo's key names and config fields, bf16, safetensors
shards with their index, the tokenizer), served as a Hub model repo by the loopback Hub-like server, declared
as a source, fetched by the download rule, converted by convert_released, evaluated on two benchmarks of the
shapes world and set in the table next to the paper's row of its name."""

import json
import os
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cumo.data.synthetic import build_tokenizer
from cumo.model.convert import save_released
from cumo.model.weights import SAFETENSORS_INDEX
from cumo.report.tables import PAPER_RESULTS
from tests.factories import make_model
from tests.servers import HubServer
from tests.tiny_dag import REPOSITORY, SMALL_WORLD, snakemake, started, tiny_repository  # noqa: F401 (started: a fixture)

REPO = "shi-labs/CuMo-tiny"
SOURCE = "cumo_tiny"
FOLDER = "models/CuMo-tiny"
# Named as a row of cumo/report/paper_results.yaml, as config/released.yaml names its models: the table sets the
# paper's numbers next to its own (a random tiny model: what is tested is where the numbers go).
MODEL = "cumo-mistral-7b"
BENCHMARKS = ["gqa", "pope"]


def released_repository(directory) -> tuple[dict[str, torch.Tensor], dict[str, bytes]]:
    """The tiny model's tensors, and the files of its released checkpoint (several shards) by name."""
    model = make_model("tiny", dtype=torch.bfloat16)
    save_released(model, directory, max_shard_bytes=200_000)
    build_tokenizer().save_pretrained(directory)
    return model.state_dict(), {path.name: path.read_bytes() for path in directory.iterdir()}


@pytest.mark.slow
def test_a_released_checkpoint_is_downloaded_converted_evaluated_and_reported(tmp_path, started):  # noqa: F811
    repository = tiny_repository(tmp_path / "repository")
    tensors, files = released_repository(tmp_path / "checkpoint")
    shards = sorted(name for name in files if name.endswith(".safetensors"))
    assert len(shards) >= 3 and SAFETENSORS_INDEX in files

    # The sources are cumo's package data: the run imports a copy of the package with one more declared.
    shutil.copytree(REPOSITORY / "cumo", repository / "cumo", ignore=shutil.ignore_patterns("__pycache__"))
    sources = repository / "cumo" / "data" / "sources.yaml"
    declared = {
        "page": f"https://huggingface.co/{REPO}",
        "folder": FOLDER,
        "hub": [
            {
                "repo": REPO,
                "repo_type": "model",
                "revision": "main",
                "allow": ["config.json", SAFETENSORS_INDEX, "model-*-of-*.safetensors", "tokenizer*.json"],
            }
        ],
    }
    sources.write_text(sources.read_text() + "\n" + yaml.safe_dump({SOURCE: declared}))
    # config/released.yaml's form on the shapes world: a released model, no mixtures, no training ranks.
    config = yaml.safe_load((repository / "config" / "tiny.yaml").read_text())
    for key in ("mixtures", "train"):
        del config[key]
    config |= {
        "run": "released",
        "synthetic": SMALL_WORLD,
        "models": {MODEL: {"released": SOURCE, "preset": "tiny"}},
        "benchmarks": BENCHMARKS,
        "judge": None,
    }
    (repository / "config" / "released.yaml").write_text(yaml.safe_dump(config))

    environment = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    with HubServer({REPO: files}, models={REPO}) as hub:
        environment |= {
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(tmp_path / "hf"),
            "PYTHONPATH": str(repository),
        }
        run = snakemake(
            repository, environment, "--profile", "profiles/local", "--configfile", "config/released.yaml",
        )  # fmt: skip
        started.append(run)
        log, _ = run.communicate(timeout=600)
    assert run.returncode == 0, log
    assert "rule train" not in log

    # Fetched from the Hub-like server by the download rule, every shard at the resolved commit.
    commit = HubServer.commit(REPO)
    for name in shards:
        assert hub.requested("GET", f"/{REPO}/resolve/{commit}/{name}"), name
    data = repository / "results" / "tiny" / "world" / FOLDER
    assert json.loads((data / f".{SOURCE}.done").read_text())["hub"][0]["commit"] == commit

    # Converted with its weights as released (bf16), into our layout.
    converted = repository / "results" / "released" / "models" / MODEL / "released"
    ours = {key: value for path in converted.glob("*.safetensors") for key, value in load_file(path).items()}
    assert ours.keys() == tensors.keys()
    assert all(torch.equal(ours[key], tensor) for key, tensor in tensors.items())

    # Evaluated, and in the table: its reproduced row, then the paper's reported numbers under it.
    for bench in BENCHMARKS:
        metrics = json.loads((repository / f"results/released/eval/{MODEL}/{bench}/metrics.json").read_text())
        assert metrics["model"]["path"].endswith(f"models/{MODEL}/released") and metrics["n"] > 0
    table = (repository / "results" / "released" / "tables" / "main.md").read_text().splitlines()
    (row,) = [index for index, line in enumerate(table) if line.startswith(f"| {MODEL} | reproduced |")]
    paper = yaml.safe_load(PAPER_RESULTS.read_text())["models"][MODEL]
    assert table[row + 1] == f"|  | reported | {paper['gqa']:.1f} | {paper['pope']:.1f} |"
    assert table[row + 2].startswith("|  | delta | ")

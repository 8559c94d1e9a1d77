"""`cumo eval <bench>` end to end on the tiny model: shard processes, merged predictions, the benchmark's own
score, metrics.json with what made it; a rerun redoes nothing; bad set-ups stop before generating."""

import json
from pathlib import Path

import pytest

from cumo.cli import main
from cumo.eval.benchmarks import get
from cumo.eval.evaluate import EvalConfig, evaluate
from cumo.provenance import sha256_tree


def eval_args(tiny_model_dir, eval_root, out, *extra):
    # An untrained model rarely says </s>: answers are capped so that it does not talk for GQA's 128 tokens.
    return [
        "eval",
        "gqa",
        "--model",
        str(tiny_model_dir),
        "--data-root",
        str(eval_root.parent),
        "--out",
        str(out),
        "--max-new-tokens",
        "6",
        *extra,
    ]


def test_two_shard_processes_then_merge_and_score(tiny_model_dir, eval_root, tmp_path):
    out = tmp_path / "gqa"
    main(eval_args(tiny_model_dir, eval_root, out, "--shards", "2", "--batch-size", "4"))
    gqa = get("gqa")
    asked = gqa.questions(eval_root / gqa.folder)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["question_id"] for p in predictions] == [q.question_id for q in asked]
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "0-of-2.jsonl",
        "1-of-2.jsonl",
        "made_by.json",
    ]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["benchmark"] == "gqa" and metrics["split"] == "testdev_balanced"
    # The score is GQA's own, recomputed here from the written predictions.
    assert metrics["headline"]["value"] == gqa.score(eval_root / gqa.folder, predictions).headline
    assert metrics["n"] == len(asked)
    assert metrics["model"] == {"path": str(tiny_model_dir), "digest": sha256_tree(tiny_model_dir)}
    assert metrics["config"]["shards"] == 2 and metrics["config"]["batch_size"] == 4
    assert metrics["prompt_variant"] == "llava-1.5" and metrics["judge"] is None
    assert metrics["git_commit"] and metrics["packages"]["torch"]
    assert metrics["answers"] == {"started_over": {}, "moved_answers": 0, "from_files": [], "resumed": 0}
    made_by = json.loads((out / "shards" / "made_by.json").read_text())
    assert made_by == {
        "benchmark": "gqa",
        "split": "testdev_balanced",
        "model_digest": sha256_tree(tiny_model_dir),
        "dtype": "float32",
        "max_new_tokens": 6,
        "blank_images": False,
        "template": "mistral_instruct_system",
        "prompt_format": 1,
    }

    # A rerun finds every answer in place: the shard files are untouched and the numbers are the same.
    before = {p.name: p.read_text() for p in (out / "shards").iterdir()}
    main(eval_args(tiny_model_dir, eval_root, out, "--shards", "2", "--batch-size", "4"))
    assert {p.name: p.read_text() for p in (out / "shards").iterdir()} == before
    again = json.loads((out / "metrics.json").read_text())
    assert again["headline"] == metrics["headline"] and again["answers"]["resumed"] == len(asked)


def test_blank_images_are_a_prompt_variant_of_their_own(tiny_model_dir, eval_root, tmp_path):
    config = EvalConfig(
        "gqa", str(tiny_model_dir), str(eval_root.parent), max_new_tokens=6, batch_size=8, blank_images=True
    )
    metrics = evaluate(config, tmp_path / "blank")
    assert metrics["prompt_variant"] == "llava-1.5+blank-images" and metrics["config"]["blank_images"]


def test_a_missing_benchmark_folder_names_the_download(tiny_model_dir, tmp_path):
    config = EvalConfig("gqa", str(tiny_model_dir), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cumo download eval_gqa"):
        evaluate(config, tmp_path / "out")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"benchmark": "vizwiz"}, "unknown benchmark 'vizwiz'"),
        ({"dtype": "float8"}, "dtype must be one of"),
        ({"batch_size": 0}, "at least 1"),
    ],
)
def test_bad_settings_stop_at_construction(tiny_model_dir, overrides, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(**({"benchmark": "gqa", "model": str(tiny_model_dir), "data_root": "data"} | overrides))


def test_a_directory_that_is_no_model_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        EvalConfig("gqa", str(tmp_path), "data")


def test_vqav2_is_scored_on_val_here_and_written_for_the_server_on_test_dev(
    tiny_model_dir, eval_root, tmp_path
):
    test_dev = EvalConfig("vqav2", str(tiny_model_dir), str(eval_root.parent), max_new_tokens=4, batch_size=8)
    metrics = evaluate(test_dev, tmp_path / "test-dev")
    assert metrics["split"] == "test-dev" and metrics["headline"]["value"] is None  # the EvalAI server scores
    assert [Path(path).name for path in metrics["submission"]] == [
        "vqa_OpenEnded_mscoco_test-dev2015_cumo_results.json"
    ]
    val = EvalConfig(
        "vqav2", str(tiny_model_dir), str(eval_root.parent), split="val", max_new_tokens=4, batch_size=8
    )
    metrics = evaluate(val, tmp_path / "val")
    assert metrics["split"] == "val" and 0 <= metrics["headline"]["value"] <= 100
    assert metrics["headline"]["metric"].startswith("val accuracy") and metrics["submission"] == []
    with pytest.raises(ValueError, match="evaluated here on: test-dev, val; not on 'test-std'"):
        EvalConfig("vqav2", str(tiny_model_dir), "data", split="test-std")


def test_a_judged_benchmark_without_a_judge_names_the_papers_judge(tiny_model_dir, eval_root, tmp_path):
    config = EvalConfig("mathvista", str(tiny_model_dir), str(eval_root.parent))
    with pytest.raises(ValueError, match=r"give --judge-model \(the paper's: gpt-3.5-turbo\)"):
        evaluate(config, tmp_path / "mathvista")
    assert not (tmp_path / "mathvista" / "shards").exists()  # stopped before generating

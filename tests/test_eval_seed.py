"""SEED-Bench (image questions): the reader on LLaVA's question file, convert_seed_for_submission.py's exact
letter match on hand-worked cases, and end-to-end scores worked out from SEED-Bench.json."""

import json
import shutil
from collections import Counter

import pytest

from cumo.eval.benchmarks import get
from cumo.eval.metrics.seed import accuracy_report, is_right
from tests.predictions import answered

BENCHMARK = get("seed")
SUFFIX = "\nAnswer with the option's letter from the given choices directly."


@pytest.fixture(scope="module")
def folder(eval_root):
    return eval_root / "seed_bench"


@pytest.fixture(scope="module")
def asked(folder):
    return BENCHMARK.questions(folder)


@pytest.fixture(scope="module")
def annotations(folder):
    data = json.loads((folder / "SEED-Bench.json").read_text())
    return {q["question_id"]: q for q in data["questions"]}, {
        i: name for name, i in data["question_type"].items()
    }


def test_reader(folder, asked):
    rows = [json.loads(line) for line in (folder / "llava-seed-bench.jsonl").read_text().splitlines()]
    assert len(asked) == len(rows) == 40
    assert len({q.question_id for q in asked}) == len(asked)
    for question, row in zip(asked, rows, strict=True):
        assert question.question_id == row["question_id"]
        assert question.text == row["text"] and question.text.endswith(SUFFIX)
        assert "\nA. " in question.text and "\nD. " in question.text
    assert asked[0].load_image().size == (64, 64)
    assert BENCHMARK.max_new_tokens == 128 and BENCHMARK.split == "image"


def test_video_questions_are_left_out(folder, tmp_path, asked, annotations):
    """LLaVA's file holds SEED's video questions too (asked on a frame); SEED-IMG leaves them out."""
    copy = tmp_path / "seed_bench"
    shutil.copytree(folder, copy)
    data = json.loads((copy / "SEED-Bench.json").read_text())
    video = {**data["questions"][0], "question_id": "video-1", "data_type": "video", "question_type_id": 10}
    data["questions"].append(video)
    (copy / "SEED-Bench.json").write_text(json.dumps(data))
    row = {
        "image": "SEED-Bench-video-image/v.png",
        "text": "?",
        "category": "Action Recognition",
        "question_id": "video-1",
    }
    with (copy / "llava-seed-bench.jsonl").open("a") as file:
        file.write(json.dumps(row) + "\n")
    assert [q.question_id for q in BENCHMARK.questions(copy)] == [q.question_id for q in asked]
    # and the score is over the image questions only: the video one needs no answer
    by_id, _ = annotations
    result = BENCHMARK.score(copy, answered(asked, [by_id[q.question_id]["answer"] for q in asked]))
    assert result.headline == 100.0 and result.n == len(asked)


@pytest.mark.parametrize(
    ("reply", "right"),
    [
        ("B", True),
        ("A", False),
        ("b", False),
        ("B.", False),
        (" B", False),
        ("(B)", False),
        ("B. red", False),
    ],
)
def test_only_the_bare_letter_is_right(reply, right):
    # convert_seed_for_submission.py compares row['text'] == answer; generation has stripped the reply already
    assert is_right(reply, "B") is right


def test_accuracy_report_pools_questions():
    report = accuracy_report([("Scene", True), ("Scene", False), ("Scene", False), ("Count", True)])
    assert report["overall"] == pytest.approx(50.0)  # 2 of 4, not the mean of 33.3 and 100
    assert report["dimension"] == {"Scene": pytest.approx(100 / 3), "Count": 100.0}
    assert report["dimension_n"] == {"Scene": 3, "Count": 1}


def test_oracle_scores_100(folder, asked, annotations):
    by_id, names = annotations
    result = BENCHMARK.score(folder, answered(asked, [by_id[q.question_id]["answer"] for q in asked]))
    assert result.headline == 100.0 and result.n == 40
    json.dumps(result.metrics)  # metrics.json takes them as they are
    assert set(result.metrics["dimension"]) == {names[q["question_type_id"]] for q in by_id.values()}


def test_wrong_answers_score_as_worked_out(folder, asked, annotations):
    """Every counting question answered with the next letter, the first text question as "X." (a right
    letter with a period); the rest right."""
    by_id, names = annotations
    counting = [q for q in asked if names[by_id[q.question_id]["question_type_id"]] == "Instances Counting"]
    text_questions = [
        q for q in asked if names[by_id[q.question_id]["question_type_id"]] == "Text Understanding"
    ]
    replies = []
    for question in asked:
        answer = by_id[question.question_id]["answer"]
        if question in counting:
            answer = "ABCD"[("ABCD".index(answer) + 1) % 4]
        elif question is text_questions[0]:
            answer += "."
        replies.append(answer)
    result = BENCHMARK.score(folder, answered(asked, replies))
    per_dimension = Counter(names[by_id[q.question_id]["question_type_id"]] for q in asked)
    assert result.headline == pytest.approx(100 * (40 - len(counting) - 1) / 40)
    assert result.metrics["dimension"]["Instances Counting"] == 0.0
    assert result.metrics["dimension"]["Text Understanding"] == pytest.approx(
        100 * (per_dimension["Text Understanding"] - 1) / per_dimension["Text Understanding"]
    )
    assert result.metrics["dimension"]["Instance Identity"] == 100.0


def test_an_unanswered_question_is_an_error(folder, asked):
    with pytest.raises(ValueError, match="1 question"):
        BENCHMARK.score(folder, answered(asked[1:], ["A"] * (len(asked) - 1)))

"""VQAv2: the readers (test-dev, val), the official evaluator's accuracy (vqaEval.py as it stands since 2021)
on hand-worked cases and where it parts from the 2016 version, the EvalAI submission file as
convert_vqav2_for_submission.py writes it, and local val scores worked out from the annotations."""

import json
import math

import pytest

from cumo.eval.benchmarks import get
from cumo.eval.benchmarks.vqav2 import score_val, val_questions
from cumo.eval.metrics.vqa import vqa_accuracy
from tests.predictions import answered

SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.fixture(scope="module")
def folder(eval_root):
    return eval_root / "vqav2"


@pytest.fixture(scope="module")
def asked(folder):
    return get("vqav2").questions(folder)


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_readers(folder, asked):
    for questions, file, images in (
        (asked, "llava_vqav2_mscoco_test-dev2015.jsonl", "test2015"),
        (val_questions(folder), "llava_vqav2_mscoco_val2014.jsonl", "val2014"),
    ):
        rows = jsonl(folder / file)
        assert len(questions) == len(rows) > 0
        assert len({question.question_id for question in questions}) == len(questions)
        for question, row in zip(questions, rows, strict=True):
            assert question.question_id == row["question_id"] and question.text == row["text"]
            assert question.text.endswith(SUFFIX)
            assert question.image == folder / images / row["image"]
        assert questions[0].load_image().size == (64, 64)


def official_accuracy(prediction, answers, version):
    """vqaEval.py's `evaluate` for one question, written out as upstream's loop runs it, at a013f00 (2021,
    GT-Vision-Lab/VQA "Fixed processing answers bug") or at 458a8b2 (2016, the version before): each
    annotator's accuracy is min(1, matches among the other annotators / 3), and the question's the mean."""
    from cumo.eval.metrics.vqa import process_digit_article, process_punctuation

    def one_line(text):
        return text.replace("\n", " ").replace("\t", " ").strip()

    gts = [{"answer": answer, "answer_id": i + 1} for i, answer in enumerate(answers)]
    res = one_line(prediction)
    if version == 2021:
        for gt in gts:
            gt["answer"] = one_line(gt["answer"])
        if len({gt["answer"] for gt in gts}) > 1:
            for gt in gts:
                gt["answer"] = process_digit_article(process_punctuation(gt["answer"]))
            res = process_digit_article(process_punctuation(res))
    else:
        res = process_digit_article(process_punctuation(res))
        if len({gt["answer"] for gt in gts}) > 1:
            for gt in gts:
                gt["answer"] = process_punctuation(gt["answer"])
    accuracies = []
    for gt in gts:
        others = [item for item in gts if item != gt]
        accuracies.append(min(1, len([item for item in others if item["answer"] == res]) / 3))
    return sum(accuracies) / len(accuracies)


# Cases where the 2021 evaluator and the 2016 one part: (prediction, human answers, 2021's, 2016's).
CHANGED_IN_2021 = [
    ("dark-red", ["dark-red"] * 10, 1.0, 0.0),  # agreeing humans: nothing is processed, on either side now
    ("two", ["2"] * 10, 0.0, 1.0),  # ... so the reply's number word stays a word
    ("Yes.", ["yes"] * 10, 0.0, 1.0),
    ("dog", ["the dog"] * 5 + ["a dog"] * 5, 1.0, 0.0),  # disagreeing humans lose their articles now
    ("2", ["two"] * 4 + ["3"] * 6, 1.0, 0.0),  # ... their number words
    ("red", ["Red"] * 3 + ["blue"] * 7, 0.9, 0.0),  # ... and their capitals: 3 * 2/3 + 7 * 1, over 10
    ("red", [" red\n"] * 10, 1.0, 0.0),  # human answers are stripped first now
]


@pytest.mark.parametrize(("prediction", "answers", "now", "in_2016"), CHANGED_IN_2021)
def test_vqa_accuracy_is_the_2021_evaluators(prediction, answers, now, in_2016):
    assert official_accuracy(prediction, answers, 2016) == pytest.approx(in_2016)
    assert official_accuracy(prediction, answers, 2021) == pytest.approx(now)
    assert vqa_accuracy(prediction, answers) == pytest.approx(now)


def test_vqa_accuracy_by_hand():
    assert vqa_accuracy("2", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)  # leave-one-out: 2 * 1/3 + 8 * 2/3
    # Disagreeing humans: "dark-red" -> "dark red" on both sides.
    assert vqa_accuracy("dark-red", ["dark-red"] * 9 + ["red"]) == 1.0
    assert vqa_accuracy("red", ["Red"] * 10) == 0.0  # agreeing humans are not lower-cased


def test_score_is_left_to_the_server(folder, asked):
    result = get("vqav2").score(folder, answered(asked, ["yes"] * len(asked)))
    assert math.isnan(result.headline)
    assert "EvalAI" in result.metrics["scored_by"]
    assert result.n == len(asked)


def test_submission(folder, asked, tmp_path):
    replies = ["Two.", "The Red", "yes"] * (len(asked) // 3) + ["no"] * (len(asked) % 3)
    paths = get("vqav2").submission(folder, answered(asked, replies), tmp_path)
    assert len(paths) == 1 and paths[0].parent == tmp_path
    written = json.loads(paths[0].read_text())
    test_ids = [row["question_id"] for row in jsonl(folder / "llava_vqav2_mscoco_test2015.jsonl")]
    assert [entry["question_id"] for entry in written] == test_ids  # every test2015 question, in order
    assert len(test_ids) > len(asked)  # test-standard questions too, answered ""
    normalised = {"Two.": "2", "The Red": "red", "yes": "yes", "no": "no"}
    expected = {q.question_id: normalised[reply] for q, reply in zip(asked, replies, strict=True)}
    assert {entry["question_id"]: entry["answer"] for entry in written} == {
        qid: expected.get(qid, "") for qid in test_ids
    }


def test_val_oracle_scores_100(folder):
    questions = val_questions(folder)
    annotations = {
        entry["question_id"]: entry
        for entry in json.loads((folder / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    }
    replies = [annotations[q.question_id]["multiple_choice_answer"].capitalize() + "." for q in questions]
    result = score_val(folder, answered(questions, replies))
    assert result.headline == 100.0 and result.n == len(questions)
    # metrics.json says which evaluator scored.
    assert result.metrics["evaluator"].startswith("GT-Vision-Lab/VQA vqaEval.py a013f00")


def test_val_all_yes_scores_by_hand(folder):
    """Ten agreeing humans per question: "yes" scores 1 where they said yes and 0 elsewhere."""
    questions = val_questions(folder)
    annotations = json.loads((folder / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    yes = [entry for entry in annotations if {a["answer"] for a in entry["answers"]} == {"yes"}]
    yes_no = [entry for entry in annotations if entry["answer_type"] == "yes/no"]
    result = score_val(folder, answered(questions, ["yes"] * len(questions)))
    assert result.headline == pytest.approx(100 * len(yes) / len(questions))
    assert result.metrics["yes/no"] == pytest.approx(100 * len(yes) / len(yes_no))
    assert result.metrics["number"] == result.metrics["other"] == 0.0

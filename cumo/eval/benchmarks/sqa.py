"""ScienceQA-IMG: the test split of ScienceQA, answered with an option letter; the paper's number is the
accuracy on the problems that have an image.

Files under eval/scienceqa/ (LLaVA-1.5 docs/Evaluation.md; CuMo scripts/cumo/eval/sqa_m.sh):
llava_test_CQM-A.json (LLaVA's scripts/convert_sqa_to_llava.py: "Context: ...\\nQuestion: ...\\nOptions: ..."
with "<image>" where the problem has one), images/test/<pid>/image.png, and lupantech/ScienceQA's
problems.json and pid_splits.json, which hold the answers.

Prompt: CuMo's cumo/eval/model_vqa_science.py with --single-pred-prompt: the question file's text without its
"<image>", stripped, then "\\n" and the option-letter suffix. It allows 1024 new tokens (as LLaVA's does): the
parser also accepts a reasoned "The answer is X." at the end of a longer reply.
Scoring: LLaVA's llava/eval/eval_science_qa.py (`cumo.eval.metrics.sqa`); a problem is multimodal when its
question has an image ('<image>' in the prompt, upstream).
"""

from pathlib import Path

from cumo.eval.benchmark import Benchmark, Question, Result
from cumo.eval.benchmarks.common import OPTION_LETTER, read_json, replies
from cumo.eval.metrics.sqa import FAILED, choice_index, parse_letter

QUESTION_FILE = "llava_test_CQM-A.json"
SPLIT = "test"


def questions(folder: Path) -> list[Question]:
    entries = read_json(folder / QUESTION_FILE, "ScienceQA question file (LLaVA's convert_sqa_to_llava.py)")
    return [
        Question(
            question_id=entry["id"],
            text=entry["conversations"][0]["value"].replace("<image>", "").strip() + "\n" + OPTION_LETTER,
            image=folder / "images" / SPLIT / entry["image"] if "image" in entry else None,
        )
        for entry in entries
    ]


def score(folder: Path, predictions: list[dict], judge=None) -> Result:
    asked = questions(folder)
    problems = read_json(
        folder / "problems.json", "ScienceQA problems.json (lupantech/ScienceQA data/scienceqa)"
    )
    split = read_json(folder / "pid_splits.json", "ScienceQA pid_splits.json")[SPLIT]
    asked_ids = [question.question_id for question in asked]
    if sorted(asked_ids) != sorted(split):
        raise ValueError(
            f"{folder / QUESTION_FILE} does not hold the {len(split)} problems of pid_splits.json's {SPLIT!r} "
            f"split (it has {len(asked_ids)}; {len(set(split) - set(asked_ids))} missing, "
            f"{len(set(asked_ids) - set(split))} extra): rebuild it with LLaVA's convert_sqa_to_llava.py "
            f"--split {SPLIT}"
        )
    rights, with_image, failed = [], [], 0
    for question, reply in zip(asked, replies("sqa", asked, predictions), strict=True):
        problem = problems[question.question_id]
        letter = parse_letter(reply)
        failed += letter == FAILED
        rights.append(choice_index(letter, len(problem["choices"])) == problem["answer"])
        with_image.append(question.image is not None)
    image_rights = [right for right, has_image in zip(rights, with_image, strict=True) if has_image]
    accuracy_img = 100 * sum(image_rights) / len(image_rights)
    return Result(
        headline=accuracy_img,
        metrics={
            "accuracy_img": accuracy_img,
            "accuracy": 100 * sum(rights) / len(rights),
            "questions_img": len(image_rights),
            "questions": len(rights),
            "unparsed": failed,  # replies that gave no letter (upstream's "FAILED"), scored wrong
        },
        n=len(image_rights),
    )


BENCHMARK = Benchmark(
    name="sqa",
    title="SQA-IMG",
    split="test",
    folder="scienceqa",
    headline_metric="accuracy on test problems with an image",
    questions=questions,
    score=score,
    max_new_tokens=1024,
)

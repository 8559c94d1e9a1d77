"""POPE: object hallucination as yes/no questions ("Is there a <object> in the image?") on COCO val2014, in
three settings of how the absent objects are drawn (adversarial, popular, random); the paper's number is the
F1 score averaged over the three.

Files under eval/pope/ (LLaVA-1.5 docs/Evaluation.md; CuMo scripts/cumo/eval/pope_m.sh):
llava_pope_test.jsonl (LLaVA's question file: each question with its setting in `category`, short-answer
suffix included), val2014/ and POPE's coco/coco_pope_{adversarial,popular,random}.json (JSON lines with the
yes/no `label`s).

Prompt: the question file's text as it is (model_vqa_loader.py), 128 new tokens (its default).
Scoring: LLaVA's llava/eval/eval_pope.py (`cumo.eval.metrics.pope`), which pairs a setting's answers with its
label file by position: here the questions of a setting, in question-file order, with the label lines in
order, each pair checked to ask the same question.

Only POPE's files at commit e3e39262 pair with LLaVA's question file (3,000 + 3,000 + 2,910 questions, typos
such as "imange" on both sides). From edebdda ("Fix spelling errors") on, the repo rewords lines and holds
3,000 random questions; such files fail the pairing, and the error names the commit to fetch.
"""

from pathlib import Path

from cumo.eval.benchmark import Benchmark, Question, Result
from cumo.eval.benchmarks.common import read_jsonl, replies
from cumo.eval.metrics.pope import binary_metrics, parse_yes_no

QUESTION_FILE = "llava_pope_test.jsonl"
SETTINGS = ("adversarial", "popular", "random")
LABEL_COMMIT = "e3e39262c85a6a83f26cf5094022a782cb0df58d"  # AoiDragon/POPE, the commit LLaVA's docs link
OTHER_COMMIT = (
    f"LLaVA's {QUESTION_FILE} pairs only with AoiDragon/POPE's output/coco files at commit {LABEL_COMMIT} "
    "(3,000 adversarial, 3,000 popular, 2,910 random lines; later commits reword questions and hold 3,000 random "
    "ones): fetch those, `cumo download eval_pope`"
)


def questions(folder: Path) -> list[Question]:
    rows = read_jsonl(folder / QUESTION_FILE, "POPE question file (LLaVA-1.5's eval.zip)")
    unknown = sorted({row["category"] for row in rows} - set(SETTINGS))
    if unknown:
        raise ValueError(f"{folder / QUESTION_FILE}: unknown POPE setting(s) {unknown}; known: {SETTINGS}")
    return [
        Question(
            question_id=row["question_id"],
            text=row["text"],
            image=folder / "val2014" / row["image"],
            metadata={"category": row["category"]},
        )
        for row in rows
    ]


def score(folder: Path, predictions: list[dict], judge=None) -> Result:
    asked = questions(folder)
    said = [parse_yes_no(reply) for reply in replies("pope", asked, predictions)]
    per_setting = {}
    for setting in SETTINGS:
        label_file = folder / "coco" / f"coco_pope_{setting}.json"
        labels = read_jsonl(label_file, f"POPE labels of the {setting} setting (AoiDragon/POPE output/coco)")
        mine = [pair for pair in zip(asked, said, strict=True) if pair[0].metadata["category"] == setting]
        if len(mine) != len(labels):
            raise ValueError(
                f"{label_file} has {len(labels)} labels, {folder / QUESTION_FILE} {len(mine)} {setting} "
                f"questions. {OTHER_COMMIT}"
            )
        for (question, _), label in zip(mine, labels, strict=True):
            if not question.text.startswith(label["text"]):
                raise ValueError(
                    f"{label_file} and {folder / QUESTION_FILE} are not in the same order or wording: label "
                    f"{label['question_id']} asks {label['text']!r}, question {question.question_id} "
                    f"{question.text!r}. {OTHER_COMMIT}"
                )
        counts = binary_metrics([answer for _, answer in mine], [label["label"] for label in labels])
        per_setting[setting] = {
            name: 100 * value if isinstance(value, float) else value for name, value in counts.items()
        }
    mean_f1 = sum(metrics["f1"] for metrics in per_setting.values()) / len(SETTINGS)
    mean_accuracy = sum(metrics["accuracy"] for metrics in per_setting.values()) / len(SETTINGS)
    return Result(
        headline=mean_f1,
        metrics={"f1": mean_f1, "accuracy": mean_accuracy, **per_setting},
        n=len(asked),
    )


BENCHMARK = Benchmark(
    name="pope",
    title="POPE",
    split="test",  # llava_pope_test.jsonl: the three settings together
    folder="pope",
    headline_metric="F1 averaged over the adversarial, popular and random settings",
    questions=questions,
    score=score,
    max_new_tokens=128,
)

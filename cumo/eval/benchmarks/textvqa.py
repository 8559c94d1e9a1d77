"""TextVQA: reading text in images, the val split (v0.5.1) with Rosetta OCR tokens in the prompt; soft VQA
accuracy with EvalAI's answer normalisation.

Files under eval/textvqa/ (LLaVA-1.5 docs/Evaluation.md; CuMo scripts/cumo/eval/textvqa_m.sh):
llava_textvqa_val_v051_ocr.jsonl (LLaVA's question file: "{question}\\nReference OCR token: {tokens}\\n
{short-answer suffix}"), TextVQA_0.5.1_val.json (textvqa.org: ten human answers per question) and
train_images/ (TextVQA's val images lie in its train_val image folder).

LLaVA's question file uses the image id as `question_id`, so an image with two questions repeats it, and
LLaVA's eval_textvqa.py finds a question's answers by (image id, lower-cased question). Answers here are keyed
by question, so each question gets TextVQA's own `question_id`, found the same way; the image id stays in the
metadata. Two questions with the same text on the same image take the annotations in file order.

Prompt: the question file's text as it is (model_vqa_loader.py), 128 new tokens (its default: the answer is a
word or a phrase). Scoring: m4c's TextVQAAccuracyEvaluator (`cumo.eval.metrics.vqa.textvqa_accuracy`).
"""

from collections import defaultdict
from pathlib import Path

from cumo.eval.benchmark import Benchmark, Question, Result
from cumo.eval.benchmarks.common import read_json, read_jsonl, replies
from cumo.eval.metrics.vqa import textvqa_accuracy

QUESTION_FILE = "llava_textvqa_val_v051_ocr.jsonl"
ANNOTATION_FILE = "TextVQA_0.5.1_val.json"
OCR_LINE = "Reference OCR token: "


def question_of(prompt: str) -> str:
    """The bare question in a LLaVA TextVQA prompt, lower-cased (eval_textvqa.py's prompt_processor, for
    LLaVA-1.5's two layouts: with the OCR line, three lines; without it, two)."""
    lines = prompt.split("\n")
    if OCR_LINE in prompt and len(lines) == 3:
        return (lines[1] if prompt.startswith(OCR_LINE.strip()) else lines[0]).lower()
    if len(lines) == 2:
        return lines[0].lower()
    raise ValueError(
        f"not a LLaVA-1.5 TextVQA prompt (question, OCR tokens, suffix on their own lines): {prompt!r}"
    )


def annotated_rows(folder: Path) -> list[tuple[dict, dict]]:
    """(question-file row, its TextVQA annotation) in question-file order."""
    rows = read_jsonl(folder / QUESTION_FILE, "TextVQA question file (LLaVA-1.5's eval.zip)")
    annotations = read_json(folder / ANNOTATION_FILE, "TextVQA v0.5.1 val annotations (textvqa.org)")["data"]
    by_key = defaultdict(list)
    for annotation in annotations:
        by_key[annotation["image_id"], annotation["question"].lower()].append(annotation)
    pairs = []
    for row in rows:
        matches = by_key[row["question_id"], question_of(row["text"])]
        if not matches:
            raise ValueError(
                f"{folder / QUESTION_FILE}: no annotation in {ANNOTATION_FILE} for image {row['question_id']} "
                f"and question {question_of(row['text'])!r}; the two files must be of the same TextVQA version"
            )
        pairs.append((row, matches.pop(0)))
    return pairs


def as_question(folder: Path, row: dict, annotation: dict) -> Question:
    return Question(
        question_id=annotation["question_id"],
        text=row["text"],
        image=folder / "train_images" / row["image"],
        metadata={"image_id": row["question_id"]},
    )


def questions(folder: Path) -> list[Question]:
    return [as_question(folder, row, annotation) for row, annotation in annotated_rows(folder)]


def score(folder: Path, predictions: list[dict], judge=None) -> Result:
    pairs = annotated_rows(folder)
    asked = [as_question(folder, row, annotation) for row, annotation in pairs]
    scores = [
        textvqa_accuracy(reply, annotation["answers"])
        for (_, annotation), reply in zip(pairs, replies("textvqa", asked, predictions), strict=True)
    ]
    accuracy = 100 * sum(scores) / len(scores)
    return Result(headline=accuracy, metrics={"accuracy": accuracy, "questions": len(scores)}, n=len(scores))


BENCHMARK = Benchmark(
    name="textvqa",
    title="TextVQA",
    split="val",
    folder="textvqa",
    headline_metric="VQA accuracy (EvalAI normalisation)",
    questions=questions,
    score=score,
    max_new_tokens=128,
)

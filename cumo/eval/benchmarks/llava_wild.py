"""LLaVA-Bench (in-the-wild): 60 open questions on 24 images in three categories (conv, detail, complex);
the judge scores the model's answer and GPT-4's reference answer 1-10 side by side, and the score is the
model's mean over the reference's mean x100, overall and per category.

Files under eval/llava-bench-in-the-wild/ (Hub liuhaotian/llava-bench-in-the-wild; CuMo
scripts/cumo/eval/llavabench.sh): questions.jsonl (question_id, image, text, category), context.jsonl (the
image's caption, found by image name), answers_gpt4.jsonl (the reference answers, line by line with the
questions) and images/.

Prompt: the question's text as it is, 1024 new tokens (CuMo cumo/eval/model_vqa.py).

Reviews reproduce LLaVA llava/eval/eval_gpt_review_bench.py (CuMo's copy cumo/eval/eval_gpt_review_bench.py,
which takes a caption given as one string whole and joins a list of them with newlines): the system message
and the context/question/two-answers layout below, with llava/eval/table/rule.json's prompt for the
question's category (`llava_bench_conv`, `_detail` and `_complex` hold the same text), temperature 0.2, 1024
tokens; Assistant 1 is GPT-4's reference, Assistant 2 the model. The paper's judge is gpt-4-0613.

Scores reproduce llava/eval/summarize_gpt_review.py: per category and over all, the mean of each
assistant's scores rounded to 3 decimals, then model / reference x100 rounded to 1 decimal; averaged here
over the judge's runs (the paper averages 3). A review whose first line is not two numbers is counted
(`judge_gave_up`) and left out of the means; upstream scores it (-1, -1), which would pull both means down.
Past the judge's `max_gave_up_share` of the (question, run) pairs the benchmark is not scored.
"""

from pathlib import Path

from cumo.eval.benchmark import Benchmark, Question, Result
from cumo.eval.benchmarks.common import read_jsonl, replies

JUDGE_MODEL = "gpt-4-0613"  # the paper; LLaVA's script names gpt-4-0314, CuMo's Azure deployment "gpt-4"
QUESTION_FILE = "questions.jsonl"
CONTEXT_FILE = "context.jsonl"
REFERENCE_FILE = "answers_gpt4.jsonl"
CATEGORIES = ("conv", "detail", "complex")
DECIMALS = 1
NO_SCORES = "review without a line of two scores (left out of the means)"

SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
ROLE = "Assistant"
# rule.json "llava_bench_conv" / "llava_bench_detail" / "llava_bench_complex" `prompt`, verbatim.
RULE = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image. For your reference, the visual "
    "content in the image is represented with a few sentences describing the image. \n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 and 2, "
    "respectively. The two scores are separated by a space.\n"
    "In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any "
    "potential bias and ensuring that the order in which the responses were presented does not affect your "
    "judgment."
)


def review_messages(caption: str | list[str], question: str, reference: str, answer: str) -> list[dict]:
    """eval_gpt_review_bench.py's request: the caption, the question, both answers and the rule."""
    caption = "\n".join(caption) if isinstance(caption, list) else caption
    content = (
        f"[Context]\n{caption}\n\n"
        f"[Question]\n{question}\n\n"
        f"[{ROLE} 1]\n{reference}\n\n[End of {ROLE} 1]\n\n"
        f"[{ROLE} 2]\n{answer}\n\n[End of {ROLE} 2]\n\n"
        f"[System]\n{RULE}\n\n"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


def parse_review(review: str) -> tuple[float, float] | None:
    """`parse_score`: the first line, commas as spaces, split on single spaces, exactly two numbers."""
    parts = review.split("\n")[0].replace(",", " ").split(" ")
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


def relative_score(pairs: list[tuple[float, float]]) -> dict:
    """summarize_gpt_review.py for one group of reviews: (reference, model) means rounded to 3 decimals, and the
    model's as a percentage of the reference's."""
    reference = round(sum(p[0] for p in pairs) / len(pairs), 3)
    model = round(sum(p[1] for p in pairs) / len(pairs), 3)
    return {"relative": round(model / reference * 100, DECIMALS), "model": model, "reference": reference}


def questions(folder: Path) -> list[Question]:
    rows = read_jsonl(
        folder / QUESTION_FILE, "LLaVA-Bench (in-the-wild) questions (Hub liuhaotian/llava-bench-in-the-wild)"
    )
    return [
        Question(
            question_id=row["question_id"],
            text=row["text"],
            image=folder / "images" / row["image"],
            metadata={"category": row["category"]},
        )
        for row in rows
    ]


def _references(folder: Path, rows: list[dict]) -> list[str]:
    """GPT-4's answers, paired with the questions line by line as upstream zips them (checked by id)."""
    references = read_jsonl(folder / REFERENCE_FILE, "LLaVA-Bench (in-the-wild) GPT-4 answers")
    ids = [row["question_id"] for row in rows]
    if [reference["question_id"] for reference in references] != ids:
        raise ValueError(
            f"{folder / REFERENCE_FILE} does not answer {folder / QUESTION_FILE} line by line (question ids "
            "differ): the files come from different releases; fetch both again"
        )
    return [reference["text"] for reference in references]


def score(folder: Path, predictions: list[dict], judge=None) -> Result:
    if judge is None:
        raise ValueError("llava_wild is reviewed by a judge model: give a Judge (the paper's: gpt-4-0613)")
    rows = read_jsonl(folder / QUESTION_FILE, "LLaVA-Bench (in-the-wild) questions")
    answers = replies("llava_wild", questions(folder), predictions)
    references = _references(folder, rows)
    captions = {
        c["image"]: c["caption"]
        for c in read_jsonl(folder / CONTEXT_FILE, "LLaVA-Bench (in-the-wild) context")
    }
    unknown = sorted({row["category"] for row in rows} - set(CATEGORIES))
    if unknown:
        raise ValueError(
            f"{folder / QUESTION_FILE}: categories {unknown} have no review rule (known: {CATEGORIES})"
        )

    per_run, unparsed = [], judge.give_ups("llava_wild")
    for run in range(judge.runs):
        groups: dict[str, list[tuple[float, float]]] = {"all": []}
        for row, answer, reference in zip(rows, answers, references, strict=True):
            if row["image"] not in captions:
                raise ValueError(f"{folder / CONTEXT_FILE}: no caption for image {row['image']}")
            review = judge.complete(
                review_messages(captions[row["image"]], row["text"], reference, answer),
                temperature=0.2,
                max_tokens=1024,
                run=run,
                what=f"llava_wild question {row['question_id']}, run {run}",
                parse=parse_review,
            )
            pair = parse_review(review)
            unparsed.see()
            if pair is None:
                unparsed.skip(NO_SCORES, f"{row['question_id']}, run {run}", f"review {review[:60]!r}")
                continue
            groups.setdefault(row["category"], []).append(pair)
            groups["all"].append(pair)
        per_run.append({group: relative_score(pairs) for group, pairs in groups.items() if pairs})

    unparsed.check()  # before the means: with no review read there are none
    if not unparsed.seen - unparsed.skipped:
        raise ValueError(
            f"llava_wild: none of the judge {judge.model}'s reviews starts with a line of two scores"
        )
    metrics = {}
    for group in ("all", *CATEGORIES):
        scored = [run[group] for run in per_run if group in run]
        if scored:
            metrics[group] = {
                key: round(sum(s[key] for s in scored) / len(scored), DECIMALS if key == "relative" else 3)
                for key in ("relative", "model", "reference")
            }
    metrics["runs"] = [run["all"]["relative"] for run in per_run if "all" in run]
    metrics["judge_gave_up"] = unparsed.to_dict()  # (question, run) pairs whose review had no score line
    return Result(headline=metrics["all"]["relative"], metrics=metrics, n=len(rows))


BENCHMARK = Benchmark(
    name="llava_wild",
    title="LLaVA-W",
    split="test",
    folder="llava-bench-in-the-wild",
    headline_metric="relative score (%): judge's score of the model over GPT-4's answers, mean over judge runs",
    questions=questions,
    score=score,
    max_new_tokens=1024,
    judge_model=JUDGE_MODEL,
)

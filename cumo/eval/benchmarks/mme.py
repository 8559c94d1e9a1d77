"""MME: two yes/no questions per image (one answered Yes, one No) in 14 subtasks; the paper's number is the
perception score (the sum over its 10 subtasks of accuracy + accuracy+, at most 2000); cognition (4 subtasks)
is reported beside it.

Files under eval/MME/ (LLaVA-1.5 docs/Evaluation.md; CuMo scripts/cumo/eval/mme_m.sh): llava_mme.jsonl
(LLaVA's question file: "Please answer yes or no." swapped for the short-answer suffix, `question_id` the
image's path, `category` the subtask) and MME_Benchmark_release_version/<subtask>/, the release, whose .txt
files hold "question<TAB>Yes|No" per image (beside the images, or in questions_answers_YN/ next to images/).

LLaVA's file gives both questions of an image the image path as `question_id`; answers here are keyed by
question, so the n-th question asked about an image is "<path>#<n>" (n = 1, 2), the path in the metadata.

Prompt: the question file's text as it is (model_vqa_loader.py), 128 new tokens (its default).
Scoring: LLaVA's convert_answer_to_mme.py finds each question's ground truth in the release (suffix swapped
back, with the release's double-space variant), then MME's eval_tool/calculation.py (`cumo.eval.metrics.mme`).
A subtask without questions is left out of its sum and named in `missing_subtasks`.
"""

from collections import Counter, defaultdict
from pathlib import Path

from cumo.eval.benchmark import Benchmark, Question, Result
from cumo.eval.benchmarks.common import SHORT_ANSWER, existing, read_jsonl, replies
from cumo.eval.metrics.mme import COGNITION, PERCEPTION, subtask_score

QUESTION_FILE = "llava_mme.jsonl"
RELEASE = "MME_Benchmark_release_version"
YES_NO = "Please answer yes or no."


def questions(folder: Path) -> list[Question]:
    rows = read_jsonl(folder / QUESTION_FILE, "MME question file (LLaVA-1.5's eval.zip)")
    unknown = sorted({row["category"] for row in rows} - set(PERCEPTION + COGNITION))
    if unknown:
        raise ValueError(f"{folder / QUESTION_FILE}: unknown MME subtask(s) {unknown}")
    seen = Counter()
    asked = []
    for row in rows:
        seen[row["question_id"]] += 1
        asked.append(
            Question(
                question_id=f"{row['question_id']}#{seen[row['question_id']]}",
                text=row["text"],
                image=folder / RELEASE / row["image"],
                metadata={"category": row["category"], "image": row["question_id"]},
            )
        )
    return asked


def ground_truth(release: Path) -> dict[tuple[str, str, str], str]:
    """{(subtask, .txt file name, question): "Yes" | "No"} from the release (convert_answer_to_mme.get_gt)."""
    truth = {}
    for subtask in sorted(
        path for path in existing(release, "MME release folder").iterdir() if path.is_dir()
    ):
        answers = subtask / "questions_answers_YN" if (subtask / "images").exists() else subtask
        for file in sorted(answers.glob("*.txt")):
            for line in file.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    question, answer = line.strip().split("\t")
                    truth[subtask.name, file.name, question] = answer
    return truth


def truth_of(question: Question, truth: dict[tuple[str, str, str], str]) -> str:
    """convert_answer_to_mme.py's lookup: the release's question is the prompt with "Please answer yes or no."
    in place of the short-answer suffix (some release lines have two spaces before it)."""
    image = question.metadata["image"]
    subtask, file = image.split("/")[0], image.split("/")[-1].split(".")[0] + ".txt"
    text = question.text.replace(SHORT_ANSWER, "").strip()
    if YES_NO not in text:
        text += " " + YES_NO
    for candidate in (text, text.replace(" " + YES_NO, "  " + YES_NO)):
        if (subtask, file, candidate) in truth:
            return truth[subtask, file, candidate]
    raise ValueError(
        f"MME: no ground truth for {question.question_id} ({subtask}/{file}: {text!r}) in {RELEASE}"
    )


def score(folder: Path, predictions: list[dict], judge=None) -> Result:
    asked = questions(folder)
    truth = ground_truth(folder / RELEASE)
    images = defaultdict(lambda: defaultdict(list))  # subtask -> image -> [(reply, truth)]
    for question, reply in zip(asked, replies("mme", asked, predictions), strict=True):
        images[question.metadata["category"]][question.metadata["image"]].append(
            (reply, truth_of(question, truth))
        )
    subtasks = {name: subtask_score(list(by_image.values())) for name, by_image in images.items()}
    perception = sum(subtasks[name]["score"] for name in PERCEPTION if name in subtasks)
    cognition = sum(subtasks[name]["score"] for name in COGNITION if name in subtasks)
    return Result(
        headline=perception,
        metrics={
            "perception": perception,
            "cognition": cognition,
            "missing_subtasks": [name for name in PERCEPTION + COGNITION if name not in subtasks],
            **{name: subtasks[name] for name in PERCEPTION + COGNITION if name in subtasks},
        },
        n=len(asked),
    )


BENCHMARK = Benchmark(
    name="mme",
    title="MME",
    split="test",  # MME has one set
    folder="MME",
    headline_metric="perception score (sum of 10 subtasks' accuracy + accuracy+)",
    questions=questions,
    score=score,
    max_new_tokens=128,
)

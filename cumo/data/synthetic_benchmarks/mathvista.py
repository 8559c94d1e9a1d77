"""MathVista, under eval/mathvista/: README.md, data/testmini-00000-of-00001.parquet, data/testmini.json,
images/*.png. Format: Hub AI4Math/MathVista; lupantech/MathVista data/testmini.json,
evaluation/{build_query,calculate_score}.py.
"""

from pathlib import Path

from datasets import Features, List, Value
from datasets import Image as ImageFeature

from cumo.data.synthetic_benchmarks.common import LETTERS, Writer, hub_card

MATHVISTA_FEATURES = Features(
    {
        "pid": Value("string"),
        "question": Value("string"),
        "image": Value("string"),
        "decoded_image": ImageFeature(),
        "choices": List(Value("string")),
        "unit": Value("string"),
        "precision": Value("float64"),
        "answer": Value("string"),
        "question_type": Value("string"),
        "answer_type": Value("string"),
        "metadata": {
            "category": Value("string"),
            "context": Value("string"),
            "grade": Value("string"),
            "img_height": Value("int64"),
            "img_width": Value("int64"),
            "language": Value("string"),
            "skills": List(Value("string")),
            "source": Value("string"),
            "split": Value("string"),
            "task": Value("string"),
        },
        "query": Value("string"),
    }
)
# kind -> (question_type, answer_type, precision): integers, two-decimal floats, or a choice's text
MATHVISTA_KINDS = {
    "count": ("free_form", "integer", None),
    "remaining": ("free_form", "integer", None),
    "fraction": ("free_form", "float", 2),
    "color": ("multi_choice", "text", None),
    "identity": ("multi_choice", "text", None),
}
MATHVISTA_METADATA = {  # question_type -> MathVista's category, task and skills
    "free_form": {
        "category": "math-targeted-vqa",
        "task": "math word problem",
        "skills": ["arithmetic reasoning"],
    },
    "multi_choice": {
        "category": "general-vqa",
        "task": "visual question answering",
        "skills": ["logical reasoning"],
    },
}
# MathVista's zero-shot hints (evaluation/build_query.py; data/query.json puts the hint first).
MATHVISTA_HINTS = {
    "text": "Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.",
    "integer": "Please answer the question requiring an integer answer and provide the final value, "
    "e.g., 1, 2, 3, at the end.",
    "float": "Please answer the question requiring a floating-point number with two decimal places and "
    "provide the final value, e.g., 1.23, 1.34, 1.45, at the end.",
}


def write_mathvista(w: Writer, count: int) -> dict[str, Path]:
    """MathVista testmini: integer and two-decimal free-form questions (counting, CLEVR-Math-style
    subtraction, fractions) and multiple choice, whose answer is the choice's text.

    data/testmini.json is lupantech/MathVista's ground truth for calculate_score.py (no query, integer
    precision); the parquet rows are the Hub's, with decoded_image and query."""
    problems, rows = {}, []
    kinds = list(MATHVISTA_KINDS)
    for i in range(count):
        kind = kinds[i % len(kinds)]
        question_type, answer_type, precision = MATHVISTA_KINDS[kind]
        scene, (question,) = w.draw(kind)
        pid = str(i + 1)
        png = w.png(scene)
        w.path(f"images/{pid}.png").write_bytes(png)
        choices = w.options(question, 4) if question_type == "multi_choice" else None
        problems[pid] = {
            "question": question.text(),
            "image": f"images/{pid}.png",
            "choices": choices,
            "unit": None,
            "precision": precision,
            "answer": question.answer,
            "question_type": question_type,
            "answer_type": answer_type,
            "pid": pid,
            "metadata": {
                "split": "testmini",
                "language": "english",
                "img_width": w.image_size,
                "img_height": w.image_size,
                "source": "shapes-world",
                **MATHVISTA_METADATA[question_type],
                "context": "synthetic scene",
                "grade": "elementary school",
            },
        }
        query = f"Hint: {MATHVISTA_HINTS[answer_type]}\nQuestion: {question.text()}"
        if choices:
            query += "\nChoices:" + "".join(f"\n({LETTERS[k]}) {choice}" for k, choice in enumerate(choices))
        rows.append(
            problems[pid]
            | {
                "decoded_image": {"bytes": png, "path": None},
                "precision": None if precision is None else float(precision),
                "query": query,
            }
        )
    card = hub_card({"default": {"testmini": "data/testmini-*"}})
    w.path("README.md").write_text(card, encoding="utf-8")
    return {
        "questions": w.folder,
        "dataset": w.parquet("data/testmini-00000-of-00001.parquet", rows, MATHVISTA_FEATURES),
        "annotations": w.json("data/testmini.json", problems),
        "images": w.folder / "images",
    }

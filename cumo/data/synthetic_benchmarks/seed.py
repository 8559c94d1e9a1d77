"""SEED-Bench, under eval/seed_bench/: llava-seed-bench.jsonl, SEED-Bench.json,
SEED-Bench-image/<data_id>.png. Format: AILab-CVC/SEED-Bench DATASET.md (SEED-Bench-1); LLaVA
scripts/convert_seed_for_submission.py.
"""

from pathlib import Path

from cumo.data.synthetic_benchmarks.common import LETTERS, OPTION_LETTER, Writer

SEED_QUESTION_TYPES = {  # SEED-Bench-1's 12 evaluation dimensions (AILab-CVC/SEED-Bench DATASET.md)
    "Scene Understanding": 1,
    "Instance Identity": 2,
    "Instance Attributes": 3,
    "Instance Location": 4,
    "Instances Counting": 5,
    "Spatial Relation": 6,
    "Instance Interaction": 7,
    "Visual Reasoning": 8,
    "Text Understanding": 9,
    "Action Recognition": 10,
    "Action Prediction": 11,
    "Procedure Understanding": 12,
}
SEED_KINDS = {
    "identity": "Instance Identity",
    "color": "Instance Attributes",
    "position": "Instance Location",
    "count": "Instances Counting",
    "word": "Text Understanding",
}


def write_seed(w: Writer, count: int) -> dict[str, Path]:
    """SEED-Bench image questions (dimensions 2-5 and 9), four choices each, letters balanced."""
    questions, rows = [], []
    kinds = list(SEED_KINDS)
    for i in range(count):
        kind = kinds[i % len(kinds)]
        scene, (question,) = w.draw(kind)
        choices = w.options(question, 4)
        data_id = f"{1000000 + i}_{w.rng.randrange(10**9, 10**10)}"  # CC3M-style name, as SEED's data_id
        w.image(scene, f"SEED-Bench-image/{data_id}.png")
        question_id = str(100000 + i)
        lines = "\n".join(f"{LETTERS[k]}. {choice}" for k, choice in enumerate(choices))
        questions.append(
            {
                "answer": LETTERS[choices.index(question.answer)],
                **{f"choice_{letter}": choice for letter, choice in zip("abcd", choices, strict=True)},
                "data_id": data_id,
                "data_type": "image",
                "question": question.text(),
                "question_id": question_id,
                "question_type_id": SEED_QUESTION_TYPES[SEED_KINDS[kind]],
            }
        )
        rows.append(
            {
                "image": f"SEED-Bench-image/{data_id}.png",
                "text": f"{question.text()}\n{lines}\n{OPTION_LETTER}",
                "category": SEED_KINDS[kind],
                "question_id": question_id,
            }
        )
    return {
        "questions": w.jsonl("llava-seed-bench.jsonl", rows),
        "annotations": w.json(
            "SEED-Bench.json", {"questions": questions, "question_type": SEED_QUESTION_TYPES}
        ),
        "images": w.folder,
    }

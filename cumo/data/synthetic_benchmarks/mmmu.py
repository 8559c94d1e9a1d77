"""MMMU, under eval/MMMU/: README.md, <Subject>/validation-00000-of-00001.parquet for all 30 subjects,
eval/answer_dict_val.json. Format: Hub MMMU/MMMU; MMMU-Benchmark/MMMU eval/ (data_utils.py,
main_eval_only.py).
"""

import math
from pathlib import Path

from datasets import Features, Value
from datasets import Image as ImageFeature

from cumo.data.synthetic_benchmarks.common import LETTERS, Writer, hub_card

MMMU_SUBJECTS = (  # MMMU's 30 subjects, in the order of its CAT_SHORT2LONG (eval/utils/data_utils.py)
    "Accounting Agriculture Architecture_and_Engineering Art Art_Theory Basic_Medical_Science Biology "
    "Chemistry Clinical_Medicine Computer_Science Design Diagnostics_and_Laboratory_Medicine Economics "
    "Electronics Energy_and_Power Finance Geography History Literature Manage Marketing Materials Math "
    "Mechanical_Engineering Music Pharmacy Physics Psychology Public_Health Sociology"
).split()
MMMU_FEATURES = Features(
    {
        "id": Value("string"),
        "question": Value("string"),
        "options": Value("string"),
        "explanation": Value("string"),
        **{f"image_{k}": ImageFeature() for k in range(1, 8)},
        "img_type": Value("string"),
        "answer": Value("string"),
        "topic_difficulty": Value("string"),
        "question_type": Value("string"),
        "subfield": Value("string"),
    }
)


def write_mmmu(w: Writer, count: int) -> dict[str, Path]:
    """MMMU validation: the same number of questions in each of the 30 subjects (at least one), every fourth
    one open (a count), the rest multiple choice with four options given as a Python list literal.

    answer_dict_val.json is MMMU's eval/ ground truth, which names open questions "short-answer" where the
    dataset says "open"."""
    per_subject = math.ceil(count / len(MMMU_SUBJECTS))
    answers, card = {}, {}
    multiple_choice_kinds = ("color", "identity", "position")
    for s, subject in enumerate(MMMU_SUBJECTS):
        rows = []
        for j in range(per_subject):
            i = s * per_subject + j
            is_open = i % 4 == 3
            kind = ("count", "remaining")[i % 2] if is_open else multiple_choice_kinds[i % 3]
            scene, (question,) = w.draw(kind)
            choices = [] if is_open else w.options(question, 4)
            answer = question.answer if is_open else LETTERS[choices.index(question.answer)]
            row_id = f"validation_{subject}_{j + 1}"
            rows.append(
                {
                    "id": row_id,
                    "question": f"<image 1> {question.text()}",
                    "options": str(choices),
                    "explanation": "",
                    "image_1": {"bytes": w.png(scene), "path": None},
                    **{f"image_{k}": None for k in range(2, 8)},
                    "img_type": "['Diagrams']",
                    "answer": answer,
                    "topic_difficulty": "Easy",
                    "question_type": "open" if is_open else "multiple-choice",
                    "subfield": "Shapes",
                }
            )
            answers[row_id] = {
                "question_type": "short-answer" if is_open else "multiple-choice",
                "ground_truth": answer,
            }
        w.parquet(f"{subject}/validation-00000-of-00001.parquet", rows, MMMU_FEATURES)
        card[subject] = {"validation": f"{subject}/validation-*"}
    w.path("README.md").write_text(hub_card(card), encoding="utf-8")
    return {"questions": w.folder, "answers": w.json("eval/answer_dict_val.json", answers)}

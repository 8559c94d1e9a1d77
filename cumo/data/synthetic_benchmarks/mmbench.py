"""MMBench, under eval/mmbench/: mmbench_dev_20230712.tsv; mmbench_cn: mmbench_dev_cn_20231003.tsv (base64
PNGs inside). Format: LLaVA llava/eval/model_vqa_mmbench.py, scripts/convert_mmbench_for_submission.py;
open-compass/VLMEvalKit vlmeval/evaluate/multiple_choice.py (circular evaluation).

Where we differ, on purpose: MMBench-CN asks in Chinese but keeps the world's English words as options (the
tiny tokenizer knows those).
"""

import base64
import csv
from pathlib import Path

from cumo.data.synthetic_benchmarks.common import LETTERS, Writer

MMBENCH_COLUMNS = "index question hint A B C D answer category image source l2-category comment split".split()
MMBENCH_KINDS = {  # kind -> (category, l2-category), from MMBench's ability taxonomy
    "color": ("attribute_recognition", "finegrained_perception (instance-level)"),
    "shape": ("attribute_recognition", "finegrained_perception (instance-level)"),
    "position": ("object_localization", "finegrained_perception (instance-level)"),
    "word": ("ocr", "finegrained_perception (instance-level)"),
}
MMBENCH_HINTS = {"en": "Positions are as the viewer sees the image.", "cn": "位置按观看者所见描述。"}
MMBENCH_FILES = {"en": "mmbench_dev_20230712.tsv", "cn": "mmbench_dev_cn_20231003.tsv"}


def write_mmbench(w: Writer, count: int, lang: str) -> dict[str, Path]:
    """MMBench dev: `count` questions with 3-4 options, plus their circular copies as the dev TSV holds them:
    index + k * 1e6 shows the options rotated k places (options[k:] + options[:k]), so a question counts only
    when every rotation is answered (VLMEvalKit groups rows by index % 1e6). Position questions carry a hint.
    """
    questions = []  # (row without its options, options, answer)
    kinds = list(MMBENCH_KINDS)
    for i in range(count):
        kind = kinds[i % len(kinds)]
        scene, (question,) = w.draw(kind)
        category, l2_category = MMBENCH_KINDS[kind]
        row = {
            "index": i,
            "question": question.text(lang),
            "hint": MMBENCH_HINTS[lang] if kind == "position" else "",
            "category": category,
            "image": base64.b64encode(w.png(scene)).decode(),
            "source": "shapes-world",
            "l2-category": l2_category,
            "comment": "",
            "split": "dev",
        }
        questions.append((row, w.options(question, 4), question.answer))
    rows = []
    for k in range(4):  # the questions, then their first rotations, then their second, ...
        for row, choices, answer in questions:
            if k < len(choices):
                rotated = choices[k:] + choices[:k]
                letters = dict(zip("ABCD", rotated + [""] * (4 - len(rotated)), strict=True))
                answer_letter = LETTERS[rotated.index(answer)]
                rows.append(row | letters | {"index": row["index"] + k * 1_000_000, "answer": answer_letter})
    path = w.path(MMBENCH_FILES[lang])
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, MMBENCH_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return {"questions": path}

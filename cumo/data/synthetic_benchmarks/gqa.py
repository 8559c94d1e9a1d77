"""GQA, under eval/gqa/: llava_gqa_testdev_balanced.jsonl, data/testdev_balanced_questions.json,
data/images/<id>.png. Format: GQA's eval.py (cs.stanford.edu/people/dorarad/gqa); LLaVA
scripts/convert_gqa_for_eval.py.
"""

import math
from pathlib import Path

from cumo.data.synthetic_benchmarks.common import KINDS, SHORT_ANSWER, Writer

# (kind, yes/no?) -> GQA's question types (structural, semantic, detailed) and program (operation, argument).
# The structural and semantic values are GQA's vocabulary; the detailed ones are our closest reading of it.
GQA_PROGRAMS = {
    ("color", False): (
        ("query", "attr", "directOf"),
        [("select", "{shape}"), ("filter", "{where}"), ("query", "color")],
    ),
    ("shape", False): (
        ("query", "cat", "categoryThat"),
        [("select", "object"), ("filter", "{where}"), ("query", "name")],
    ),
    ("position", False): (
        ("query", "attr", "positionQuery"),
        [("select", "{shape}"), ("filter color", "{color}"), ("query", "position")],
    ),
    ("color", True): (
        ("verify", "attr", "verifyAttr"),
        [("select", "{shape}"), ("filter", "{where}"), ("verify color", "{color}")],
    ),
    ("exists", True): (("verify", "obj", "exist"), [("select", "{identity}"), ("exist", "?")]),
}


def gqa_question(
    qid: str,
    image_id: str,
    text: str,
    answer: str,
    full_answer: str,
    kind: str,
    is_check: bool,
    slots: dict[str, str],
) -> dict:
    """One entry of testdev_balanced_questions.json: the fields GQA's eval.py reads, and its program."""
    (structural, semantic, detailed), steps = GQA_PROGRAMS[kind, is_check]
    program = [
        {"operation": operation, "argument": argument.format(**slots), "dependencies": [k - 1] if k else []}
        for k, (operation, argument) in enumerate(steps)
    ]
    return {
        "semantic": program,
        "entailed": [],
        "equivalent": [qid],
        "question": text,
        "imageId": image_id,
        "isBalanced": True,
        "groups": {"global": None if is_check else kind, "local": f"{detailed}-{program[0]['argument']}"},
        "answer": answer,
        "semanticStr": "->".join(
            f"{step['operation']}: {step['argument']} {step['dependencies']}" for step in program
        ),
        "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
        "types": {"structural": structural, "semantic": semantic, "detailed": detailed},
        "fullAnswer": full_answer,
    }


def write_gqa(w: Writer, count: int) -> dict[str, Path]:
    """GQA testdev-balanced: per image one open question (colour, shape, position) and one yes/no question
    (a colour check or an existence question) whose answer alternates, so "yes" and "no" are balanced."""
    questions, rows = {}, []
    open_kinds = ("color", "shape", "position")
    for i in range(math.ceil(count / 2)):
        scene, (asked, checked) = w.draw(open_kinds[i % 3], ("color", "exists")[i % 2])
        image_id = f"n{100000 + i}"
        w.image(scene, f"data/images/{image_id}.png")
        value = checked.answer if i % 4 < 2 else checked.wrong(w.rng)
        check = checked.check(value)
        for text, answer, full_answer, kind, is_check, slots in (
            (asked.text(), asked.answer, asked.statement(), asked.kind, False, asked.slots),
            (
                check.text,
                check.label,
                check.full_answer,
                checked.kind,
                True,
                checked.slots | {KINDS[checked.kind].answer: value},
            ),
        ):
            qid = str(20000000 + len(questions))
            questions[qid] = gqa_question(qid, image_id, text, answer, full_answer, kind, is_check, slots)
            rows.append({"question_id": qid, "image": f"{image_id}.png", "text": f"{text}\n{SHORT_ANSWER}"})
    return {
        "questions": w.jsonl("llava_gqa_testdev_balanced.jsonl", rows),
        "annotations": w.json("data/testdev_balanced_questions.json", questions),
        "images": w.folder / "data/images",
    }

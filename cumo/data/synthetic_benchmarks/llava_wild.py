"""LLaVA-Bench in-the-wild, under eval/llava-bench-in-the-wild/: questions.jsonl, context.jsonl,
answers_gpt4.jsonl, images/<nnn>.png. Format: Hub liuhaotian/llava-bench-in-the-wild; LLaVA
llava/eval/eval_gpt_review_bench.py.
"""

import math
from pathlib import Path

from cumo.data.synthetic_benchmarks.common import Writer, describe


def write_llava_wild(w: Writer, count: int) -> dict[str, Path]:
    """LLaVA-Bench in-the-wild: per image a conversation question, a detailed description and a counting
    puzzle (its conv, detail and complex categories); GPT-4's reference answers say the scene in words.

    The judge pairs questions.jsonl and answers_gpt4.jsonl line by line, and finds the context by image."""
    questions, contexts, answers = [], [], []
    conversation_kinds = ("color", "position", "word")
    for i in range(math.ceil(count / 3)):
        scene, asked = w.draw(conversation_kinds[i % 3], "describe", "remaining")
        image = f"{i + 1:03d}.png"
        w.image(scene, f"images/{image}")
        contexts.append({"id": f"{i + 1:03d}", "image": image, "caption": describe(scene)})
        for question, category in zip(asked, ("conv", "detail", "complex"), strict=True):
            qid = len(questions)
            questions.append(
                {"question_id": qid, "image": image, "text": question.text(), "category": category}
            )
            answers.append(
                {
                    "question_id": qid,
                    "prompt": question.text(),
                    "text": question.statement(),
                    "answer_id": f"{w.rng.getrandbits(64):016x}",
                    "model_id": "gpt-4-0314",
                    "metadata": {},
                }
            )
    return {
        "questions": w.jsonl("questions.jsonl", questions),
        "context": w.jsonl("context.jsonl", contexts),
        "answers": w.jsonl("answers_gpt4.jsonl", answers),
        "images": w.folder / "images",
    }

"""MME, under eval/MME/: llava_mme.jsonl, MME_Benchmark_release_version/<subtask>/ (images with their .txt
answers). Format: BradyFU/Awesome-Multimodal-Large-Language-Models (Evaluation branch); LLaVA's
convert_answer_to_mme.py.
"""

import math
from pathlib import Path

from cumo.data.synthetic_benchmarks.common import SHORT_ANSWER, Writer

# (subtask, kind, template of its yes/no question, whether images/ and questions_answers_YN/ are apart).
# Real subtask names (of MME's 10 perception and 4 cognition subtasks); artwork, celebrity, landmark, posters
# and scene keep images and answers in separate folders, the others side by side.
MME_SUBTASKS = (
    ("existence", "exists", None, False),
    ("count", "count", None, False),
    ("position", "position", None, False),
    ("color", "color", None, False),
    ("OCR", "word", None, False),
    ("posters", "word", 'Is this poster titled "{word}"?', True),
    ("numerical_calculation", "remaining", None, False),
)


def write_mme(w: Writer, count: int) -> dict[str, Path]:
    """MME: two questions per image, one answered Yes and one No, each ending in "Please answer yes or no.".

    The .txt files are the release's ground truth (question \\t Yes/No); llava_mme.jsonl is LLaVA's question
    file, whose text swaps that suffix for the short-answer one (convert_answer_to_mme.py swaps it back to
    look up the ground truth by (subtask, .txt file, question))."""
    rows = []
    release = "MME_Benchmark_release_version"
    for i in range(math.ceil(count / 2)):
        subtask, kind, template, separate = MME_SUBTASKS[i % len(MME_SUBTASKS)]
        scene, (question,) = w.draw(kind)
        stem = f"{i // len(MME_SUBTASKS):04d}"
        image = f"{subtask}/images/{stem}.png" if separate else f"{subtask}/{stem}.png"
        answers = f"{subtask}/questions_answers_YN/{stem}.txt" if separate else f"{subtask}/{stem}.txt"
        w.image(scene, f"{release}/{image}")
        checks = [question.check(question.answer, template), question.check(question.wrong(w.rng), template)]
        w.path(f"{release}/{answers}").write_text(
            "".join(
                f"{check.text} Please answer yes or no.\t{check.label.capitalize()}\n" for check in checks
            ),
            encoding="utf-8",
        )
        rows += [
            {
                "question_id": image,
                "image": image,
                "text": f"{check.text}\n{SHORT_ANSWER}",
                "category": subtask,
            }
            for check in checks
        ]
    return {"questions": w.jsonl("llava_mme.jsonl", rows), "images": w.folder / release}

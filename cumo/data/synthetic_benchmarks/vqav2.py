"""VQAv2, under eval/vqav2/: llava_vqav2_mscoco_test-dev2015.jsonl and llava_vqav2_mscoco_test2015.jsonl
(test2015/*.png); for local accuracy llava_vqav2_mscoco_val2014.jsonl,
v2_OpenEnded_mscoco_val2014_questions.json, v2_mscoco_val2014_annotations.json (val2014/*.png).
Format: visualqa.org v2; LLaVA scripts/convert_vqav2_for_submission.py.

Where we differ, on purpose: LLaVA ships no VQAv2 val question file; ours has the test files' schema.
"""

import math
from pathlib import Path

from cumo.data.synthetic_benchmarks.common import SHORT_ANSWER, Writer

VQA_TYPES = {
    "color": ("what color is the", "other"),
    "count": ("how many", "number"),
    "exists": ("is there a", "yes/no"),
}


def write_vqav2(w: Writer, count: int) -> dict[str, Path]:
    """VQAv2: `count` test-dev questions (three per image: colour, count, yes/no alternating), the rest of
    test2015 that a submission must also answer (`count // 2` more), and `count` val questions with ten
    answers each in the official question/annotation files, for local accuracy."""

    def split(image_folder: str, prefix: str, size: int, first_image_id: int):
        """(llava rows, official questions, official annotations) of `size` questions on fresh images."""
        rows, questions, annotations = [], [], []
        for i in range(math.ceil(size / 3)):
            scene, asked = w.draw("color", "count", "exists")
            image_id = first_image_id + i
            name = f"{prefix}_{image_id:012d}.png"
            w.image(scene, f"{image_folder}/{name}")
            color, number, exists = asked
            check = exists.check(exists.answer if i % 2 == 0 else exists.wrong(w.rng))
            for k, (question, text, answer) in enumerate(
                [
                    (color, color.text(), color.answer),
                    (number, number.text(), number.answer),
                    (exists, check.text, check.label),
                ]
            ):
                question_id = image_id * 1000 + k  # VQA's question ids extend the image id
                question_type, answer_type = VQA_TYPES[question.kind]
                rows.append({"question_id": question_id, "image": name, "text": f"{text}\n{SHORT_ANSWER}"})
                questions.append({"image_id": image_id, "question": text, "question_id": question_id})
                annotations.append(
                    {
                        "question_type": question_type,
                        "multiple_choice_answer": answer,
                        "answers": [
                            {"answer": answer, "answer_confidence": "yes", "answer_id": j + 1}
                            for j in range(10)
                        ],
                        "image_id": image_id,
                        "answer_type": answer_type,
                        "question_id": question_id,
                    }
                )
        return rows, questions, annotations

    test_dev, _, _ = split("test2015", "COCO_test2015", count, 1)
    test_standard, _, _ = split("test2015", "COCO_test2015", max(1, count // 2), 1 + math.ceil(count / 3))
    val_rows, val_questions, val_annotations = split("val2014", "COCO_val2014", count, 1)
    header = {"info": {"description": "synthetic shapes world"}, "license": {}, "data_subtype": "val2014"}
    return {
        "questions": w.jsonl("llava_vqav2_mscoco_test-dev2015.jsonl", test_dev),
        "test_questions": w.jsonl("llava_vqav2_mscoco_test2015.jsonl", test_dev + test_standard),
        "images": w.folder / "test2015",
        "val_questions": w.jsonl("llava_vqav2_mscoco_val2014.jsonl", val_rows),
        "val_official_questions": w.json(
            "v2_OpenEnded_mscoco_val2014_questions.json",
            header | {"task_type": "Open-Ended", "data_type": "mscoco", "questions": val_questions},
        ),
        "val_annotations": w.json(
            "v2_mscoco_val2014_annotations.json",
            header | {"data_type": "mscoco", "annotations": val_annotations},
        ),
        "val_images": w.folder / "val2014",
    }

"""TextVQA, under eval/textvqa/: llava_textvqa_val_v051_ocr.jsonl, TextVQA_0.5.1_val.json,
train_images/<image_id>.png. Format: textvqa.org v0.5.1; LLaVA llava/eval/eval_textvqa.py (annotations
found by (image_id, question)).

Where we differ, on purpose: the OCR tokens are the rendered word among two words that are not in the image
(Rosetta is noisy too), so the tokens alone leave a one-in-three guess.
"""

from pathlib import Path

from cumo.data.synthetic import SIGN_WORDS
from cumo.data.synthetic_benchmarks.common import SHORT_ANSWER, Writer


def write_textvqa(w: Writer, count: int) -> dict[str, Path]:
    """TextVQA val: questions about the rendered word (every third image also gets a colour question).

    LLaVA's question file uses the image id as question_id (eval_textvqa.py matches annotations on
    (image_id, question)), so an image with two questions repeats its question_id, as the real file does."""
    annotations, rows = [], []
    while len(annotations) < count:
        kinds = ("word", "color") if len(annotations) % 3 == 2 else ("word",)
        scene, questions = w.draw(*kinds)
        image_id = f"{w.rng.getrandbits(64):016x}"
        w.image(scene, f"train_images/{image_id}.png")
        ocr_tokens = w.rng.sample([word for word in SIGN_WORDS if word != scene.word], 2) + [scene.word]
        w.rng.shuffle(ocr_tokens)
        for question in questions:
            text = question.text().lower()  # TextVQA's questions are lower case
            annotations.append(
                {
                    "question": text,
                    "image_id": image_id,
                    "image_classes": [],
                    "flickr_original_url": "",
                    "flickr_300k_url": "",
                    "image_width": w.image_size,
                    "image_height": w.image_size,
                    # Ten annotators: the case varies (EvalAI's normalisation folds it); one could not read.
                    "answers": [question.answer] * 8 + [question.answer.capitalize(), "unanswerable"],
                    "question_tokens": text.rstrip("?").split(),
                    "question_id": 34602 + len(annotations),
                    "set_name": "val",
                }
            )
            rows.append(
                {
                    "question_id": image_id,
                    "image": f"{image_id}.png",
                    "text": f"{text}\nReference OCR token: {', '.join(ocr_tokens)}\n{SHORT_ANSWER}",
                }
            )
    data = {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": annotations}
    return {
        "questions": w.jsonl("llava_textvqa_val_v051_ocr.jsonl", rows),
        "annotations": w.json("TextVQA_0.5.1_val.json", data),
        "images": w.folder / "train_images",
    }

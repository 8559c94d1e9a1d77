"""ScienceQA-IMG, under eval/scienceqa/: llava_test_CQM-A.json, problems.json, pid_splits.json,
images/test/<pid>/image.png. Format: lupantech/ScienceQA data/scienceqa; LLaVA
scripts/convert_sqa_to_llava*.py, llava/eval/eval_science_qa.py.
"""

from pathlib import Path

from cumo.data.synthetic import COLORS, SHAPES
from cumo.data.synthetic_benchmarks.common import LETTERS, Writer


def write_sqa(w: Writer, count: int) -> dict[str, Path]:
    """ScienceQA test: every fourth problem has no image, as in the real split (IMG accuracy skips them).

    problems.json and pid_splits.json are lupantech/ScienceQA's; llava_test_CQM-A.json is LLaVA's
    convert_sqa_to_llava.py in the CQM-A format ("Context: ...\\nQuestion: ...\\nOptions: (A) ...")."""
    problems, questions = {}, []
    kinds = ("color", "identity", "position", "count")
    for i in range(count):
        pid = str(i + 1)
        choice_count = 2 + (i // 4) % 3
        if i % 4 == 3:  # a text-only science question: which word names a colour?
            answer = w.rng.choice(list(COLORS))
            choices = w.rng.sample(SHAPES, choice_count - 1)
            choices.insert(w.rng.randrange(choice_count), answer)
            text, image = "Which of these words names a color?", None
        else:
            scene, (question,) = w.draw(kinds[i % 4])
            choices = w.options(question, choice_count)
            text, answer, image = question.text(), question.answer, "image.png"
            w.image(scene, f"images/test/{pid}/{image}")
        problems[pid] = {
            "question": text,
            "choices": choices,
            "answer": choices.index(answer),
            "hint": "",
            "image": image,
            "task": "closed choice",
            "grade": "grade1",
            "subject": "natural science",
            "topic": "shapes",
            "category": "Identify shapes and colors",
            "skill": "Identify shapes and colors",
            "lecture": "",
            "solution": "",
            "split": "test",
        }
        letters = " ".join(f"({LETTERS[k]}) {choice}" for k, choice in enumerate(choices))
        prompt = f"Context: N/A\nQuestion: {text}\nOptions: {letters}"
        # convert_sqa_to_llava.py puts the image token after the prompt
        conversation = [
            {"from": "human", "value": prompt + ("\n<image>" if image else "")},
            {"from": "gpt", "value": f"The answer is {LETTERS[choices.index(answer)]}."},
        ]
        image_field = {"image": f"{pid}/{image}"} if image else {}
        questions.append({"id": pid, **image_field, "conversations": conversation})
    splits = {split: [] for split in ("train", "val", "minitrain", "minival", "trainval")}
    return {
        "questions": w.json("llava_test_CQM-A.json", questions),
        "problems": w.json("problems.json", problems),
        "pid_splits": w.json(
            "pid_splits.json", splits | {"test": list(problems), "minitest": list(problems)}
        ),
        "images": w.folder / "images/test",
    }

"""AI2D (https://allenai.org/data/diagrams): multiple-choice questions on science diagrams, one
conversation per question with LLaVA-1.5's multiple-choice prompt; the official test split is left out.

ai2d-all.zip holds ai2d/images/<id>.png and ai2d/questions/<id>.png.json: {"imageName": "<id>.png",
"questions": {"<text>": {"answerTexts": [...], "correctAnswer": <index>, "questionId": ...}}};
ai2d_test_ids.csv lists the test diagrams' ids, one a line.
"""

from collections.abc import Iterator
from pathlib import Path

from cumo.data.sources import MULTIPLE_CHOICE, conversation, each, read_json

LETTERS = "ABCDEFGH"


def _entry(text: str, question: dict, image: str) -> dict:
    options = "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(question["answerTexts"]))
    prompt = f"{text}\n{options}\n{MULTIPLE_CHOICE}"
    return conversation(
        f"ai2d_{question['questionId']}", [(prompt, LETTERS[question["correctAnswer"]])], image
    )


def _questions(path: Path, folder: str) -> Iterator[dict]:
    questions = read_json(path).get("questions")
    if not isinstance(questions, dict):
        raise ValueError(f"{path}: expected an object with a 'questions' mapping; is this AI2D's layout?")
    image = f"{folder}/ai2d/images/{path.name.removesuffix('.json')}"
    return each(path, questions.items(), lambda item: _entry(item[0], item[1], image))


def convert(data_root: Path, folder: str) -> dict:
    root = data_root / folder
    test_ids = set((root / "ai2d_test_ids.csv").read_text().split())
    files = [
        path
        for path in sorted((root / "ai2d/questions").glob("*.json"))
        if path.name.split(".")[0] not in test_ids
    ]
    return {"ai2d": (entry for path in files for entry in _questions(path, folder))}

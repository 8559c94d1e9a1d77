"""DocVQA, task 1 training set (https://www.docvqa.org/datasets/docvqa): a page's questions become one
conversation, each answered with its first reference answer.

train.tar.gz holds train/documents/*.png and the question file, train_v1.0.json (train_v1.0_withQT.json in
later releases): {"data": [{"question", "answers": [...], "image": "documents/<page>.png", ...}]}, image
paths relative to the question file's folder.
"""

from pathlib import Path

from cumo.data.sources import each, find_one, read_records, short_answer_conversations


def convert(data_root: Path, folder: str) -> dict:
    questions = find_one(data_root / folder, "train/train_v1.0*.json")
    base = questions.parent.relative_to(data_root).as_posix()
    rows = each(
        questions,
        read_records(questions, "data"),
        lambda record: (f"{base}/{record['image']}", record["question"], record["answers"][0]),
    )
    return {"docvqa": short_answer_conversations("docvqa", rows)}

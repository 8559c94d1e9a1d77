"""DVQA training set (https://github.com/kushalkafle/DVQA_dataset): a bar chart's questions become one
conversation.

qa.tar.gz holds train_qa.json, [{"image": "bar_train_00000000.png", "question", "answer", ...}];
images.tar.gz the charts, in images/.
"""

from pathlib import Path

from cumo.data.sources import each, find_one, read_records, short_answer_conversations


def convert(data_root: Path, folder: str) -> dict:
    questions = find_one(data_root / folder, "**/train_qa.json")
    rows = each(
        questions,
        read_records(questions),
        lambda record: (f"{folder}/images/{record['image']}", record["question"], str(record["answer"])),
    )
    return {"dvqa": short_answer_conversations("dvqa", rows)}

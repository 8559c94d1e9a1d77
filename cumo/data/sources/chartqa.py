"""ChartQA training set (https://github.com/vis-nlp/ChartQA): human-written and machine-generated
questions, a chart's questions becoming one conversation.

"ChartQA Dataset/train/" holds train_human.json and train_augmented.json, [{"imgname", "query", "label"}],
and the charts in png/.
"""

from pathlib import Path

from cumo.data.sources import each, read_records, short_answer_conversations

TRAIN = "ChartQA Dataset/train"


def convert(data_root: Path, folder: str) -> dict:
    files = [data_root / folder / TRAIN / name for name in ("train_human.json", "train_augmented.json")]
    rows = (
        row
        for path in files
        for row in each(
            path,
            read_records(path),
            lambda record: (
                f"{folder}/{TRAIN}/png/{record['imgname']}",
                record["query"],
                str(record["label"]),
            ),
        )
    )
    return {"chartqa": short_answer_conversations("chartqa", rows)}

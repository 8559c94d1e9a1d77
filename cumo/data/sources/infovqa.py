"""InfographicVQA, task 3 training set (https://www.docvqa.org/datasets/infographicvqa): an infographic's
questions become one conversation, each answered with its first reference answer.

infographicsVQA_train_v1.0.json (infographicVQA_... in some releases): {"data": [{"question", "answers":
[...], "image_local_name": "<id>.jpeg", ...}]}; the images are in infographicsvqa_images/.
"""

from pathlib import Path

from cumo.data.sources import each, find_one, read_records, short_answer_conversations


def convert(data_root: Path, folder: str) -> dict:
    questions = find_one(data_root / folder, "**/infographic*VQA_train_v1.0*.json")
    rows = each(
        questions,
        read_records(questions, "data"),
        lambda record: (
            f"{folder}/infographicsvqa_images/{record['image_local_name']}",
            record["question"],
            record["answers"][0],
        ),
    )
    return {"infovqa": short_answer_conversations("infovqa", rows)}

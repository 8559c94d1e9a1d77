"""SynthDoG-EN (https://huggingface.co/datasets/naver-clova-ix/synthdog-en): synthetic documents rendered
from English text, for reading; Donut's pre-training data (https://github.com/clovaai/donut).

The images are stored inside the parquet shards, rows {"image": {"bytes", "path"}, "ground_truth":
'{"gt_parse": {"text_sequence": ...}}'}: converting writes them out as images/<shard>-<row>.jpg and asks
for the text.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from cumo.data.sources import conversation

READ = "Read all the text in the image."


def _entries(data_root: Path, folder: str) -> Iterator[dict]:
    images = data_root / folder / "images"
    images.mkdir(exist_ok=True)
    for shard in sorted((data_root / folder).glob("data/train-*.parquet")):
        row_index = 0
        for batch in pq.ParquetFile(shard).iter_batches(columns=["image", "ground_truth"]):
            for row in batch.to_pylist():
                name = f"{shard.stem}-{row_index:06d}.jpg"
                try:
                    text = json.loads(row["ground_truth"])["gt_parse"]["text_sequence"]
                    (images / name).write_bytes(row["image"]["bytes"])
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ValueError(
                        f"{shard}: row {row_index} is not a SynthDoG record ({error})"
                    ) from error
                yield conversation(
                    f"syndog_en_{shard.stem}_{row_index}", [(READ, text)], f"{folder}/images/{name}"
                )
                row_index += 1


def convert(data_root: Path, folder: str) -> dict:
    return {"syndog_en": _entries(data_root, folder)}

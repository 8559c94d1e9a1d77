"""LAION GPT-4V (https://huggingface.co/datasets/laion/gpt4v-dataset): detailed GPT-4V descriptions of
web images, given as parquet rows {"link", "caption"}; the images are fetched from their links.

An image is saved as images/<sha1 of its link>.jpg (the name stays the same whatever the row order); the
conversation asks for a detailed description, a prompt of LLaVA's detailed-description set.
"""

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from cumo.data.download import fetch_all
from cumo.data.skips import SkipCounter
from cumo.data.sources import conversation

DESCRIBE = "Describe this image in detail."
# Web links rot; a guess to revise with the count the first full run records in the marker.
MAX_MISSING = 0.2


def _rows(folder: Path) -> Iterator[dict]:
    for shard in sorted(folder.glob("**/*.parquet")):
        for batch in pq.ParquetFile(shard).iter_batches(columns=["link", "caption"]):
            yield from batch.to_pylist()


def image_name(link: str) -> str:
    return hashlib.sha1(link.encode()).hexdigest() + ".jpg"


def fetch(folder: Path) -> SkipCounter:
    pairs = ((row["link"], folder / "images" / image_name(row["link"])) for row in _rows(folder))
    return fetch_all(pairs, SkipCounter("LAION GPT-4V images", max_share=MAX_MISSING))


def convert(data_root: Path, folder: str) -> dict:
    """Rows whose image could not be fetched are left out (fetch counted them)."""
    images = data_root / folder / "images"
    return {
        "laion_gpt4v": (
            conversation(f"laion_gpt4v_{index}", [(DESCRIBE, row["caption"])], f"{folder}/images/{name}")
            for index, row in enumerate(_rows(data_root / folder))
            if (images / (name := image_name(row["link"]))).is_file()
        )
    }

"""ALLaVA-4V (https://github.com/FreedomIntelligence/ALLaVA): GPT-4V captions (CuMo's pft stage) and
instructions (part of its sft mixture) on LAION and Vision-FLAN images.

Its JSONs are in LLaVA's schema already, [{"id", "image": "allava_laion/images/<n>.jpeg",
"conversations": [...], ...}], with image paths relative to the ALLaVA root: they get the folder in front,
to be relative to the data root; the other fields (original caption, URL) are dropped.
"""

from collections.abc import Iterator
from pathlib import Path

from cumo.data.sources import each, read_records

CAPTIONS = ("allava_laion/ALLaVA-Caption-LAION-4V.json", "allava_vflan/ALLaVA-Caption-VFLAN-4V.json")
INSTRUCTIONS = ("allava_laion/ALLaVA-Instruct-LAION-4V.json", "allava_vflan/ALLaVA-Instruct-VFLAN-4V.json")


def _rebased(data_root: Path, folder: str, names: tuple[str, ...]) -> Iterator[dict]:
    for name in names:
        path = data_root / folder / name
        yield from each(
            path,
            read_records(path),
            lambda record: {
                "id": record["id"],
                "image": f"{folder}/{record['image']}",
                "conversations": record["conversations"],
            },
        )


def convert(data_root: Path, folder: str) -> dict:
    return {
        "allava_caption": _rebased(data_root, folder, CAPTIONS),
        "allava_instruct": _rebased(data_root, folder, INSTRUCTIONS),
    }

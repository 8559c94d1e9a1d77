"""LIMA (https://huggingface.co/datasets/GAIR/lima, gated): 1,000 curated text-only conversations, part of
CuMo's sft mixture.

train.jsonl, one {"conversations": [user, assistant, user, assistant, ...], "source": ...} a line.
"""

import json
from collections.abc import Iterator
from pathlib import Path

from cumo.data.sources import conversation


def _entries(path: Path) -> Iterator[dict]:
    with open(path) as lines:
        for number, line in enumerate(lines, start=1):
            try:
                texts = json.loads(line)["conversations"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(
                    f"{path}:{number}: not a LIMA record ({error}); delete the file and run again"
                ) from error
            if not texts or len(texts) % 2:
                raise ValueError(
                    f"{path}:{number}: {len(texts)} messages, but a conversation alternates user and assistant "
                    "and ends with the assistant; is this the training split?"
                )
            yield conversation(f"lima_{number - 1}", list(zip(texts[0::2], texts[1::2], strict=True)))


def convert(data_root: Path, folder: str) -> dict:
    return {"lima": _entries(data_root / folder / "train.jsonl")}

"""Code for the training sources that need it; every source is declared in cumo/data/sources.yaml.

A module here is named after its source and defines one or both of:

- `fetch(folder: Path) -> SkipCounter`: files no declaration can list, e.g. images named by URL in a
  metadata file; what cannot be fetched is counted (`cumo.data.download.fetch_all`);
- `convert(data_root: Path, folder: str) -> dict[str, Iterable[dict]]`: the source's records in LLaVA's
  conversation schema, by output name; `cumo.data.download` writes each to data/jsons/sources/<name>.json.

An entry is `{"id", "image" (relative to the data root, absent for text), "conversations": [{"from":
"human"|"gpt", "value"}, ...]}` with `<image>` once, at the front of the first human turn, when there is an
image (https://github.com/haotian-liu/LLaVA/blob/main/docs/Finetune_Custom_Data.md). Sources already in
that form with paths relative to the data root (LLaVA-Pretrain, LLaVA-665K, ShareGPT4V, CuMo's mixtures)
and image-only sources (coco, gqa, ...) have no module.

The prompts are LLaVA-1.5's (https://github.com/haotian-liu/LLaVA/blob/main/docs/Evaluation.md); CuMo's
converted mixture cumo_vit_1649K.json is the reference for the paper, these conversions are for building
the mixture from the sources.
"""

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

SHORT_ANSWER = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."


def conversation(entry_id: str, turns: list[tuple[str, str]], image: str | None = None) -> dict:
    """A LLaVA entry from (question, answer) turns; with an image, `<image>` leads the first question."""
    entry = {"id": entry_id}
    if image is not None:
        entry["image"] = image
        turns = [(f"<image>\n{turns[0][0]}", turns[0][1]), *turns[1:]]
    entry["conversations"] = [
        message
        for question, answer in turns
        for message in ({"from": "human", "value": question}, {"from": "gpt", "value": answer})
    ]
    return entry


def short_answer_conversations(source: str, rows: Iterable[tuple[str, str, str]]) -> Iterator[dict]:
    """One conversation per image from (image, question, answer) rows, its questions in file order, each
    with LLaVA-1.5's short-answer instruction, as LLaVA-665K groups the questions of a VQA image."""
    by_image: dict[str, list[tuple[str, str]]] = {}
    for image, question, answer in rows:
        by_image.setdefault(image, []).append((f"{question}\n{SHORT_ANSWER}", answer))
    for image, turns in by_image.items():
        yield conversation(f"{source}_{Path(image).stem}", turns, image=image)


def read_json(path: Path):
    """Parse a source's JSON file; a file that is not JSON is an error naming it."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}): the file is damaged; delete it and run again"
        ) from error


def read_records(path: Path, key: str | None = None) -> list:
    """The list of records in a source's JSON file (under `key` when the file is an object)."""
    data = read_json(path)
    records = data.get(key) if key is not None and isinstance(data, dict) else data
    if not isinstance(records, list):
        where = f"a list under {key!r}" if key else "a list"
        raise ValueError(
            f"{path}: expected {where} of records; is this the release cumo/data/sources.yaml names?"
        )
    return records


def each(path: Path, records: Iterable, make: Callable):
    """`make(record)` for every record; a record without a field it needs is an error naming file and record."""
    for index, record in enumerate(records):
        try:
            yield make(record)
        except (KeyError, IndexError, TypeError) as error:
            raise ValueError(
                f"{path}: record {index} has no {error} ({str(record)[:200]}); is this the release "
                "cumo/data/sources.yaml names?"
            ) from error


def find_one(root: Path, pattern: str) -> Path:
    """The single file matching `pattern` under `root` (archive layouts differ between releases)."""
    found = sorted(root.glob(pattern))
    if len(found) != 1:
        raise FileNotFoundError(
            f"expected one file matching {pattern!r} under {root}, found {[str(path) for path in found]}: "
            "check what the source's archives contain against its declaration in cumo/data/sources.yaml"
        )
    return found[0]

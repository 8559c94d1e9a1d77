"""The training mixtures: every entry checked, what is dropped counted by reason, the rest written to Arrow.

By default, for fidelity, the published mixtures as CuMo's training scripts read them
(https://github.com/SHI-Labs/CuMo/tree/main/scripts/cumo/mistral_7b):

    pretrain  data/llava/llava_pretrain/blip_laion_cc_sbu_558k.json   images under llava/llava_pretrain/images
    pft       data/jsons/cumo_pft_allava.json                         images under the data root
    sft       data/jsons/cumo_vit_1649K.json                          images under the data root

The sft mixture can instead be built from the per-source conversions (several `inputs`), with the published
file as the `reference` whose composition the stats put next to the built one. Composition is counted per
source, the first folder of an entry's image path ("coco", "ocr_vqa", "ALLaVA", ...; "text" for text-only):
the only breakdown a published file carries. It counts image folders, not datasets (ShareGPT4V's COCO images
count as "coco", as LLaVA-665K's do). The paper's per-dataset table of its 1.65M sft entries was not found
in reach of this project, so no per-dataset target is written down here; the published file is the target.

Each entry is checked (`entry_problem`, then its image) and dropped, counted by reason, when it fails:
the schema (an `id`; an optional relative `image` path; `conversations` a non-empty list of {"from",
"value"} strings alternating human/gpt, human first), the `<image>` placement (exactly one, in the first
turn, when there is an image; none otherwise), the image's folder and file under the data root, optionally
its decoding (`verify_images`: every pixel, once per image, in one process per CPU; the workflow's mixture
rule always does it), and repetition. Past `max_skipped_share` of the entries (0.1% by default)
the build fails with the first offenders. LLaVA-665K is known to miss 355 OCR-VQA images whose downloads
fail: they are counted "missing image" drops (0.05% of it), not a crash.

Repeated ids are not errors: LLaVA's instruction data gives each entry the id of its COCO image, so entries
about one image share it (LLaVA-Instruct-150K holds 157,712 entries over 81,479 images,
https://huggingface.co/datasets/BAAI/DataOptim; https://github.com/PhoenixZ810/MG-LLaVA/issues/1 for the
same ids with different conversations). They are counted (`shared_ids`) and kept; an entry identical to an
earlier one (a source listed twice) is a "duplicate entry" drop.

The Arrow columns are documented in `cumo/data/mixture_store.py`, which also opens the result for training.
"""

import itertools
import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from cumo.data.mixture_store import iter_json_array, write_arrow
from cumo.data.skips import SkipCounter

IMAGE_TOKEN = "<image>"
ROLES = ("human", "gpt")  # LLaVA's speakers, alternating from the human
TEXT_SOURCE = "text"  # the source of a text-only entry
ROWS_PER_BATCH = 10_000  # rows per Arrow record batch, and per round of image verification

# Reasons for a drop, as they appear in the stats.
NOT_AN_OBJECT = "not an object"
BAD_ID = "bad id"
BAD_IMAGE_PATH = "bad image path"
BAD_CONVERSATIONS = "bad conversations"
MISPLACED_IMAGE_TOKEN = "misplaced <image>"
UNKNOWN_IMAGE_ROOT = "unknown image root"
MISSING_IMAGE = "missing image"
UNDECODABLE_IMAGE = "undecodable image"
DUPLICATE_ENTRY = "duplicate entry"


def entry_problem(entry) -> tuple[str, str] | None:
    """What is wrong with an entry apart from its image file, as (reason, detail); None when nothing is."""
    if not isinstance(entry, dict):
        return NOT_AN_OBJECT, f"a JSON {type(entry).__name__}, not an object with id and conversations"
    entry_id = entry.get("id")
    if isinstance(entry_id, bool) or not isinstance(entry_id, str | int) or entry_id == "":
        return BAD_ID, f"id {entry_id!r}: a non-empty string is expected"
    image = entry.get("image")
    if image is not None and (
        not isinstance(image, str) or not image or image.startswith("/") or ".." in image.split("/")
    ):
        return BAD_IMAGE_PATH, f"image {image!r}: one path relative to the data root is expected"
    turns = entry.get("conversations")
    if not isinstance(turns, list) or not turns:
        return BAD_CONVERSATIONS, f"conversations {turns!r:.60}: a non-empty list of turns is expected"
    for number, turn in enumerate(turns):
        if not (
            isinstance(turn, dict)
            and isinstance(turn.get("from"), str)
            and isinstance(turn.get("value"), str)
        ):
            return BAD_CONVERSATIONS, f"turn {number} {turn!r:.60}: {{'from': str, 'value': str}} is expected"
        if turn["from"] != ROLES[number % 2]:
            return BAD_CONVERSATIONS, (
                f"turn {number} is from {turn['from']!r}, {ROLES[number % 2]!r} is expected: turns alternate "
                "human, gpt, human first"
            )
    tokens = {number: turn["value"].count(IMAGE_TOKEN) for number, turn in enumerate(turns)}
    tokens = {number: count for number, count in tokens.items() if count}
    if tokens != ({0: 1} if image is not None else {}):
        expected = (
            "exactly one, in turn 0, for an entry with an image" if image else "none in a text-only entry"
        )
        return MISPLACED_IMAGE_TOKEN, f"{IMAGE_TOKEN} count by turn {tokens}: {expected}"
    return None


def source_of(image: str | None) -> str:
    """The source of an entry: the first folder of its image path (relative to the data root), or "text"."""
    return image.split("/", 1)[0] if image is not None else TEXT_SOURCE


def under_data_root(image: str | None, image_folder: str) -> str | None:
    """An image path of a mixture whose images lie in `image_folder`, made relative to the data root."""
    return f"{image_folder}/{image}" if image is not None and image_folder else image


def image_problem(path: str) -> str | None:
    """Why PIL cannot decode the image file at `path`, or None. The pixels are decoded, as training will
    (cumo.data.dataset loads them): PIL's `verify` reads the header and, for PNG, the checksums only, and a
    JPEG cut at 90% passes it (issue 17)."""
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # PIL signals a bad file with many types (OSError, SyntaxError, ValueError...)
        return f"{type(error).__name__}: {error}"
    return None


class _EntryChecker:
    """Turns entries into rows (the Arrow columns), counting each drop by reason and what each source had."""

    def __init__(self, data_root: Path, image_folder: str, skips: SkipCounter):
        self.data_root, self.image_folder, self.skips = data_root, image_folder, skips
        self.seen_by_source = Counter()
        self.shared_ids = 0
        # Dicts, not sets: the garbage collector leaves alone a dict that holds only strings or ints, but walks
        # every key of a set at each full collection (a 1.65M-entry build took 94 s with sets, 81 s with dicts).
        self._ids: dict[str, None] = {}
        # 64-bit hashes of the entries kept, not the entries: two different entries share one with odds of
        # about 1e-7 at 1.65M entries, and the later would be dropped as a duplicate.
        self._entries: dict[int, None] = {}
        self._roots: dict[str, bool] = {}  # first folder -> whether it exists under the data root

    def row(self, entry, path: Path, index: int) -> dict | None:
        """The entry as a row of the Arrow columns, or None when it is dropped."""
        self.skips.see()
        problem = entry_problem(entry)
        if problem is not None and problem[0] in (NOT_AN_OBJECT, BAD_ID):
            return self._drop(problem, f"#{index}", path, index)
        entry_id = str(entry["id"])
        if problem is not None and problem[0] == BAD_IMAGE_PATH:
            return self._drop(problem, entry_id, path, index)
        image = under_data_root(entry.get("image"), self.image_folder)
        self.seen_by_source[source_of(image)] += 1
        problem = problem or (self._image_file_problem(image) if image is not None else None)
        if problem is not None:
            return self._drop(problem, entry_id, path, index)
        turns = tuple((turn["from"], turn["value"]) for turn in entry["conversations"])
        key = hash((entry_id, image, turns))
        if key in self._entries:
            return self._drop(
                (DUPLICATE_ENTRY, "identical to an earlier entry: is a source listed twice?"),
                entry_id,
                path,
                index,
            )
        self._entries[key] = None
        self.shared_ids += entry_id in self._ids
        self._ids[entry_id] = None
        return {
            "id": entry_id,
            "image": image,
            "conversations": [{"from": speaker, "value": value} for speaker, value in turns],
            "num_words": sum(len(value.split()) for _, value in turns),
            "source": source_of(image),
        }

    def _drop(self, problem: tuple[str, str], label: str, path: Path, index: int) -> None:
        reason, detail = problem
        self.skips.skip(reason, label, f"{detail} [{path.name} entry #{index}]")

    def _image_file_problem(self, image: str) -> tuple[str, str] | None:
        root = source_of(image)
        if root not in self._roots:
            self._roots[root] = (self.data_root / root).is_dir()
        if not self._roots[root]:
            return UNKNOWN_IMAGE_ROOT, (
                f"{self.data_root / root} does not exist: download that source into the data root, or fix "
                "the mixture's image paths"
            )
        if not os.path.isfile(os.path.join(self.data_root, image)):  # not pathlib: 1.65M times
            return MISSING_IMAGE, image
        return None


def _verified(
    batch: list[dict], data_root: Path, pool, verdicts: dict, skips: SkipCounter, bar
) -> list[dict]:
    """The rows of `batch` whose image PIL can verify (or that have none); each image is verified once."""
    new = sorted({row["image"] for row in batch if row["image"] is not None and row["image"] not in verdicts})
    problems = pool.map(image_problem, [str(data_root / image) for image in new], chunksize=16)
    verdicts.update(zip(new, problems, strict=True))
    bar.update(len(new))
    kept = []
    for row in batch:
        problem = verdicts.get(row["image"])
        if problem is None:
            kept.append(row)
        else:
            skips.skip(UNDECODABLE_IMAGE, row["id"], f"{row['image']}: {problem}")
    return kept


def composition(path: Path, image_folder: str = "") -> Counter:
    """Entries per source of a mixture JSON as its image paths say, nothing else checked: a published file's.
    An entry without a string image path counts as text."""
    counts = Counter()
    for entry in iter_json_array(path):
        image = entry.get("image") if isinstance(entry, dict) else None
        counts[source_of(under_data_root(image if isinstance(image, str) else None, image_folder))] += 1
    return counts


def composition_table(seen: Counter, kept: Counter, published: Counter | None) -> dict[str, dict[str, int]]:
    """Per source, most kept first: the entries seen, kept, and (given a reference) in the published mixture."""
    columns = {"seen": seen, "kept": kept} | ({"published": published} if published is not None else {})
    sources = sorted(set().union(*columns.values()), key=lambda source: (-kept[source], source))
    return {source: {name: counts[source] for name, counts in columns.items()} for source in sources}


def build_mixture(
    inputs: list[Path],
    out: Path,
    stats: Path,
    data_root: Path,
    image_folder: str = "",
    reference: Path | None = None,
    verify_images: bool = False,
    max_skipped_share: float = 0.001,
) -> dict:
    """Check every entry of the mixture JSON files `inputs` (one published file, or the per-source
    conversions in order), write the valid ones to the Arrow file `out` and the counts to `stats` (JSON).

    `image_folder`: where the images of the inputs lie, relative to `data_root` ("" for CuMo's pft and sft
    files, "llava/llava_pretrain/images" for the pretrain one); rows carry paths relative to `data_root`.
    `reference`: the published mixture to put the built composition next to. `verify_images`: also decode
    every image with PIL, once each, in one process per CPU. Raises `TooManySkipped`, after writing `stats` and
    leaving no `out`, when more than `max_skipped_share` of the entries are dropped; `MalformedMixture` when
    a file is not a JSON array of entries. Returns the stats."""
    inputs, out, stats, data_root = [Path(p) for p in inputs], Path(out), Path(stats), Path(data_root)
    if not data_root.is_dir():
        raise FileNotFoundError(
            f"data root {data_root} does not exist: set data_root in the config (or $CuMo_DIR) to the folder "
            "that holds the downloaded sources"
        )
    skips = SkipCounter(f"mixture {', '.join(map(str, inputs))}", max_share=max_skipped_share)
    checker = _EntryChecker(data_root, image_folder.strip("/"), skips)
    kept_by_source = Counter()
    verdicts: dict[str, str | None] = {}
    partial = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Fork the verifiers before pyarrow starts its threads: forking a process with running threads can hang.
    pool = multiprocessing.get_context("fork").Pool(len(os.sched_getaffinity(0))) if verify_images else None
    bar = tqdm(desc="verifying images", unit="image", disable=not verify_images)

    def batches() -> Iterator[list[dict]]:
        rows = (
            row
            for path in inputs
            for index, entry in enumerate(iter_json_array(path))
            if (row := checker.row(entry, path, index)) is not None
        )
        while batch := list(itertools.islice(rows, ROWS_PER_BATCH)):
            if pool is not None:
                batch = _verified(batch, data_root, pool, verdicts, skips, bar)
            kept_by_source.update(row["source"] for row in batch)
            yield batch

    try:
        kept = write_arrow(partial, batches())
        published = composition(reference, image_folder) if reference is not None else None
        figures = {
            "inputs": [str(path) for path in inputs],
            "data_root": str(data_root),
            "image_folder": image_folder,
            "verify_images": verify_images,
            "summary": skips.summary(),
            "entries": {"seen": skips.seen, "kept": kept, "shared_ids": checker.shared_ids},
            "skipped": skips.to_dict(),
            "composition": composition_table(checker.seen_by_source, kept_by_source, published),
        }
        stats.parent.mkdir(parents=True, exist_ok=True)
        stats.write_text(json.dumps(figures, indent=2) + "\n")
        skips.check()
        partial.replace(out)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
        partial.unlink(missing_ok=True)
    return figures

"""The two on-disk forms of a mixture: the LLaVA JSON array it comes as, and the Arrow file training reads.

JSON in. A mixture is one JSON array of entries (LLaVA's format; CuMo's cumo_vit_1649K.json is 2.71 GB,
https://huggingface.co/datasets/shi-labs/CuMo_dataset/tree/main). `iter_json_array` hands out one entry at
a time from a window of a few MiB of the file, decoded by the standard library's C scanner
(`json.JSONDecoder.raw_decode`), so a 1.65M-entry file is never held whole as Python objects.

Arrow out. `write_arrow` streams batches of checked entries into one Arrow file (the `datasets` format) and
`open_mixture` memory-maps it: the eight ranks of a node share the file's pages through the OS page cache
instead of each parsing and holding 1.65M entries. Columns, the contract with the training dataset:

    id             string        the entry's id as in the JSON (an integer id is written as a string). Not
                                 unique: LLaVA-665K gives every entry of a COCO image that image's id, across
                                 its sources. The row index is the key.
    image          string|null   image path relative to the data root; null for a text-only entry
    conversations  list of {"from": string, "value": string}
                                 alternating "human"/"gpt" turns, human first; when there is an image, the
                                 first human turn holds the one "<image>" and no other turn has one
    num_words      int32         LLaVA's length estimate: whitespace-split words over all turns, as in
                                 LLaVA's `LazySupervisedDataset.modality_lengths` (the sampler adds its own
                                 +128 for an image and its sign for the modality)
    source         string        the first folder of `image` ("coco", "ocr_vqa", "ALLaVA", ...), "text" for
                                 a text-only entry
"""

import codecs
import io
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
from datasets import Dataset, Features, List, Value
from datasets.arrow_writer import ArrowWriter

FEATURES = Features(
    {
        "id": Value("string"),
        "image": Value("string"),
        "conversations": List({"from": Value("string"), "value": Value("string")}),
        "num_words": Value("int32"),
        "source": Value("string"),
    }
)
CHUNK_CHARS = 1 << 22  # characters read per step: 4 Mi, a few thousand LLaVA entries
# LLaVA entries are a few KiB; a value still undecodable after this many characters is malformed, not long.
MAX_ENTRY_CHARS = 1 << 24
_BLANK = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


class MalformedMixture(ValueError):
    """A mixture file that is not a JSON array of entries; the message names the file, the entry and the fix."""


class _Window:
    """A sliding window on a text file: `text[pos:]` is what has not been consumed yet."""

    def __init__(self, file):
        self.file, self.text, self.pos, self.eof = file, "", 0, False
        self.offset, self.line = 0, 1  # characters and line number of the file at text[0]

    def extend(self) -> None:
        """Drop what was consumed and append the next chunk of the file (sets `eof` at its end)."""
        self.offset += self.pos
        self.line += self.text.count("\n", 0, self.pos)
        chunk = self.file.read(CHUNK_CHARS)
        self.text, self.pos, self.eof = self.text[self.pos :] + chunk, 0, not chunk

    def next_char(self) -> str:
        """Skip blanks; the next character, left unconsumed ("" at the end of the file)."""
        while True:
            self.pos = _BLANK.match(self.text, self.pos).end()
            if self.pos < len(self.text) or self.eof:
                return self.text[self.pos : self.pos + 1]
            self.extend()

    def where(self, pos: int) -> str:
        return f"character {self.offset + pos}, line {self.line + self.text.count(chr(10), 0, pos)}"


def iter_json_array(path: Path) -> Iterator:
    """The entries of the JSON array in `path`, one at a time. Raises `MalformedMixture` (file, entry index,
    position, what is wrong) where the file is not one JSON array, e.g. a truncated download, or holds bytes
    that are not UTF-8."""
    with open(path, encoding="utf-8-sig") as file:  # -sig: a byte-order mark is skipped
        try:
            yield from _entries(file, path)
        except UnicodeDecodeError as error:
            # The text is decoded a chunk ahead of the entries, so the error says neither where nor in which
            # entry: both are found again from the bytes (issue 17).
            offset, line = _first_undecodable(path)
            raise MalformedMixture(
                f"{path}: entry #{_entries_before(path, offset)} holds bytes that are not UTF-8 ({error.reason}) "
                f"at byte {offset}, line {line}: the file is corrupted or in another encoding; download it again"
            ) from None


def _entries(file, path: Path) -> Iterator:
    decoder = json.JSONDecoder()
    window = _Window(file)
    if window.next_char() != "[":
        raise MalformedMixture(
            f"{path}: not a JSON array (starts with {window.text[window.pos : window.pos + 20]!r}); a "
            "mixture is a JSON list of LLaVA entries. Check that the right file was downloaded."
        )
    window.pos += 1
    index, separator = 0, "]" if window.next_char() == "]" else ","
    if separator == "]":
        window.pos += 1
    while separator == ",":
        yield _decode_entry(window, decoder, path, index)
        index += 1
        separator = window.next_char()
        if separator not in (",", "]"):
            raise MalformedMixture(
                f"{path}: expected ',' or ']' after entry #{index - 1}, found {separator or 'the end of the file'!r} "
                f"at {window.where(window.pos)}. A truncated download ends like this: download the file again."
            )
        window.pos += 1
    if window.next_char():
        raise MalformedMixture(f"{path}: text after the closing ']' at {window.where(window.pos)}")


def _first_undecodable(path: Path) -> tuple[int, int]:
    """(byte offset, line) of the first bytes in `path` that are not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            pending = len(decoder.getstate()[0])  # the bytes of a character cut by the previous block
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                at = offset - pending + error.start
                return at, line + block[: max(0, at - offset)].count(b"\n")
            offset += len(block)
            line += block.count(b"\n")
    raise AssertionError(f"{path}: no bytes that are not UTF-8 found again")


class _Prefix(io.RawIOBase):
    """The first `size` bytes of a binary file, as a file."""

    def __init__(self, file, size: int):
        self.file, self.left = file, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.file.read(min(len(buffer), self.left))
        buffer[: len(data)] = data
        self.left -= len(data)
        return len(data)


def _entries_before(path: Path, offset: int) -> int:
    """How many whole entries the file holds before byte `offset`."""
    count = 0
    with open(path, "rb") as file:
        text = io.TextIOWrapper(io.BufferedReader(_Prefix(file, offset)), encoding="utf-8-sig")
        try:
            for _ in _entries(text, path):
                count += 1
        except MalformedMixture:  # the prefix ends inside the entry the bytes are in
            pass
    return count


def _decode_entry(window: _Window, decoder: json.JSONDecoder, path: Path, index: int):
    """Decode the value at the window's position, extending the window until the value is whole."""
    while True:
        window.next_char()
        try:
            entry, end = decoder.raw_decode(window.text, window.pos)
            # A number at the window's edge may go on in the next chunk: decode it again, extended.
            if end < len(window.text) or window.eof:
                window.pos = end
                return entry
        except json.JSONDecodeError as error:
            if window.eof or len(window.text) - window.pos > MAX_ENTRY_CHARS:
                raise MalformedMixture(
                    f"{path}: entry #{index} is not valid JSON: {error.msg.removesuffix(' at')} at "
                    f"{window.where(error.pos)}. "
                    "A truncated or corrupted download ends like this: download the file again."
                ) from None
        window.extend()


def write_arrow(path: Path, batches: Iterable[list[dict]]) -> int:
    """Write batches of rows (dicts of FEATURES' columns) to one Arrow file; the number of rows written."""
    with ArrowWriter(path=str(path), features=FEATURES) as writer:
        for batch in batches:
            writer.write_table(pa.Table.from_pylist(batch, schema=FEATURES.arrow_schema))
        rows, _ = writer.finalize()
    return rows


def open_mixture(path: Path) -> Dataset:
    """The mixture's Arrow file, memory-mapped: rows are read from the page cache, not held per process."""
    dataset = Dataset.from_file(str(path), in_memory=False)
    if dataset.features != FEATURES:
        raise ValueError(
            f"{path}: columns {dataset.features} are not the mixture columns {FEATURES}; it was written by "
            "another version of cumo. Rebuild it with `cumo mixture build`."
        )
    return dataset

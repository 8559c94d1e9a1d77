"""From LLaVA entries to training batches: tokens with label masks, images, the collator, the sampler.

Modelled on LLaVA's llava/train/train.py (`LazySupervisedDataset`, `DataCollatorForSupervisedDataset`) and
llava/train/llava_trainer.py (`LengthGroupedSampler` with `group_by_modality=True`), as CuMo uses them.

An entry is a dict `{"id", "image": str | None, "conversations": [{"from", "value"}, ...], "num_words",
"source"}`: a row of the mixture's Arrow store (a `datasets.Dataset`) or any sequence of such dicts.
A sample is `{"input_ids": (T,), "labels": (T,)}` plus `"pixel_values": (1, 3, S, S)` when it has an image.
Nothing is dropped silently: every entry that cannot become a sample, and every truncation, is counted in
the dataset's `skips` (a `SkipCounter`), logged, and stops the run past the allowed share.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import datasets
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from transformers import PreTrainedTokenizerBase

from cumo.data.conversation import (
    IGNORE_INDEX,
    expand_image_placeholders,
    render_segments,
    separator_in,
    turns_from_llava,
)
from cumo.data.skips import SkipCounter, TooManySkipped

logger = logging.getLogger(__name__)


class Processor(Protocol):
    """What the dataset needs of a processor; the model's `CumoProcessor` is one. Named here rather than
    imported so that the data package does not depend on the model's."""

    tokenizer: PreTrainedTokenizerBase
    image_token: str
    num_image_tokens: int

    def preprocess_images(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> (B, 3, S, S) float32 pixel values."""


class LabelsMisaligned(ValueError):
    """A token of the rendering spans both prompt and answer text, so it has no well-defined label."""


def tokenise(segments: list[tuple[str, bool]], processor: Processor) -> tuple[torch.Tensor, torch.Tensor]:
    """(text, is_target) segments -> `input_ids` (T,) and `labels` (T,): the answer tokens, -100 elsewhere.

    The rendering is tokenised as one string, exactly as `CumoProcessor` tokenises a prompt at evaluation,
    and a token is a target when every character it covers belongs to a target segment. Tokenising segment
    by segment and concatenating (LLaVA's way of counting round lengths) is exact for a word-level tokenizer
    but not for Mistral's sentencepiece-style one: that puts a "▁" in front of the first word of every string
    it is given and merges across a segment boundary, so the concatenation differs from the whole-string
    tokens the model sees at evaluation, and LLaVA's round counts drift (its "tokenization mismatch" warning
    after which the whole sample is silently ignored). Character offsets are exact for any fast tokenizer;
    a token that covers both prompt and answer characters is the one case with no right label, and raises
    `LabelsMisaligned`.
    """
    tokenizer = processor.tokenizer
    texts = [
        expand_image_placeholders(text, processor.image_token, processor.num_image_tokens)
        for text, _ in segments
    ]
    text = "".join(texts)
    is_target_C = torch.cat(
        [
            torch.full((len(piece),), is_target, dtype=torch.bool)
            for piece, (_, is_target) in zip(texts, segments, strict=True)
        ]
    )
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids_T = torch.tensor(encoding["input_ids"], dtype=torch.long)
    offsets_T2 = torch.tensor(encoding["offset_mapping"], dtype=torch.long).reshape(-1, 2)
    # A zero-width token (a prepended "▁") takes the label of the character it stands before.
    starts_T = offsets_T2[:, 0].clamp(max=len(text) - 1)
    ends_T = torch.maximum(offsets_T2[:, 1], starts_T + 1)
    # Target characters per token from a running count: (T,) without a Python loop over tokens.
    targets_before_C = torch.cat([torch.zeros(1, dtype=torch.long), is_target_C.long().cumsum(0)])
    target_chars_T = targets_before_C[ends_T] - targets_before_C[starts_T]
    is_target_T = target_chars_T == ends_T - starts_T
    misaligned_T = (target_chars_T > 0) & ~is_target_T
    if misaligned_T.any():
        position = int(misaligned_T.nonzero()[0])
        start, end = int(starts_T[position]), int(ends_T[position])
        raise LabelsMisaligned(
            f"token {position} {text[start:end]!r} (characters {start}-{end}) covers both prompt and answer "
            f"text: {text[max(0, start - 30) : end + 30]!r}; the tokenizer merges across the template's "
            "prompt/answer boundary"
        )
    labels_T = input_ids_T.masked_fill(~is_target_T, IGNORE_INDEX)
    return input_ids_T, labels_T


class SkipSample(Exception):
    """This entry cannot become a sample; `reason` is what it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class SupervisedDataset(Dataset):
    """LLaVA's lazy supervised dataset: each entry is rendered, tokenised and its image loaded on access.

    An entry that cannot be used (invalid conversation, misaligned labels, unreadable image, no target left
    after truncation) is counted and replaced by the next usable entry, so `__getitem__` always returns a
    valid sample and a rank never crashes on one bad file; the replacement depends on the index only, so a
    resumed run draws the same one. Truncation to `max_length` keeps the sample and is counted under
    "truncated": it counts towards the allowed share too, since a maximum length too short for the data
    cuts answers, which is a configuration to fix rather than a loss to accept silently.

    With DataLoader workers each worker holds its own `skips` and judges its own share (the error reaches
    the main process through the DataLoader); the log lines name every entry skipped.
    """

    def __init__(
        self,
        entries: Sequence[dict],
        processor: Processor,
        template: str,
        image_root: str | Path,
        max_length: int,
        max_share: float = 0.001,
    ):
        if not processor.tokenizer.is_fast:
            raise ValueError(
                "SupervisedDataset needs a fast tokenizer (character offsets align labels with tokens): "
                "load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
            )
        self.entries = entries
        self.processor = processor
        self.template = template
        self.image_root = Path(image_root)
        self.max_length = max_length
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
        self.skips = SkipCounter(
            f"training samples ({template}, max {max_length} tokens)", max_share=max_share
        )
        # Entries found unusable, passed over without counting them again: a walk to a replacement crosses
        # entries an earlier walk judged (5 bad entries were counted 9 times, issue 17). Per process: each
        # DataLoader worker holds its own dataset.
        self._unusable: dict[int, None] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def modality_lengths(self) -> tuple[list[int], list[bool]]:
        """Per entry: its word count and whether it has an image, as LLaVA's `modality_lengths`.

        Read as whole columns from an Arrow store, so no entry is parsed.
        """
        if isinstance(self.entries, datasets.Dataset):
            columns = self.entries.with_format("arrow")
            return columns["num_words"].to_pylist(), columns["image"].is_valid().to_pylist()
        return [entry["num_words"] for entry in self.entries], [
            entry.get("image") is not None for entry in self.entries
        ]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        for offset in range(len(self)):
            position = (index + offset) % len(self)
            if position in self._unusable:
                continue
            entry = self.entries[position]
            self.skips.see()
            try:
                return self._sample(entry)
            except SkipSample as skip:
                self._unusable[position] = None
                self._count(skip.reason, entry.get("id"), skip.detail)
        raise TooManySkipped(f"{self.skips.summary()}: no entry of the dataset can be used")

    def _count(self, reason: str, entry_id, detail: str) -> None:
        self.skips.skip(reason, entry_id, detail)
        logger.warning("entry %s: %s (%s)", entry_id, reason, detail)
        # The share is judged once one skip fits in it: a bad first entry must not stop a run of millions.
        if self.skips.seen * self.skips.max_share >= 1:
            self.skips.check()

    def _sample(self, entry: dict) -> dict[str, torch.Tensor]:
        has_image = entry.get("image") is not None
        try:
            turns = turns_from_llava(entry["conversations"])
            segments = render_segments(self.template, turns, has_image)
        except ValueError as error:
            raise SkipSample("invalid conversation", str(error)) from error
        if separator := separator_in(self.template, turns):
            raise SkipSample(
                "tokenization mismatch",
                f"a message holds the template's separator {separator!r}, where CuMo's preprocess_llama_2 splits "
                "turns: CuMo trains nothing on such a sample (its 'tokenization mismatch ... (ignored)')",
            )
        sample = {"pixel_values": self._load_image(entry["image"])} if has_image else {}
        try:
            input_ids_T, labels_T = tokenise(segments, self.processor)
        except LabelsMisaligned as error:
            raise SkipSample("labels misaligned", str(error)) from error

        length = len(input_ids_T)
        input_ids_T, labels_T = input_ids_T[: self.max_length], labels_T[: self.max_length]
        truncation = f"{length} > {self.max_length} tokens" if length > self.max_length else ""
        if int((input_ids_T == self.image_token_id).sum()) != has_image * self.processor.num_image_tokens:
            raise SkipSample("image cut by truncation", truncation)
        if not (labels_T != IGNORE_INDEX).any():
            answers = "".join(text for text, is_target in segments if is_target)
            raise SkipSample("no target tokens", truncation or f"the answers {answers[:80]!r} make no token")
        if truncation:
            self._count("truncated", entry.get("id"), truncation)
        return {"input_ids": input_ids_T, "labels": labels_T, **sample}

    def _load_image(self, relative_path: str) -> torch.Tensor:
        """The image file under `image_root` -> (1, 3, S, S): padded to a square, CLIP-normalised."""
        path = self.image_root / relative_path
        try:
            with Image.open(path) as image:
                image.load()  # decode now: `open` reads only the header
                return self.processor.preprocess_images([image])
        except (OSError, Image.DecompressionBombError) as error:
            raise SkipSample("unreadable image", f"{path}: {error}") from error


@dataclass
class Collator:
    """Samples -> a right-padded batch: `input_ids`, `labels`, `attention_mask` (B, T), `pixel_values` (I, 3, S, S).

    `pixel_values` holds the batch's images in the order of their placeholders (row-major), the order in
    which the model fills image tokens; a batch without any image has no `pixel_values`, so the model's rule
    "as many images as placeholders" holds for every batch. Under ZeRO-3 every rank must still run the
    vision tower and connector at every step, since their parameters are gathered and their gradients
    reduced collectively: that is the training step's job, not the data's (it runs them on one blank image
    and adds 0 x their output and aux losses to the loss, where LLaVA feeds a zero image per text-only
    sample and keeps `features[0:0]`). The attention mask comes from the lengths, not
    from `input_ids != pad` as in LLaVA, where the pad token is <unk> and a real <unk> would be masked.
    """

    pad_token_id: int

    def __post_init__(self):
        if self.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token: set one (CuMo pads with <unk>: tokenizer.pad_token = tokenizer.unk_token)"
            )

    def __call__(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(len(sample["input_ids"]) for sample in samples)
        input_ids_BT = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)
        labels_BT = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask_BT = torch.zeros((len(samples), width), dtype=torch.long)
        for row, sample in enumerate(samples):
            length = len(sample["input_ids"])
            input_ids_BT[row, :length] = sample["input_ids"]
            labels_BT[row, :length] = sample["labels"]
            attention_mask_BT[row, :length] = 1
        batch = {"input_ids": input_ids_BT, "labels": labels_BT, "attention_mask": attention_mask_BT}
        images = [sample["pixel_values"] for sample in samples if "pixel_values" in sample]
        if images:
            batch["pixel_values"] = torch.cat(images)
        return batch


def _balanced_chunks(megabatch: list[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """Longest first, each index to the chunk with the smallest total length (LLaVA's `split_to_even_chunks`)."""
    size = len(megabatch) // num_chunks
    chunks, totals = [[] for _ in range(num_chunks)], [0] * num_chunks
    for index in sorted(megabatch, key=lambda i: lengths[i], reverse=True):
        lightest = min((c for c in range(num_chunks) if len(chunks[c]) < size), key=lambda c: totals[c])
        chunks[lightest].append(index)
        totals[lightest] += lengths[index]
    return chunks


class ModalityLengthGroupedSampler(Sampler[int]):
    """This rank's indices for an epoch, image and text-only entries batched apart.

    LLaVA's `LengthGroupedSampler` with `group_by_modality=True` (llava/train/llava_trainer.py), per rank.

    Each modality is shuffled and cut into megabatches of `world_size * accumulation_steps * batch_size`,
    one optimiser step of all ranks, so that every micro-batch of a step has one modality; a megabatch is
    dealt, longest first, into micro-batches of balanced total length so that ranks wait little on each
    other. Megabatches are shuffled across modalities. The two modalities' partial last megabatches make one
    mixed megabatch in front (when they fill one, as LLaVA) and a tail at the end; micro-batch `j` of a
    megabatch goes to rank `j % world_size` (accelerate's order). The tail is dealt round-robin and padded
    with repeats of its own indices, as `DistributedSampler` pads, so every rank runs the same number of
    steps. Deterministic in (`seed`, epoch): every rank computes the same order and takes its share.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        has_image: Sequence[bool],
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        accumulation_steps: int = 1,
        seed: int = 0,
    ):
        if len(lengths) != len(has_image) or not lengths:
            raise ValueError(
                f"need one length and one modality per entry, got {len(lengths)} and {len(has_image)}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is outside world_size={world_size}")
        self.lengths, self.has_image = list(lengths), [bool(has) for has in has_image]
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.num_chunks = world_size * accumulation_steps  # micro-batches per optimiser step, all ranks
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        megabatch_size = self.num_chunks * self.batch_size
        images = sum(self.has_image)
        leftovers = images % megabatch_size + (len(self.has_image) - images) % megabatch_size
        tail = leftovers % megabatch_size  # leftovers < 2 megabatches: a full one of them goes in front
        return (len(self.has_image) - tail) // self.world_size + -(-tail // self.world_size)

    def __iter__(self):
        megabatches, tail = self._epoch()
        for megabatch in megabatches:
            chunks = [megabatch[j : j + self.batch_size] for j in range(0, len(megabatch), self.batch_size)]
            yield from (index for chunk in chunks[self.rank :: self.world_size] for index in chunk)
        if tail:
            padded = [tail[i % len(tail)] for i in range(-(-len(tail) // self.world_size) * self.world_size)]
            yield from padded[self.rank :: self.world_size]

    def _epoch(self) -> tuple[list[list[int]], list[int]]:
        """Full megabatches (flat lists of micro-batches, all ranks) in epoch order, and the tail."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)  # as DistributedSampler
        megabatch_size = self.num_chunks * self.batch_size
        megabatches, leftovers = [], []
        for modality in (True, False):
            indices = [i for i, has in enumerate(self.has_image) if has == modality]
            shuffled = [indices[j] for j in torch.randperm(len(indices), generator=generator)]
            for start in range(0, len(shuffled), megabatch_size):
                megabatch = shuffled[start : start + megabatch_size]
                if len(megabatch) < megabatch_size:
                    leftovers += megabatch
                else:
                    chunks = _balanced_chunks(megabatch, self.lengths, self.num_chunks)
                    megabatches.append([index for chunk in chunks for index in chunk])
        megabatches = [megabatches[j] for j in torch.randperm(len(megabatches), generator=generator)]
        if len(leftovers) >= megabatch_size:
            megabatches.insert(0, leftovers[:megabatch_size])
            leftovers = leftovers[megabatch_size:]
        return megabatches, leftovers

"""Tiny models (seeded, fp32 or fp64) and batches whose prompts carry image tokens."""

import torch

import cumo.model  # noqa: F401  (registers the Auto classes)
from cumo.model.modeling_cumo import CumoForConditionalGeneration
from cumo.model.presets import build_config


def make_model(preset: str = "tiny", moe: bool = True, dtype=torch.float32, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = CumoForConditionalGeneration(build_config(preset, moe=moe, **overrides)).to(dtype).eval()
    if dtype == torch.float64:
        model.set_experts_implementation("eager")  # Mixtral's default grouped-mm experts take no float64
    return model


def make_batch(config, prompt_lengths=(30, 30), images=(True, True), dtype=torch.float32, seed: int = 1):
    """Right-aligned (left-padded) random prompts; an image's tokens start at position 3 of its prompt."""
    generator = torch.Generator().manual_seed(seed)
    width = max(prompt_lengths)
    input_ids = torch.full((len(prompt_lengths), width), config.text_config.pad_token_id)
    attention_mask = torch.zeros_like(input_ids)
    for row, (length, has_image) in enumerate(zip(prompt_lengths, images, strict=True)):
        ids = torch.randint(10, config.text_config.vocab_size, (length,), generator=generator)
        if has_image:
            ids[3 : 3 + config.num_image_tokens] = config.image_token_id
        input_ids[row, width - length :] = ids
        attention_mask[row, width - length :] = 1
    size = config.vision_config.image_size
    pixel_values = torch.randn(sum(images), 3, size, size, generator=generator, dtype=dtype)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    return batch | {"pixel_values": pixel_values} if any(images) else batch


def world_with_mixtures(root, sizes: dict[str, int]):
    """The shapes world (`sizes` entries per stage) under `root`, each stage's Arrow mixture next to its JSON."""
    from cumo.data.mixture import build_mixture
    from cumo.data.synthetic import write_world

    paths = write_world(root, sizes=sizes)
    for stage in sizes:
        build_mixture([paths[stage]], root / f"{stage}.arrow", root / f"{stage}.stats.json", root)
    return root


def write_lock(path, pid: int, **fields) -> None:
    """The lock file (cumo/writer_lock.py) that process `pid` on this host holds; `fields` replace its own."""
    import json
    import socket

    from cumo.writer_lock import _process_start

    path.parent.mkdir(parents=True, exist_ok=True)
    holder = {
        "host": socket.gethostname(),
        "pid": pid,
        "process_start": _process_start(pid),
        "job": None,
        "started": "2026-01-01T00:00:00+00:00",
    }
    path.write_text(json.dumps(holder | fields))

"""`python -m cumo.bench train-step`: one sft optimiser step of the tiny and a mid-size model, MoE and dense."""

import statistics
from functools import partial

import torch

from cumo.bench.timing import DTYPES, machine, time_interleaved

# The mid-size model: CuMo's CLIP-L tower with its MoE MLPs (presets.CLIP_VIT_L_14_336) in front of a small
# LLM, so the vision side costs what it costs in the paper. On a CPU the image is smaller (--image-size).
MID_TEXT = dict(
    vocab_size=32000,
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=4096,
    sliding_window=None,
)
# Dense bf16 peak of the GPUs the paper's runs use, for MFU (NVIDIA's data sheets; H200 = H100 SXM compute).
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def train_step_config(model: str, moe: bool, image_size: int | None):
    from transformers import CLIPVisionConfig, MistralConfig

    from cumo.model.configuration_cumo import CumoConfig
    from cumo.model.presets import CLIP_VIT_L_14_336, TINY_TEXT, TINY_VISION, build_config

    if model == "tiny":
        vision = dict(TINY_VISION)
        text = dict(TINY_TEXT)
    elif model == "mid":
        vision = dict(CLIP_VIT_L_14_336)
        text = dict(TINY_TEXT, **MID_TEXT)
    else:
        raise ValueError(f"train-step models are tiny and mid, got {model!r}")
    if image_size:
        vision["image_size"] = image_size
    config = build_config("tiny", moe=moe)  # the tiny preset's image token and template
    return CumoConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=MistralConfig(**text),
        projector_type=config.projector_type,
        clip_moe=moe,
        image_token_id=config.image_token_id,
    )


def activated_parameters(model) -> tuple[int, int]:
    """(vision, LLM + connector) parameters one token goes through: a top-k-of-E expert block counts k/E."""
    from cumo.model.moe import SparseMoeBlock

    expert_share = {}
    for module in model.modules():
        if isinstance(module, SparseMoeBlock):
            for parameter in module.experts.parameters():
                expert_share[id(parameter)] = module.top_k / module.num_experts
    vision = text = 0
    for name, parameter in model.named_parameters():
        count = parameter.numel() * expert_share.get(id(parameter), 1.0)
        if ".vision_tower." in f".{name}":
            vision += count
        else:
            text += count
    return int(vision), int(text)


def time_train_steps(config, batch_sizes, text_tokens, repeats, dtype, device) -> tuple[dict, dict]:
    """Per batch size: milliseconds of one optimiser step, and the step's FLOPs (6 per activated parameter
    and token, forward + backward: Kaplan et al. 2020, section 2.1)."""
    from cumo.data.conversation import IGNORE_INDEX
    from cumo.model.modeling_cumo import CumoForConditionalGeneration

    torch.manual_seed(0)
    model = CumoForConditionalGeneration(config).to(device, DTYPES[dtype]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    vision_params, text_params = activated_parameters(model)
    grid = config.vision_config.image_size // config.vision_config.patch_size
    vision_tokens = sum(s * s for s in config.scales) * (grid * grid + 1)  # S²: scale x scale crops each
    length = config.num_image_tokens + text_tokens
    side = config.vision_config.image_size

    def step(batch):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    steps, flops = {}, {}
    for batch_size in batch_sizes:
        generator = torch.Generator().manual_seed(batch_size)
        input_ids_BT = torch.randint(
            10, config.text_config.vocab_size, (batch_size, length), generator=generator
        )
        input_ids_BT[:, 1 : 1 + config.num_image_tokens] = config.image_token_id
        batch = {
            "input_ids": input_ids_BT.to(device),
            "attention_mask": torch.ones_like(input_ids_BT).to(device),
            "labels": input_ids_BT.masked_fill(input_ids_BT == config.image_token_id, IGNORE_INDEX).to(
                device
            ),
            "pixel_values": torch.randn(batch_size, 3, side, side, generator=generator).to(
                device, DTYPES[dtype]
            ),
        }
        steps[batch_size] = partial(step, batch)
        flops[batch_size] = 6 * batch_size * (vision_params * vision_tokens + text_params * length)
    times = time_interleaved(steps, repeats=repeats, warmup=1, device=device)
    shape = {
        "image_size": side,
        "llm_tokens_per_sample": length,
        "vision_tokens_per_sample": vision_tokens,
        "activated_parameters": {"vision": vision_params, "llm_and_connector": text_params},
    }
    return {b: statistics.median(ms) for b, ms in times.items()}, flops, shape


def bench_train_step(
    models: tuple[str, ...] = ("tiny", "mid"),
    batch_sizes: tuple[int, ...] = (1, 4),
    text_tokens: int = 64,
    image_size: int | None = None,
    repeats: int = 2,
    dtype: str = "float32",
    device: str = "cpu",
) -> dict:
    """Samples/s and tokens/s of one sft step (MoE) and of the dense step, per model and batch size."""
    device = torch.device(device)
    host = machine(device)
    peak = next((flops for gpu, flops in PEAK_BF16_FLOPS.items() if gpu in host["device"]), None)
    figures = {"machine": host, "dtype": dtype, "text_tokens": text_tokens, "models": {}}
    for name in models:
        # One model at a time, not interleaved: the mid-size MoE and dense models with their AdamW states do
        # not fit together in a 24 GB machine (tried: killed for memory).
        for moe in (True, False):
            config = train_step_config(name, moe, image_size if name == "mid" else None)
            ms, flops, shape = time_train_steps(config, batch_sizes, text_tokens, repeats, dtype, device)
            rows = {}
            for batch_size in batch_sizes:
                seconds = ms[batch_size] / 1000
                rows[str(batch_size)] = {
                    "ms": ms[batch_size],
                    "samples_per_s": batch_size / seconds,
                    "tokens_per_s": batch_size * shape["llm_tokens_per_sample"] / seconds,
                    "tflops": flops[batch_size] / seconds / 1e12,
                }
                if device.type == "cuda" and peak and dtype == "bfloat16":
                    rows[str(batch_size)]["mfu"] = flops[batch_size] / seconds / peak
            figures["models"][name if moe else f"{name} dense"] = shape | {"batches": rows}
    return figures


def print_train_step(figures: dict) -> None:
    host = figures["machine"]
    print(
        f"sft step (forward with aux losses, backward, AdamW), {figures['dtype']}; {host['device']}, {host['torch_threads']} threads"
    )
    print(
        f"  {'model':<12}{'image':>6}{'batch':>6}{'ms':>10}{'samples/s':>11}{'tokens/s':>10}{'TFLOP/s':>9}{'MFU':>7}"
    )
    for name, model in figures["models"].items():
        for batch_size, row in model["batches"].items():
            mfu = f"{row['mfu']:.1%}" if "mfu" in row else "-"
            print(
                f"  {name:<12}{model['image_size']:>6}{batch_size:>6}{row['ms']:>10.0f}{row['samples_per_s']:>11.2f}"
                f"{row['tokens_per_s']:>10.0f}{row['tflops']:>9.3f}{mfu:>7}"
            )


def train_step(args) -> dict:
    figures = bench_train_step(
        tuple(args.models),
        tuple(args.batch_sizes),
        image_size=args.image_size or (336 if args.device == "cuda" else 112),
        repeats=args.repeats,
        dtype=args.dtype,
        device=args.device,
    )
    print_train_step(figures)
    return figures

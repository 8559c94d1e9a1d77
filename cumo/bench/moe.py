"""`python -m cumo.bench moe`: forward + backward of the sorted MoE block against CuMo's loop and the ideal."""

import statistics

import torch

from cumo.bench.timing import DTYPES, machine, time_interleaved
from cumo.model.moe import MLP, SparseMoeBlock, reference_forward

# What the sorted block is for: well ahead of CuMo's loop, and close to the dense work it cannot avoid.
LOOP_SPEEDUP_TARGET = 2.0  # loop / sorted, at least
IDEAL_OVERHEAD_TARGET = 1.15  # sorted / ideal, at most


def bench_moe(
    images: int = 4,
    tokens: int = 577,
    dim: int = 1024,
    hidden: int = 4096,
    num_experts: int = 4,
    top_k: int = 2,
    repeats: int = 10,
    warmup: int = 2,
    dtype: str = "float32",
    device: str = "cpu",
) -> dict:
    """Forward + backward of a top-k MoE MLP at CLIP ViT-L's shape (4 images of 577 tokens, 1024 -> 4096 ->
    1024, top-2 of 4 experts): the sorted `SparseMoeBlock`, CuMo's loop (`reference_forward`) on the same
    block, and the ideal, one dense MLP over top_k times the tokens. Targets: loop/sorted >= 2,
    sorted/ideal <= 1.15."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: torch sees no CUDA device here; use --device cpu")
    torch.manual_seed(0)
    block = SparseMoeBlock(dim, hidden, dim, num_experts, top_k, "quick_gelu").to(device, DTYPES[dtype])
    dense = MLP(dim, hidden, dim, "quick_gelu").to(device, DTYPES[dtype])
    # Inputs need their gradient too: inside CLIP the block's input comes from the layer below.
    states_RND = torch.randn(images, tokens, dim, device=device, dtype=DTYPES[dtype], requires_grad=True)
    states_TD = torch.randn(
        images * tokens * top_k, dim, device=device, dtype=DTYPES[dtype], requires_grad=True
    )
    grad_RND = torch.randn_like(states_RND)

    def step(module, inputs, forward):
        def run():
            module.zero_grad(set_to_none=True)
            inputs.grad = None
            output = forward(inputs)
            output.backward(grad_RND.view(output.shape))

        return run

    steps = {
        "loop": step(block, states_RND, lambda x: reference_forward(block, x)),
        "sorted": step(block, states_RND, lambda x: block(x)[0]),
        "ideal": step(dense, states_TD, lambda x: dense(x).view(-1, top_k, dim).sum(dim=1)),
    }
    times = time_interleaved(steps, repeats, warmup, device)
    median_ms = {name: statistics.median(samples) for name, samples in times.items()}
    return {
        "benchmark": "moe",
        "shape": dict(
            images=images, tokens=tokens, dim=dim, hidden=hidden, num_experts=num_experts, top_k=top_k
        ),
        "dtype": dtype,
        "repeats": repeats,
        "machine": machine(device),
        "median_ms": median_ms,
        "times_ms": times,
        "loop/sorted": median_ms["loop"] / median_ms["sorted"],
        "sorted/ideal": median_ms["sorted"] / median_ms["ideal"],
    }


def print_moe(figures: dict) -> None:
    shape, host = figures["shape"], figures["machine"]
    print(
        f"moe forward+backward: {shape['images']} x {shape['tokens']} tokens, {shape['dim']} -> "
        f"{shape['hidden']} -> {shape['dim']}, top-{shape['top_k']} of {shape['num_experts']}, "
        f"{figures['dtype']}, median of {figures['repeats']}"
    )
    print(f"{host['device']}, {host['torch_threads']} torch threads, torch {host['torch']}")
    for name, ms in figures["median_ms"].items():
        print(f"  {name:<8}{ms:>10.1f} ms")
    for ratio, target, met in (
        ("loop/sorted", f">= {LOOP_SPEEDUP_TARGET}", figures["loop/sorted"] >= LOOP_SPEEDUP_TARGET),
        ("sorted/ideal", f"<= {IDEAL_OVERHEAD_TARGET}", figures["sorted/ideal"] <= IDEAL_OVERHEAD_TARGET),
    ):
        print(f"  {ratio:<13}{figures[ratio]:>6.2f}x  target {target}: {'met' if met else 'MISSED'}")


def moe(args) -> dict:
    figures = bench_moe(
        images=args.images, tokens=args.tokens, repeats=args.repeats, dtype=args.dtype, device=args.device
    )
    print_moe(figures)
    return figures

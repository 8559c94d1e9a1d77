"""A deterministic toy DeepSpeed run checkpointing with `cumo.train.checkpoint`, for test_checkpoint.py.

Run with `torchrun --nproc_per_node 2` and DS_ACCELERATOR=cpu. A small MLP with dropout trains on a fixed
data set; the order of the data comes from a seeded generator kept in client_state, and each rank draws
noise from Python's, NumPy's and torch's generators (seeded per rank), so a resume reproduces the run only
if weights, optimizer, LR schedule, data position and every rank's RNG come back. It saves every
`--save-every` steps and, on an agreed preemption, at that step before exiting with EXIT_PREEMPTED.
Failures are injected on one rank: `--crash-after STEP` (os._exit, as a kill) and `--sigterm-at STEP`
(a real SIGTERM to itself in the middle of the step), and on rank 0 `--kill-launcher-at STEP` (SIGKILL to
torchrun, its parent); from outside, `--wait-for-signal-at STEP` (rank 0 writes `<checkpoints>.waiting` in that
step and waits there for a SIGTERM, so a test can signal the job mid-run). At the end rank 0 writes `--result`: the full
weights, the mean loss and learning rate of every step, from client_state (so including steps trained
before a resume), and the step it resumed from. Ranks end as `cumo train`'s do (`trainer.exit_rank`).
"""

import argparse
import os
import random
import signal
import time
from pathlib import Path

import deepspeed
import numpy as np
import torch

from cumo.train.checkpoint import EXIT_PREEMPTED, Preemption, load, save
from cumo.train.trainer import exit_rank

FAILING_RANK = 1


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoints", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--zero", type=int, choices=(2, 3), required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--save-every", type=int, default=2)
    parser.add_argument("--keep", type=int, default=2)
    parser.add_argument("--crash-after", type=int, help="rank 1 exits abruptly right after this step")
    parser.add_argument("--sigterm-at", type=int, help="rank 1 sends itself SIGTERM during this step")
    parser.add_argument("--kill-launcher-at", type=int, help="rank 0 SIGKILLs torchrun during this step")
    parser.add_argument("--wait-for-signal-at", type=int, help="rank 0 waits for a SIGTERM in this step")
    return parser.parse_args()


def wait_for_signal(preemption: Preemption, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not preemption.requested and time.monotonic() < deadline:
        time.sleep(0.01)


def main() -> int:
    """Train, and return the rank's exit code."""
    args = parse_args()
    preemption = Preemption()
    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()

    torch.manual_seed(0)  # the same initial weights on every rank
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 1)
    )
    inputs = torch.randn(64, 8)  # (N, 8)
    targets = inputs.sum(dim=1, keepdim=True).sin()  # (N, 1)
    random.seed(100 + rank)
    np.random.seed(200 + rank)
    torch.manual_seed(300 + rank)

    config = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.01, "torch_adam": True}},
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_min_lr": 1e-3,
                "warmup_max_lr": 1e-2,
                "warmup_num_steps": 3,
                "total_num_steps": args.steps,
            },
        },
        "zero_optimization": {"stage": args.zero},
    }
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)

    data_order = torch.Generator().manual_seed(1)
    client_state = load(engine, args.checkpoints) or {"step": 0, "losses": [], "lrs": []}
    resumed_from = client_state["step"]
    if resumed_from:
        data_order.set_state(client_state["data_order"])
    losses, lrs = client_state["losses"], client_state["lrs"]

    for step in range(client_state["step"] + 1, args.steps + 1):
        # global batch of 8 drawn by the shared generator, 4 per rank
        index = torch.randperm(len(inputs), generator=data_order)[:8].view(2, 4)[rank]
        noise = torch.from_numpy(np.random.normal(0, 0.01, (4, 1))).float() * random.uniform(0.5, 1.5)
        loss = torch.nn.functional.mse_loss(engine(inputs[index]), targets[index] + noise)
        if rank == FAILING_RANK and step == args.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if rank == 0 and step == args.kill_launcher_at:
            os.kill(os.getppid(), signal.SIGKILL)
            # Until the kernel's SIGTERM is here (it comes as torchrun's death is processed), so the ranks agree
            # at the end of this step, not a later one.
            wait_for_signal(preemption)
        if rank == 0 and step == args.wait_for_signal_at:
            Path(f"{args.checkpoints}.waiting").write_text(str(step))
            wait_for_signal(preemption)
        engine.backward(loss)
        engine.step()
        lrs.append(engine.get_lr()[0])  # after the step: the scheduler warns before its first step
        mean_loss = loss.detach().clone()  # client_state is rank 0's: keep what every rank agrees on
        torch.distributed.all_reduce(mean_loss)
        losses.append(mean_loss.item() / torch.distributed.get_world_size())
        if rank == FAILING_RANK and step == args.crash_after:
            os._exit(1)

        preempted = preemption.agree()
        if step % args.save_every == 0 or preempted:
            state = {"data_order": data_order.get_state(), "losses": losses, "lrs": lrs}
            save(engine, args.checkpoints, step, state, keep=args.keep)
        if preempted:
            return EXIT_PREEMPTED

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=args.zero == 3):
        weights = {name: value.detach().clone() for name, value in engine.module.named_parameters()}
    if rank == 0:
        torch.save(
            {"weights": weights, "losses": losses, "lrs": lrs, "resumed_from": resumed_from}, args.result
        )
    torch.distributed.barrier()  # rank 0's result is written before any rank ends
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_rank(main())

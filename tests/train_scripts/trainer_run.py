"""Run `cumo.train.trainer.train` in a launched process: `trainer_run.py KEY=JSON...` are its keyword arguments.

`stage` may be a stage name or a dict of StageConfig fields. With `bias_router_on_rank=R`, rank R's
connector router is pushed away from its last expert, so that rank's batches send it no token while the
other ranks' do (the no-hang test); the tokens each expert got on each rank are written to
`checkpoint_dir/expert-load-rank<r>.json`. With `preempt_at_step=K`, every rank acts as if SIGTERM had
arrived during step K (the preemption path, without the timing of a real signal).
"""

import json
import logging
import sys

import torch.distributed as dist

from cumo.train import checkpoint, trainer
from cumo.train.stages import StageConfig


def bias_router(rank_to_bias: int, record_dir: str):
    """Wrap `build_model` so that rank `rank_to_bias` routes no connector token to the last expert."""
    build_model = trainer.build_model

    def biased(*args, **kwargs):
        model = build_model(*args, **kwargs)
        projector = model.model.mm_projector
        rank, loads = dist.get_rank(), []

        def push_away(module, inputs, logits_RNE):
            if rank == rank_to_bias:
                logits_RNE = logits_RNE.clone()
                logits_RNE[..., -1] -= 1e4
            return logits_RNE

        def record(module, inputs, output):
            loads.append(output[1].tokens_per_expert_E.tolist())
            with open(f"{record_dir}/expert-load-rank{rank}.json", "w") as file:
                json.dump(loads, file)

        projector.router.register_forward_hook(push_away)
        projector.register_forward_hook(record)
        return model

    trainer.build_model = biased


def preempt_at(step: int) -> None:
    """Make `Preemption.agree()`, which the trainer calls once per step, say yes at `step`."""

    class PreemptedAt(checkpoint.Preemption):
        calls = 0

        def agree(self) -> bool:
            self.calls += 1
            return self.calls == step or super().agree()

    checkpoint.Preemption = PreemptedAt


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    kwargs = {key: json.loads(value) for key, value in (arg.split("=", 1) for arg in sys.argv[1:])}
    if isinstance(kwargs.get("stage"), dict):
        kwargs["stage"] = StageConfig(**{**kwargs["stage"], "trainable": tuple(kwargs["stage"]["trainable"])})
    if "bias_router_on_rank" in kwargs:
        bias_router(kwargs.pop("bias_router_on_rank"), kwargs["checkpoint_dir"])
    if "preempt_at_step" in kwargs:
        preempt_at(kwargs.pop("preempt_at_step"))
    trainer.train(**kwargs)
    trainer.exit_rank(0)  # as `cumo train` ends


if __name__ == "__main__":
    main()

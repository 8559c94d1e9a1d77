"""`train`: one stage of CuMo with DeepSpeed, resumable, logged, exported as a transformers model directory.

A plain loop over a DataLoader rather than transformers' Trainer, because resuming exactly is simpler when
the loop owns the data order: an epoch's micro-batches are a list of index lists, computed from the seed
(`ModalityLengthGroupedSampler` per rank, or a seeded `DistributedSampler`), so a resumed run slices the
list at the step it stopped at and loads none of the skipped samples; Trainer re-reads (or "skips") them
through its DataLoader and splits resume logic between itself, accelerate and DeepSpeed. The loop is
CuMo's recipe as Trainer runs it (cumo/train/train.py, llava_trainer.py): AdamW and a cosine schedule with
linear warm-up (DeepSpeed's own optimizer and `WarmupCosineLR` where the config names them, as Trainer
then uses them: zero3_offload.json), gradient accumulation by DeepSpeed (`engine.backward` / `engine.step`
every micro-batch, the optimiser step at the accumulation boundary).

Per optimiser step, rank 0 appends a line to `metrics.jsonl` (losses averaged over the step's micro-batches
and ranks, learning rate, gradient norm, tokens/s, tokens per expert per MoE layer summed over ranks) and
moves a tqdm bar with ETA. Every `save_every` steps, at the last step and when a rank gets SIGTERM, every
rank saves through `cumo.train.checkpoint` (weights, optimizer, scheduler, RNG, position in the data,
metrics); after a preemption save the process exits with `EXIT_PREEMPTED`. At the end rank 0 exports the
model (safetensors), its processor (tokenizer) and the metrics into `output_dir` and marks it finished
with the metadata last (`checkpoint.mark_finished`); a rerun of a finished stage returns at once.

Text-only batches under ZeRO-3: a rank whose micro-batch has no image would skip the vision tower and
connector, whose parameters every rank gathers and whose gradients every rank reduces together, and the
ranks would wait on each other for ever. So such a micro-batch also runs one blank image through them, in
the model's own forward and at the place of real images, and adds 0 x (its features and aux losses) to the
loss: the same modules in the same order on every rank, which ZeRO-3's prefetching needs too, and no change
to the gradient (LLaVA feeds a zero image per text-only sample for the same reason).
"""

import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from cumo.data.dataset import Collator, ModalityLengthGroupedSampler, SupervisedDataset
from cumo.data.mixture import build_mixture
from cumo.data.mixture_store import open_mixture
from cumo.data.skips import SkipCounter
from cumo.model.weights import Partitioning, save_sharded
from cumo.provenance import git_commit, package_versions, sha256_file
from cumo.train import checkpoint
from cumo.train.batching import plan_batch
from cumo.train.deepspeed_config import ADAM_BETAS, ADAM_EPSILON, fill_deepspeed_config, upstream_config
from cumo.train.launch import init_process_env, write_exit_code
from cumo.train.memory import PhaseMemory
from cumo.train.stages import (
    StageConfig,
    build_model,
    parameter_groups,
    require_previous,
    stage_config,
    stage_start,
)
from cumo.writer_lock import WRITER_LOCK, WriterLock

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
DEPRECATED_COLLECTIVES = r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated"
GRAD_CLIP = 1.0  # transformers' TrainingArguments.max_grad_norm, used where a config says "auto"
# Scalar loss terms of CumoOutput that are logged; each only where the model has that MoE.
LOSS_TERMS = (
    "lm_loss",
    "clip_balance_loss",
    "clip_router_z_loss",
    "mlp_balance_loss",
    "mlp_router_z_loss",
    "llm_aux_loss",
)


def train(
    stage: str | StageConfig,
    preset: str,
    data: str | Path,
    output_dir: str | Path,
    checkpoint_dir: str | Path,
    *,
    data_root: str | Path,
    previous_output_dir: str | Path | None = None,
    save_every: int = 500,
    keep: int = 2,
    num_workers: int = 4,
    max_shard_bytes: int = 5 * 10**9,
    sources: dict[str, str] | None = None,
) -> Path:
    """Train `stage` (a name, for the preset's recipe, or a StageConfig) and export it into `output_dir`.

    `data`: the stage's mixture, an Arrow file from `cumo mixture` or a mixture JSON (validated into
    `checkpoint_dir/mixture.arrow` first, so its image paths must be relative to `data_root`; build other
    layouts with `cumo mixture --image-folder`). `previous_output_dir`:
    the finished output of the stage before (pft, sft). `checkpoint_dir`: resumable state, resumed from when
    it holds a complete checkpoint. `max_shard_bytes`: the largest safetensors shard of the export. `sources`:
    see `stages.stage_start`. Run under a launcher that sets
    RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (torchrun, deepspeed, srun via launch.py).
    Returns `output_dir`.
    """
    stage = stage_config(stage, preset) if isinstance(stage, str) else stage
    output_dir, checkpoint_dir = Path(output_dir), Path(checkpoint_dir)
    if checkpoint.is_finished(output_dir):
        logger.info(f"{output_dir} holds the finished {stage.name} stage; not training it again")
        return output_dir
    require_previous(stage.name, previous_output_dir, preset)  # before any process group or model exists
    # A task of `cumo launch --nodes N` (srun) has Slurm's variables only; without torch.distributed's,
    # DeepSpeed falls back to MPI discovery and stops on a missing mpi4py (tests/test_slurm_nodes.py).
    rank, _, _ = init_process_env(os.environ)
    # One job at a time trains into checkpoint_dir (issue 18: after a lost Snakemake, a rerun submitted a second
    # job while the first still trained there). Rank 0 holds the lock for every rank, from before the process
    # group exists (a second job stops before loading anything) until its last save or the export is done.
    lock = WriterLock(checkpoint_dir / WRITER_LOCK, f"the checkpoints in {checkpoint_dir}")
    with lock if rank == 0 else contextlib.nullcontext():
        return _train(
            stage,
            preset,
            Path(data),
            output_dir,
            checkpoint_dir,
            data_root=data_root,
            previous_output_dir=previous_output_dir,
            save_every=save_every,
            keep=keep,
            num_workers=num_workers,
            max_shard_bytes=max_shard_bytes,
            sources=sources,
        )


def _train(
    stage: StageConfig,
    preset: str,
    data: Path,
    output_dir: Path,
    checkpoint_dir: Path,
    *,
    data_root: str | Path,
    previous_output_dir: str | Path | None,
    save_every: int,
    keep: int,
    num_workers: int,
    max_shard_bytes: int,
    sources: dict[str, str] | None,
) -> Path:
    """`train` under the writer lock."""
    started = time.monotonic()

    import deepspeed  # deferred: importing DeepSpeed takes seconds, and a finished stage needs none of it
    from deepspeed.accelerator import get_accelerator

    # ZeRO-3 calls torch's deprecated collectives on every step, and something in the step resets the
    # warnings registry, so "once per location" printed the warning 21,000 times in one 124-step tiny pft
    # log (5 MB). It is DeepSpeed's to fix, not the user's: ignored, by message, so no other warning is.
    warnings.filterwarnings("ignore", message=DEPRECATED_COLLECTIVES, category=FutureWarning)

    device = get_accelerator().device_name()  # "cuda", or "cpu" with DS_ACCELERATOR=cpu (tiny preset)
    # The CPU accelerator's own backend is oneCCL, which is not installed with torch; gloo is.
    deepspeed.init_distributed(
        dist_backend="gloo" if device == "cpu" else get_accelerator().communication_backend_name()
    )
    rank, world_size = dist.get_rank(), dist.get_world_size()
    memory = PhaseMemory(rank, world_size)  # its baseline: the imports and the process group, no model yet
    preemption = checkpoint.Preemption()

    start = stage_start(stage, previous_output_dir, preset, sources)
    processor = start.processor
    arrow = _arrow_mixture(Path(data), Path(data_root), checkpoint_dir, rank)
    dataset = SupervisedDataset(open_mixture(arrow), processor, stage.template, data_root, stage.max_length)
    collator = Collator(processor.tokenizer.pad_token_id)

    plan = plan_batch(stage.global_batch_size, stage.micro_batch_size, world_size)
    epoch_batches = _epoch_batches_fn(stage, dataset, plan.accumulation, world_size, rank)
    steps_per_epoch = len(epoch_batches(0)) // plan.accumulation
    if steps_per_epoch == 0:
        raise ValueError(
            f"{data} holds {len(dataset)} entries, fewer than one step of the global batch "
            f"{stage.global_batch_size}: use a larger mixture or a smaller global_batch_size"
        )
    total_steps = steps_per_epoch * stage.epochs
    warmup_steps = math.ceil(stage.warmup_ratio * total_steps)  # as transformers' get_warmup_steps

    config_path = upstream_config(stage.zero)
    ds_config = fill_deepspeed_config(
        config_path,
        batch=plan,
        lr=stage.learning_rate,
        weight_decay=stage.weight_decay,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        bf16=device != "cpu",
        grad_clip=GRAD_CLIP,
        hidden_size=start.config.text_config.hidden_size,
        device=device,
    )
    ds_config["steps_per_print"] = 10**9  # the progress bar and metrics.jsonl say it already
    # CuMo trains in bf16 on GPUs; the CPU runs (tiny preset) in fp32, so that a resume repeats a run exactly.
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    partitioning = _partitioning(ds_config, dtype, rank)
    torch.manual_seed(stage.seed)  # every rank draws the same fresh weights (routers, a random start)
    model = build_model(start, stage, dtype, partitioning)
    memory.params = sum(partitioning.numel(parameter) for parameter in model.parameters())
    memory.end("setup")
    memory.start()  # the engine's gradient and optimizer partitions belong to stepping: the first step's phase
    groups = parameter_groups(model, stage)
    optimizer = scheduler = None
    if len(groups) > 1 and {"optimizer", "scheduler"} & ds_config.keys():
        raise ValueError(
            f"stage {stage.name}: vision_learning_rate needs our AdamW and cosine schedule, but {config_path} "
            "makes its own optimizer or scheduler (one lr for all groups): drop vision_learning_rate or pick a "
            "ZeRO config without them (zero2, zero3)"
        )
    if "optimizer" not in ds_config:  # Trainer's default optimizer, as CuMo's zero2/zero3 runs got it
        optimizer = torch.optim.AdamW(
            groups,
            lr=stage.learning_rate,
            betas=ADAM_BETAS,
            eps=ADAM_EPSILON,
            weight_decay=stage.weight_decay,
        )
        if "scheduler" not in ds_config:
            scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=groups, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )

    # Hashed on rank 0 alone: the paper's sft mixture is 2.7 GB.
    run = checkpoint.rank0_decides(
        _run_identity(stage, preset, Path(data), previous_output_dir) if rank == 0 else None
    )
    state = checkpoint.load(engine, checkpoint_dir, run) or {"step": 0, "wall_time_s": 0.0}
    step = state["step"]
    metrics = _MetricsLog(checkpoint_dir / METRICS_FILE, engine.module.config, rank, resume_step=step)
    size = model.config.vision_config.image_size
    blank_B3HW = torch.zeros(1, 3, size, size, device=engine.device, dtype=dtype)
    bar = tqdm(total=total_steps, initial=step, desc=f"{stage.name}", unit="step", disable=rank != 0)
    run_started = time.monotonic()

    def save() -> None:
        memory.start()
        client_state = {"wall_time_s": state["wall_time_s"] + time.monotonic() - run_started}
        checkpoint.save(engine, checkpoint_dir, step, client_state, keep, run)
        memory.end("checkpoint_save")

    first_step = step + 1

    while step < total_steps:
        epoch = step // steps_per_epoch
        # The micro-batches of this epoch from the one the step starts with; a partial last step is dropped.
        batches = epoch_batches(epoch)[
            (step % steps_per_epoch) * plan.accumulation : steps_per_epoch * plan.accumulation
        ]
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collator, num_workers=num_workers)
        step_started = time.monotonic()
        for micro, batch in enumerate(loader, start=1):
            # Images in the weights' dtype (bf16 on GPUs): DeepSpeed casts the module, not its inputs.
            batch = {
                name: tensor.to(engine.device, dtype if tensor.is_floating_point() else tensor.dtype)
                for name, tensor in batch.items()
            }
            output = _forward(engine, batch, blank_B3HW)
            engine.backward(output.loss)
            engine.step()
            metrics.add(output, tokens=int(batch["attention_mask"].sum()), images="pixel_values" in batch)
            if micro % plan.accumulation:
                continue
            step += 1
            record = metrics.end_step(step, epoch, engine, time.monotonic() - step_started)
            if step == first_step:
                memory.end("first_step")
            bar.update()
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            step_started = time.monotonic()
            if preemption.agree():
                save()
                bar.close()
                logger.warning(f"preempted at step {step}: saved, exiting with {checkpoint.EXIT_PREEMPTED}")
                sys.exit(checkpoint.EXIT_PREEMPTED)
            if step % save_every == 0 or step == total_steps:
                save()
            if step == total_steps:
                break
    bar.close()

    # The main process's counts: with DataLoader workers each worker counts (and logs) its own skips.
    skips = _merged_skips(dataset.skips, world_size)
    memory.start()
    exported = _export(engine.module, processor, output_dir, partitioning, max_shard_bytes)
    memory.end("export")
    if rank == 0:
        (output_dir / METRICS_FILE).write_bytes((checkpoint_dir / METRICS_FILE).read_bytes())
        wall_time = state["wall_time_s"] + time.monotonic() - run_started
        checkpoint.mark_finished(
            output_dir,
            {
                "stage": stage.to_dict(),
                "preset": preset,
                "git_commit": git_commit(),
                "deepspeed_config": ds_config,
                "batch": vars(plan),
                "steps": total_steps,
                "data": str(data),
                "mixture_sha256": run["mixture_sha256"],
                "skipped": skips.to_dict(),
                "previous_output_dir": str(previous_output_dir) if previous_output_dir else None,
                "packages": package_versions(),
                "world_size": world_size,
                "device": device,
                "wall_time_s": wall_time,
                "this_run_wall_time_s": time.monotonic() - started,
                "files": exported,
            },
        )
    dist.barrier()
    # Ranks that exit with the group still up may abort each other's gloo/NCCL teardown (seen: SIGABRT).
    dist.destroy_process_group()
    return output_dir


def _run_identity(stage: StageConfig, preset: str, data: Path, previous_output_dir) -> dict:
    """What makes a training run this one, for its checkpoints: the recipe, the data, and the finished
    stage it starts from (its finished.json, which a retrained stage rewrites)."""
    previous = Path(previous_output_dir) / checkpoint.FINISHED if previous_output_dir else None
    return {
        "stage": stage.to_dict(),
        "preset": preset,
        "mixture_sha256": sha256_file(data),
        "previous_finished_sha256": sha256_file(previous) if previous else None,
    }


def exit_rank(code: int) -> None:
    """End a rank's process now, with `code`, skipping the interpreter's finalization.

    `destroy_process_group` drops torch's references to the process groups, not DeepSpeed's, so gloo's worker
    threads outlive it and are torn down during finalization, which now and then aborts the process
    ("terminate called without an active exception", SIGABRT; seen here about once in 30 stage runs, after
    the export had finished; the mechanism: pytorch/pytorch#179291). By the time a rank ends, everything it
    writes is written and closed; stdio and logging are flushed here.
    """
    write_exit_code(os.environ, code)  # for `cumo launch` (launch.supervise)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _arrow_mixture(data: Path, data_root: Path, checkpoint_dir: Path, rank: int) -> Path:
    """`data` itself if it is an Arrow mixture; a JSON mixture is validated into one by rank 0 first."""
    if data.suffix != ".json":
        return data
    arrow = checkpoint_dir / "mixture.arrow"
    if rank == 0 and not arrow.is_file():
        build_mixture([data], arrow, checkpoint_dir / "mixture.stats.json", data_root)
    dist.barrier()
    return arrow


def _epoch_batches_fn(
    stage: StageConfig, dataset: SupervisedDataset, accumulation: int, world_size: int, rank: int
):
    """epoch -> this rank's micro-batches (lists of dataset indices) for that epoch, in order."""
    if stage.group_by_modality:
        lengths, has_image = dataset.modality_lengths()
        sampler = ModalityLengthGroupedSampler(
            lengths, has_image, stage.micro_batch_size, world_size, rank, accumulation, seed=stage.seed
        )
    else:
        sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=stage.seed)

    def epoch_batches(epoch: int) -> list[list[int]]:
        sampler.set_epoch(epoch)
        indices = list(sampler)
        size = stage.micro_batch_size
        return [indices[start : start + size] for start in range(0, len(indices) - size + 1, size)]

    return epoch_batches


def _forward(engine, batch: dict[str, torch.Tensor], blank_B3HW: torch.Tensor):
    """The model's output on `batch`; without images, with a blank stand-in image (see top, and
    CumoModel.forward's `stand_in_image`)."""
    if "pixel_values" in batch:
        return engine(**batch)
    return engine(**batch, pixel_values=blank_B3HW, stand_in_image=True)


class _MetricsLog:
    """Accumulates a step's micro-batches on every rank; reduces over ranks; rank 0 appends metrics.jsonl."""

    def __init__(self, path: Path, config, rank: int, resume_step: int):
        self.path, self.rank = path, rank
        self.terms = [
            term
            for term, present in zip(
                LOSS_TERMS,
                (
                    True,
                    config.clip_moe,
                    config.clip_moe,
                    config.mlp_moe,
                    config.mlp_moe,
                    hasattr(config.text_config, "num_local_experts"),
                ),
                strict=True,
            )
            if present
        ]
        experts = config.num_experts
        self.clip_shape = (config.vision_config.num_hidden_layers, experts) if config.clip_moe else None
        self.mlp_shape = (experts,) if config.mlp_moe else None
        self._reset()
        if rank == 0:
            # A resumed run continues the log from its checkpoint: lines of later steps are from the lost run.
            lines = path.read_text().splitlines() if path.is_file() else []
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= resume_step))

    def _reset(self) -> None:
        self.loss_sum = 0.0
        self.term_sums = dict.fromkeys(self.terms, 0.0)
        self.term_counts = dict.fromkeys(self.terms, 0)
        self.micro_batches = self.tokens = 0
        self.clip_LE = torch.zeros(self.clip_shape or (0,), dtype=torch.float64)
        self.mlp_E = torch.zeros(self.mlp_shape or (0,), dtype=torch.float64)

    def add(self, output, tokens: int, images: bool) -> None:
        """One micro-batch's output; without `images` its image terms (of the stand-in image) are not logged."""
        self.micro_batches += 1
        self.tokens += tokens
        self.loss_sum += output.loss.item()
        for term in self.terms:
            value = getattr(output, term)
            if value is not None and (images or term.startswith(("lm_", "llm_"))):
                self.term_sums[term] += value.item()
                self.term_counts[term] += 1
        if images and output.clip_tokens_per_expert is not None:
            self.clip_LE += output.clip_tokens_per_expert.cpu()
        if images and output.mlp_tokens_per_expert is not None:
            self.mlp_E += output.mlp_tokens_per_expert.cpu()

    def end_step(self, step: int, epoch: int, engine, seconds: float) -> dict:
        """Reduce this step's sums over ranks (collective); rank 0 writes the line. Returns the record."""
        sums = [self.loss_sum, self.micro_batches, self.tokens]
        sums += [self.term_sums[t] for t in self.terms] + [self.term_counts[t] for t in self.terms]
        flat = torch.cat([torch.tensor(sums, dtype=torch.float64), self.clip_LE.flatten(), self.mlp_E])
        dist.all_reduce(flat)  # SUM over ranks; gloo and NCCL both reduce a CPU/device float64 tensor alike
        n = len(self.terms)
        loss_sum, micro_batches, tokens = flat[:3].tolist()
        term_sums, term_counts = flat[3 : 3 + n].tolist(), flat[3 + n : 3 + 2 * n].tolist()
        clip_LE = flat[3 + 2 * n : 3 + 2 * n + self.clip_LE.numel()].view(self.clip_LE.shape)
        mlp_E = flat[3 + 2 * n + self.clip_LE.numel() :]
        grad_norm = engine.get_global_grad_norm()
        record = {
            "step": step,
            "epoch": epoch,
            "loss": loss_sum / micro_batches,
            **{t: (s / c if c else None) for t, s, c in zip(self.terms, term_sums, term_counts, strict=True)},
            "lr": engine.get_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens_per_s": tokens / seconds,
            "seconds": seconds,
        }
        if self.clip_shape:
            record["clip_tokens_per_expert"] = clip_LE.long().tolist()  # (CLIP layers, E), all ranks
        if self.mlp_shape:
            record["mlp_tokens_per_expert"] = mlp_E.long().tolist()  # (E,), all ranks
        if self.rank == 0:
            with open(self.path, "a") as file:
                file.write(json.dumps(record) + "\n")
        self._reset()
        return record


def _merged_skips(skips: SkipCounter, world_size: int) -> SkipCounter:
    """Every rank's skip counts in one counter (collective)."""
    gathered = [None] * world_size
    dist.all_gather_object(gathered, skips)
    merged = SkipCounter(skips.what, skips.max_share)
    for counter in gathered:
        merged.merge(counter)
    return merged


def _partitioning(ds_config: dict, dtype: torch.dtype, rank: int) -> Partitioning:
    """How the model is split over the ranks: under ZeRO-3 built inside DeepSpeed's `zero.Init` and gathered a
    module at a time to be filled and exported (what transformers does for the HF Trainer's ZeRO-3 runs,
    modeling_utils `_from_config`); under ZeRO-2 whole on every rank, rank 0 writing."""
    if ds_config["zero_optimization"]["stage"] != 3:
        return Partitioning(writer=rank == 0)
    import deepspeed
    from transformers.integrations.deepspeed import prevent_arange_dtype_change

    return Partitioning(
        # RoPE buffers keep the dtype their code asks for (zero.Init would cast torch.arange's result).
        contexts=lambda: [
            prevent_arange_dtype_change(),
            deepspeed.zero.Init(config_dict_or_path=ds_config, dtype=dtype),
        ],
        gather=lambda params, modify: deepspeed.zero.GatheredParameters(
            params, modifier_rank=0 if modify else None
        ),
        writer=rank == 0,
        partitioned=True,
    )


def _export(
    model, processor, output_dir: Path, partitioning: Partitioning, max_shard_bytes: int
) -> list[str]:
    """Save the trained model (safetensors shards, a module at a time) and its processor into `output_dir`
    (collective); the files written, on the writer."""
    save_sharded(model, output_dir, max_shard_bytes, partitioning, description="export")
    if not partitioning.writer:
        return []
    model.config.use_cache = True
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(output_dir)
    model.generation_config.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return sorted(str(path.relative_to(output_dir)) for path in output_dir.rglob("*") if path.is_file())

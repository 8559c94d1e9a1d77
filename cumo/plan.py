"""`cumo plan`: the memory every job of a workflow config needs, planned before anything is submitted.

For each training job (model x stage) and each evaluation job of a config, on the cluster the config
declares (`cluster:`), the peak memory of one GPU, by term (weights, gradients, optimizer states, DeepSpeed's
buffers, activations, transients), and of one node's host memory, each against what the cluster has. A job
that cannot fit names the config change that makes it fit. The workflow runs the same check when it builds
its DAG (workflow/rules/common.smk) and asks Slurm for the host memory planned here.

Model states follow DeepSpeed's own estimators, per parameter and rank (W ranks, N parameters):
- ZeRO-2 (deepspeed/runtime/zero/stage_1_and_2.py, `estimate_zero2_model_states_mem_needs`): 2 N + 18 N / W
  bytes in bf16, "18 = 2_grads_16bit + 4_grads_32bit + 4_params_32bit + 8_optimizer_states_32bit"; the
  16-bit weights are whole on every rank.
- ZeRO-3 (deepspeed/runtime/zero/stage3.py, `estimate_zero3_model_states_mem_needs`): 18 N / W plus 4 x the
  largest layer on the GPU, or with both offloads 18 N / W in host memory (times its buffer factor 1.5):
  the 16-bit partition (2), the fp32 master, Adam's moments and the fp32 gradient (16). stage3.py also keeps
  a 16-bit gradient partition (`grad_partitions_flat_buffer`, 2), which the estimator leaves out.
tests/test_plan.py checks these against the estimators. Unlike them the plan counts frozen parameters (only
the connector trains in pretrain) as weights alone, and knows DeepSpeed's CPU accelerator (the tiny run,
the benchmark) trains in fp32, where ZeRO-3's master is the partition itself (stage3.py
`_create_fp32_partitions`: same dtype and device, no copy) and pinning is a no-op.

Then what the code allocates besides (each term's comment says where): the reduce bucket(s) of
`reduce_bucket_size = h^2` elements (cumo/train/deepspeed_config.py, transformers' rule), ZeRO-3's gathered
parameters (one module at a time in the first step, which records the trace; afterwards up to
`stage3_max_live_parameters = 1e9`, cumo/train/deepspeed/zero3*.json), the gradients of a module before they are
reduced, the flattened fp32 gradients and Adam's temporaries at the optimiser step, the loading, saving and
exporting transients, pinned host buffers rounded up to a power of two by PyTorch's host allocator, and the
activations of one micro-batch (`saved_activation_bytes`: what autograd keeps per token of every layer of
CLIP, the connector and the LLM, and of the loss, exact against the bytes autograd saves in
tests/test_plan.py; with activation checkpointing a layer keeps only its input and the backward recomputes
one layer at a time).

On CPU ranks `python -m cumo.bench memory` measures every phase of every stage of a scaled family of the
paper's presets and compares it with `training_phases`; README "Memory" has the table. The GPU figures are
the same terms in bf16, with two allowances that are not computed (the CUDA context and libraries).
"""

import dataclasses
from dataclasses import dataclass, field
from functools import cache

GB = 10**9
FP32 = 4  # bytes
# Allowances that are not computed: the CUDA context and the libraries (cuBLAS, cuDNN, NCCL) a GPU rank
# holds besides its tensors, on the GPU and in host memory. Not measured here (no GPU in this project's
# checks); PyTorch's CUDA context alone is about 0.5 GB of GPU memory on an H100.
CUDA_CONTEXT_BYTES = 1 * GB
CUDA_PROCESS_HOST_BYTES = 4 * GB
# A CPU rank's resident set after its imports (torch, DeepSpeed, transformers) and the process group: the
# `baseline_bytes` every rank logs with CUMO_MEMORY_LOG (python -m cumo.bench memory), 0.47 GB.
CPU_PROCESS_HOST_BYTES = int(0.47 * GB)
# Evaluation answers with the context training used: sft's max_length bounds prompt + answer.
EVAL_CONTEXT_TOKENS = 4096
DEFAULT_CLUSTER = {"gpus_per_node": 8, "gpu_memory_gb": 80, "host_memory_gb": 1000}


class PlanError(ValueError):
    """A config the planner cannot plan: a missing or impossible value, named with its key and its fix."""


class PlanRefused(ValueError):
    """Jobs that cannot fit the declared cluster; the message names each job and what to change."""


# --- the cluster -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """One node of the cluster the jobs run on: GPUs, the memory of each, host memory (decimal GB).

    A CPU-only cluster (the tiny run) has `gpus_per_node: 0` and `gpu_memory_gb: 0`; a job on cuda then
    cannot run there."""

    gpus_per_node: int
    gpu_memory_gb: float
    host_memory_gb: float

    def __post_init__(self):
        def fail(key, message):
            raise PlanError(f"cluster.{key}: {message}")

        if not isinstance(self.gpus_per_node, int) or isinstance(self.gpus_per_node, bool):
            fail(
                "gpus_per_node",
                f"{self.gpus_per_node!r} is not a whole number; give the GPUs of a node, e.g. 8",
            )
        if self.gpus_per_node < 0:
            fail("gpus_per_node", f"{self.gpus_per_node} GPUs is impossible; give the GPUs of a node, e.g. 8")
        for key in ("gpu_memory_gb", "host_memory_gb"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or isinstance(value, bool):
                fail(key, f"{value!r} is not a number of GB")
        if self.host_memory_gb <= 0:
            fail("host_memory_gb", f"{self.host_memory_gb} GB is impossible; give a node's memory, e.g. 1000")
        if self.gpus_per_node and self.gpu_memory_gb <= 0:
            fail(
                "gpu_memory_gb",
                f"{self.gpu_memory_gb} GB for each of {self.gpus_per_node} GPUs is impossible; give one GPU's "
                "memory, e.g. 80 (or gpus_per_node: 0 for a node without GPUs)",
            )
        if not self.gpus_per_node and self.gpu_memory_gb:
            fail("gpu_memory_gb", "a node without GPUs (gpus_per_node: 0) has no GPU memory: set it to 0")

    @classmethod
    def from_config(cls, section: dict | None) -> "Cluster":
        """The config's `cluster:` section; absent, the default 8 x 80 GB GPUs and 1 TB of host memory."""
        if section is None:
            return cls(**DEFAULT_CLUSTER)
        if not isinstance(section, dict):
            raise PlanError(f"cluster: {section!r} is not a mapping; give {DEFAULT_CLUSTER}")
        fields_ = [f.name for f in dataclasses.fields(cls)]
        for key in fields_:
            if key not in section:
                raise PlanError(
                    f"cluster.{key} is missing: the cluster section needs all of {fields_} "
                    f"(the default cluster: {DEFAULT_CLUSTER})"
                )
        if unknown := set(section) - set(fields_):
            raise PlanError(f"cluster: unknown key(s) {sorted(unknown)}; the keys are {fields_}")
        return cls(**section)

    @property
    def gpu_bytes(self) -> int:
        return int(self.gpu_memory_gb * GB)

    @property
    def host_bytes(self) -> int:
        return int(self.host_memory_gb * GB)


# --- the model ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    """What the plan reads of a model: parameters per part, counted exactly on the meta device, and shapes."""

    parameters: dict[str, int]  # cumo.train.stages.PARTS -> parameters
    # The most parameters one module owns itself (DeepSpeed's `largest_layer_params`), in all and per part:
    # ZeRO-3 gathers a module's own parameters together.
    largest_module: int
    largest_module_of: dict[str, int]
    largest_block: (
        int  # the most parameters of one no-split block (a decoder or CLIP layer): device_map's unit
    )
    persistent: int  # parameters small enough that ZeRO-3 keeps them whole on every rank (10 h elements)
    sizes: tuple[int, ...]  # every parameter's elements
    shapes: "Shapes"

    @property
    def total(self) -> int:
        return sum(self.parameters.values())

    def trainable(self, parts: tuple[str, ...]) -> int:
        return sum(self.parameters[part] for part in parts)


@dataclass(frozen=True)
class Shapes:
    """The dimensions the activation formula reads (CumoConfig, its vision_config and text_config)."""

    hidden: int  # the LLM's h
    intermediate: int
    heads: int
    kv_width: int  # key/value heads x head size (grouped-query attention)
    head_dim: int
    layers: int
    vocab: int
    llm_experts: int  # 0: a dense LLM (Mistral); Mixtral: 8
    llm_top_k: int
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    vision_layers: int  # every CLIP layer runs (CuMo's tower, cumo/model/vision.py)
    crop_tokens: int  # patches + CLS of one crop
    crops: int  # crops per image over the S^2 scales: sum of s^2 (10 for [1, 3])
    feature_layer: int  # the hidden state the features come from (-2)
    image_side: int
    pooled_cells: int  # per image, the merged feature map cells of the scales > 1, pooled back (S^2)
    image_tokens: int  # LLM tokens of one image (24 x 24)
    connector_in: int  # CLIP width x scales
    experts: int  # CuMo's MoE blocks (CLIP MLPs and connector, sft)
    top_k: int
    clip_moe: bool
    mlp_moe: bool

    @classmethod
    def of(cls, config) -> "Shapes":
        text, vision = config.text_config, config.vision_config
        grid = vision.image_size // vision.patch_size
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return cls(
            hidden=text.hidden_size,
            intermediate=text.intermediate_size,
            heads=heads,
            kv_width=text.num_key_value_heads * head_dim,
            head_dim=head_dim,
            layers=text.num_hidden_layers,
            vocab=text.vocab_size,
            llm_experts=getattr(text, "num_local_experts", 0),
            llm_top_k=getattr(text, "num_experts_per_tok", 0),
            vision_hidden=vision.hidden_size,
            vision_intermediate=vision.intermediate_size,
            vision_heads=vision.num_attention_heads,
            vision_layers=vision.num_hidden_layers,
            crop_tokens=grid * grid + 1,
            crops=sum(scale * scale for scale in config.scales),
            feature_layer=config.vision_feature_layer,
            image_side=vision.image_size,
            pooled_cells=sum((scale * grid) ** 2 for scale in config.scales if scale > 1),
            image_tokens=config.num_image_tokens,
            connector_in=config.mm_hidden_size,
            experts=config.num_experts,
            top_k=config.num_experts_per_tok,
            clip_moe=config.clip_moe,
            mlp_moe=config.mlp_moe,
        )


def describe(config) -> ModelFacts:
    """Count a CumoConfig's model on the meta device: no memory, no time spent on weights."""
    import torch

    from cumo.model.modeling_cumo import CumoForConditionalGeneration
    from cumo.train.stages import PARTS

    with torch.device("meta"):
        model = CumoForConditionalGeneration(config)
    parameters, largest_of = dict.fromkeys(PARTS, 0), dict.fromkeys(PARTS, 0)
    persistence_threshold = (
        10 * config.text_config.hidden_size
    )  # deepspeed_config.py, as transformers sets it
    persistent, sizes = 0, []
    for name, parameter in model.named_parameters():
        part = next(part for part, prefixes in PARTS.items() if name.startswith(prefixes))
        parameters[part] += parameter.numel()
        persistent += parameter.numel() if parameter.numel() <= persistence_threshold else 0
        sizes.append(parameter.numel())
    for prefix, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if own:
            part = next(part for part, prefixes in PARTS.items() if f"{prefix}.".startswith(prefixes))
            largest_of[part] = max(largest_of[part], own)
    no_split = tuple(model._no_split_modules)
    return ModelFacts(
        parameters=parameters,
        largest_module=max(largest_of.values()),
        largest_module_of=largest_of,
        largest_block=max(
            sum(p.numel() for p in m.parameters()) for m in model.modules() if type(m).__name__ in no_split
        ),
        persistent=persistent,
        sizes=tuple(sizes),
        shapes=Shapes.of(config),
    )


@cache
def preset_facts(preset: str, moe: bool) -> ModelFacts:
    """The preset's model as a stage trains it: dense (pretrain, pft) or co-upcycled (`moe`, sft)."""
    from cumo.model.presets import build_config

    return describe_with_image_token(build_config(preset, moe=moe))


def describe_with_image_token(config) -> ModelFacts:
    """`describe` of the model once its tokenizer has the image token: a config without one (the paper's
    presets, the released checkpoints) gets one more vocabulary row, as pretrain and the conversion of a
    released checkpoint add it to Mistral's tokenizer (cumo/train/stages.py `_pretrain_start`,
    cumo/model/convert.py): 32,001."""
    if config.image_token_id is None:
        config.text_config.vocab_size += 1
        config.image_token_id = config.text_config.vocab_size - 1
    return describe(config)


# --- activations -------------------------------------------------------------------------------------------


def _moe_block_bytes(
    tokens: int,
    rows: int,
    s: Shapes,
    d_in: int,
    d_hidden: int,
    d_out: int,
    act_saved: int,
    b: int,
    input_grad: bool,
):
    """What one of CuMo's MoE blocks (cumo/model/moe.py SparseMoeBlock) saves for its backward, its input
    aside, per token: what the aux losses need (`_router_bytes`); the fp32 top-k values and their sum (the
    re-normalisation), int64 indices per copy (top-k's, the un-sort's, and the gather's if the input takes a
    gradient), the k copies
    sorted by expert, each expert's hidden activations (`act_saved` tensors for its activation, and fc2's
    input), the un-sorted and the weighted outputs, and the normalised weights."""
    k = s.top_k
    return (
        _router_bytes(tokens, rows, s)
        + tokens * FP32 * (k + 1)
        + tokens * k * ((2 + input_grad) * 8 + b * (d_in + (act_saved + 1) * d_hidden + 2 * d_out + 1))
    )


def _router_bytes(tokens: int, rows: int, s: Shapes) -> int:
    """The part of a MoE block its aux losses need: fp32 logits, probabilities and log-sum-exp per token, the
    mean probabilities per row."""
    return tokens * FP32 * (2 * s.experts + 1) + rows * FP32 * s.experts


def saved_activation_bytes(
    s: Shapes,
    *,
    samples: int,
    length: int,
    trainable: tuple[str, ...],
    checkpointing: bool,
    dtype_bytes: int,
    norm_stats_bytes: int = FP32,
) -> dict[str, int]:
    """Bytes autograd keeps from the forward of one micro-batch to its backward, by part.

    `samples` sequences of `length` tokens, each with one image (the worst case: LLaVA's samples hold at most
    one). `dtype_bytes`: the weights' dtype (bf16 on GPUs, fp32 on CPU); RMSNorm works in fp32 whatever it is
    (transformers' MistralRMSNorm upcasts). `norm_stats_bytes`: LayerNorm's saved mean and 1/std, fp32 on
    CUDA (at::acc_type), the input's dtype on CPU. With `checkpointing` each decoder and CLIP layer keeps
    only its input (transformers' non-reentrant checkpoint, `activation_checkpointing_enable`); what the
    backward recomputes is `recompute_bytes`. Attention is SDPA's fused kernel (flash or memory-efficient on
    GPUs, the flash CPU kernel): it keeps q, k, v, its output and a log-sum-exp per head, no T x T scores.
    """
    b, f = dtype_bytes, FP32
    tokens = samples * length
    images = samples
    vision_grad = "vision" in trainable  # the pixels need no gradient, so a frozen CLIP keeps nothing
    connector_grad = vision_grad or "connector" in trainable
    llm_trains = "llm" in trainable
    parts = {}

    # CLIP: per crop token; LayerNorm keeps its input, mean and 1/std; the q/k/v and fc1 inputs are LayerNorm
    # outputs; quick_gelu keeps its input and its sigmoid, fc2 its input. Only the layers up to the selected
    # hidden state (-2) reach the loss: the last one's activations are freed as the tower returns, except,
    # with MoE, the path to its router, whose aux losses CuMo averages over every layer.
    if vision_grad:
        rows = images * s.crops
        n = rows * s.crop_tokens
        D, inner = s.vision_hidden, s.vision_intermediate
        to_router = n * (2 * (b * D + 2 * norm_stats_bytes) + b * D + b * 4 * D + f * s.vision_heads + b * D)
        if s.clip_moe:
            layer = to_router + _moe_block_bytes(n, rows, s, D, inner, D, 2, b, input_grad=True)
            last = to_router + _router_bytes(n, rows, s)
        else:
            layer, last = to_router + n * 3 * b * inner, 0
        used = s.feature_layer % (s.vision_layers + 1)  # layers before the selected hidden state
        if checkpointing:
            layers = (s.vision_layers if s.clip_moe else used) * n * b * D
        else:
            layers = used * layer + (s.vision_layers - used) * last
        outside = (
            rows * 3 * s.image_side**2 * b  # the patch convolution's input
            + s.crop_tokens * 8  # position ids
            + n * (b * D + 2 * norm_stats_bytes)  # pre-layernorm
            + images * s.pooled_cells * s.vision_hidden * f  # S^2: the merged map, pooled in fp32
        )
        parts["vision"] = layers + outside
    # The connector, per image token: fc1's input, GELU's input, fc2's input (mlp2x_gelu), or its MoE.
    if connector_grad:
        m = images * s.image_tokens
        if s.mlp_moe:
            parts["connector"] = m * b * s.connector_in + _moe_block_bytes(
                m, images, s, s.connector_in, s.hidden, s.hidden, 1, b, input_grad=vision_grad
            )
        else:
            parts["connector"] = m * b * (s.connector_in + 2 * s.hidden)
    # The LLM, per token: each RMSNorm keeps its fp32 input and 1/rms, and (trained) its normalised input;
    # the q/k/v and gate/up inputs are RMSNorm outputs (kept when trained); SDPA keeps q, k, v (GQA: k and v
    # at the key/value heads), its output (which o_proj reads) and its log-sum-exp; SwiGLU keeps the gate,
    # its activation and the up projection (all needed for the input's gradient), and down_proj's input.
    h = s.hidden
    norm = f * h + f + (b * h if llm_trains else 0)
    attention = b * (2 * h + 2 * s.kv_width) + f * s.heads
    if s.llm_experts:
        mlp = _mixtral_block_bytes(s, b, llm_trains)
    else:
        mlp = b * s.intermediate * (3 + llm_trains)
    layer = 2 * norm + (2 * b * h if llm_trains else 0) + attention + mlp
    kept = b * h if checkpointing else layer
    # RoPE's cos and sin, one per position and shared by the layers and the batch (inside the recompute when
    # checkpointing).
    rope = 0 if checkpointing else 2 * length * s.head_dim * b
    # Mixtral's grouped matmuls keep each layer's int32 offsets of the experts' rows.
    offsets = 0 if checkpointing else s.layers * 4 * s.llm_experts
    parts["llm"] = (
        rope
        + offsets
        + tokens
        * (
            s.layers * kept
            + (8 if llm_trains else 0)  # token ids, for the embeddings' gradient
            + 1  # the image-token mask the image features are scattered with
            + norm  # the final norm
            + (b * h if llm_trains else 0)  # lm_head's input
        )
    )
    # The LM loss (transformers ForCausalLMLoss) upcasts the logits to fp32; cross-entropy keeps the fp32
    # log-softmax and the int64 labels, and nll_loss its fp32 total weight. Mixtral's router loss
    # (transformers' load_balancing_loss_func) keeps every layer's router logits and a weight per token.
    parts["loss"] = tokens * (f * s.vocab + 8) + f
    if s.llm_experts:
        parts["loss"] += tokens * (s.layers * s.llm_experts * b + f) + f * (s.llm_experts + 1)
    return parts


def _mixtral_block_bytes(s: Shapes, b: int, trains: bool) -> int:
    """Per token: Mixtral's MoE block (transformers' grouped-mm experts, integrations/moe.py `
    grouped_mm_experts_forward`): the router's fp32 probabilities, top-k indices, values and their sum; the
    sort's three int64 indices per copy and the copies' fp32 weights; gate-and-up's output (one tensor, whose
    gate and up views SwiGLU keeps), the activation and down's output (for the weights' gradient); trained,
    also the sorted input copies and down's input."""
    k, e, inner, h = s.llm_top_k, s.llm_experts, s.intermediate, s.hidden
    router = FP32 * (e + 1 + k) + 8 * k
    experts = k * (3 * 8 + FP32) + k * b * ((2 * h + 4 * inner) if trains else (h + 3 * inner))
    return router + experts


def activation_peak_bytes(
    s: Shapes,
    *,
    samples: int,
    length: int,
    trainable: tuple[str, ...],
    checkpointing: bool,
    dtype_bytes: int,
    norm_stats_bytes: int = FP32,
) -> dict[str, int]:
    """The most activation memory one micro-batch holds at once, by term: what its forward saves, the one
    layer the backward recomputes at a time (with checkpointing: the largest of a decoder layer over the
    micro-batch and a CLIP layer over its crops), the loss's transient fp32 logits, and the gradient flowing
    back through the hidden states."""
    common = dict(samples=samples, length=length, trainable=trainable, dtype_bytes=dtype_bytes)
    saved = saved_activation_bytes(
        s, checkpointing=checkpointing, norm_stats_bytes=norm_stats_bytes, **common
    )
    terms = {f"activations: {part}": nbytes for part, nbytes in saved.items()}
    if checkpointing:
        # One layer of each tower without checkpointing, less what the checkpointed run keeps of it.
        whole = saved_activation_bytes(s, checkpointing=False, norm_stats_bytes=norm_stats_bytes, **common)
        per_layer = {
            "llm": (whole["llm"] - saved["llm"]) // s.layers,
            "vision": (whole.get("vision", 0) - saved.get("vision", 0)) // s.vision_layers,
        }
        terms["recompute: one layer"] = max(per_layer.values())
    b, tokens = dtype_bytes, samples * length
    # ForCausalLMLoss: the logits (held by the model's output until the next micro-batch replaces it), then
    # in the backward the fp32 gradient of the log-softmax and its input's gradient, next to the saved one.
    terms["loss: logits and their gradients"] = tokens * s.vocab * (b + 2 * FP32)
    terms["gradient of the hidden states"] = 2 * tokens * s.hidden * b
    return terms


# --- model states, phase by phase -----------------------------------------------------------------------------

PHASES = ("setup", "first_step", "checkpoint_save", "export")  # cumo/train/memory.py
# What a CPU rank's phases add to its process whatever the model (the tokenizer and the dataset at set-up;
# DeepSpeed's engine and optimizer modules imported in `deepspeed.initialize`, 44-52 MB on a 16-parameter model,
# and autograd's and the optimizer's first-use allocations at the first step): the phases' peaks of the tiny
# preset (0.3 M parameters) on one rank, measured as `python -m cumo.bench memory` measures.
CPU_PHASE_OVERHEAD = {
    "setup": 32 * 10**6,
    "first_step": 109 * 10**6,
    "checkpoint_save": 106 * 10**6,
    "export": 108 * 10**6,
}


@dataclass(frozen=True)
class ZeroSetup:
    """What a stage's DeepSpeed config (cumo/train/deepspeed/<zero>.json, filled as the trainer fills it) means for
    memory."""

    stage: int
    offload_optimizer: bool
    offload_param: bool
    pin_memory: bool
    overlap_comm: bool
    reduce_bucket: int  # elements
    max_live: int  # ZeRO-3: parameters kept gathered at most

    @classmethod
    def of(cls, ds_config: dict) -> "ZeroSetup":
        zero = ds_config["zero_optimization"]
        offload_optimizer = (zero.get("offload_optimizer") or {}).get("device", "none") != "none"
        offload_param = (zero.get("offload_param") or {}).get("device", "none") != "none"
        return cls(
            stage=zero["stage"],
            offload_optimizer=offload_optimizer,
            offload_param=offload_param,
            pin_memory=any(
                (zero.get(key) or {}).get("pin_memory", False)
                for key in ("offload_optimizer", "offload_param")
            ),
            overlap_comm=bool(zero.get("overlap_comm", False)),
            reduce_bucket=int(zero["reduce_bucket_size"]),
            max_live=int(zero.get("stage3_max_live_parameters", 10**9)),
        )


def _pinned(nbytes: int, pinned: bool) -> int:
    """A pinned host buffer's real size: PyTorch's CachingHostAllocator rounds every pinned allocation up to a
    power of two (aten/src/ATen/core/CachingHostAllocator.h, `roundSize`: c10::llvm::PowerOf2Ceil, unless
    PYTORCH_CUDA_ALLOC_CONF sets pinned_max_round_threshold)."""
    return 1 << (nbytes - 1).bit_length() if pinned and nbytes > 0 else nbytes


@dataclass
class RankMemory:
    """One rank's memory in one phase, by term: on its accelerator and in its host's memory."""

    device: dict[str, int] = field(default_factory=dict)
    host: dict[str, int] = field(default_factory=dict)


def training_phases(
    facts: ModelFacts,
    stage,
    ds_config: dict,
    world: int,
    device: str,
    max_shard_bytes: int = 5 * GB,
) -> dict[str, RankMemory]:
    """Per phase, one rank's peak memory in a training stage (`stage`: a cumo.train.stages.StageConfig) on
    `world` ranks: model states by ZeRO stage and offload, DeepSpeed's buffers, activations, and the transients
    of loading, saving and exporting. On the CPU accelerator every term is host memory, in fp32.

    The phases are those the trainer logs (cumo/train/memory.py), and `step`: any later step. The first step
    records ZeRO-3's trace, and until the trace is complete every module's parameters are released after
    use (partitioned_param_coordinator.py `release_sub_module`); later steps keep parameters that will be
    used again within `stage3_max_reuse_distance`, up to `stage3_max_live_parameters`.
    """
    cuda = device == "cuda"
    b = 2 if cuda else FP32  # bf16 on GPUs; the CPU accelerator trains in fp32 (cumo/train/trainer.py)
    z = ZeroSetup.of(ds_config)
    n, nt = facts.total, facts.trainable(stage.trainable)
    rank_side = "device" if cuda else "host"
    optimizer_side = "host" if z.offload_optimizer else rank_side
    pinned = z.pin_memory and cuda  # pinning is a no-op on the CPU accelerator (cpu_accelerator.py)

    def partition(nbytes: int, side: str) -> int:
        return _pinned(nbytes, pinned and side == "host" and cuda)

    # The 16-bit (CPU: fp32) weights. ZeRO-2: whole on every rank. ZeRO-3: this rank's partition, and whole
    # the parameters of at most 10 h elements (stage3_param_persistence_threshold).
    if z.stage == 3:
        weights_side = "host" if z.offload_param else rank_side
        weights = partition(b * (n // world + facts.persistent), weights_side)
    else:
        weights_side, weights = rank_side, b * n
    if z.offload_param and pinned:
        # zero.Init pins each parameter's partition on its own (partition_parameters.py `_partition_param`);
        # stage3.py then copies them into one pinned flat buffer, and the freed blocks stay in PyTorch's host
        # allocator's cache (only torch._C._host_emptyCache() returns them).
        cached = sum(_pinned(-(-size // world) * b, True) for size in facts.sizes)
    else:
        cached = 0
    # The fp32 master: ZeRO-3 uses the partition itself when it is fp32 on the same device (stage3.py
    # `_create_fp32_partitions`); ZeRO-2 and offloading clone it.
    master = 0 if z.stage == 3 and b == FP32 and not z.offload_optimizer else FP32 * nt // world
    states = {
        "weights": (weights_side, weights),
        "pinned partitions left in the host allocator's cache": ("host", cached),
        "gradient partition": (optimizer_side, partition(b * nt // world, optimizer_side)),
        "fp32 master": (optimizer_side, partition(master, optimizer_side)),
        "fp32 gradient": (optimizer_side, partition(FP32 * nt // world, optimizer_side)),
    }
    # ZeRO-2 allocates its gradient partition in the first backward and its fp32 gradients at the step (the
    # flattening below).
    first_use = {"gradient partition": states.pop("gradient partition")} if z.stage < 3 else {}
    if z.stage < 3:
        del states["fp32 gradient"]
    buffers = {
        "reduce bucket(s)": (rank_side, (2 if z.stage < 3 and z.overlap_comm else 1) * z.reduce_bucket * b)
    }
    adam = {"Adam moments": (optimizer_side, 2 * FP32 * nt // world)}

    # Set-up, loading: rank 0 reads a module's tensors (from the Hub's bf16 LLM in pretrain; Mixtral's experts
    # there as every expert's tensor, their two stacks and the concatenation; else from the previous stage's
    # export, in the training dtype) into the module ZeRO-3 gathered for it; ZeRO-2 on GPUs builds the model
    # on the host in its dtype before DeepSpeed moves it (engine.py `_configure_distributed_model`). On CPU a
    # tensor's pages count once written, so the module being filled does not count yet.
    module = facts.largest_module
    pretrain = stage.name == "pretrain"
    reading = module * (2 if pretrain else b) * (3 if pretrain and facts.shapes.llm_experts else 1)
    loading = {
        "weights": (weights_side, weights - (0 if cuda else module * b // world)),
        "reading a module": ("host", reading),
    }
    if z.stage == 3 and world > 1:  # a partition of one rank is the parameter itself: no gather
        loading["the module gathered to be filled"] = (rank_side, module * b)
    if z.stage < 3 and cuda:
        loading["model built on the host"] = ("host", b * n)
    # The engine (made by deepspeed.initialize, counted in the first step): the states and buffers; ZeRO-2 flattens the trainable parameters into one buffer
    # while the old ones are alive.
    engine = dict(states, **buffers)
    if z.stage < 3:
        engine["flattening"] = (rank_side, b * nt)

    # A step's backward: activations, the gradients of the module being reduced, and the parameters gathered.
    activations = activation_peak_bytes(
        facts.shapes,
        samples=stage.micro_batch_size,
        length=stage.max_length,
        trainable=stage.trainable,
        checkpointing=stage.gradient_checkpointing,
        dtype_bytes=b,
        norm_stats_bytes=FP32 if cuda else b,
    )
    backward = dict(
        states, **first_use, **buffers, **{name: (rank_side, nbytes) for name, nbytes in activations.items()}
    )
    backward["gradients before their reduction"] = (
        rank_side,
        max(facts.largest_module_of[part] for part in stage.trainable) * b,
    )
    steady_backward = dict(backward)
    if z.stage == 3 and world > 1:
        backward["gathered parameters: one module"] = (rank_side, module * b)
        steady_backward["gathered parameters: stage3_max_live_parameters"] = (
            rank_side,
            min(z.max_live + module, n) * b,
        )
    # The optimiser step: Adam's moments (made at the first step); without offloading the reduced gradients
    # are first flattened into a new fp32 partition (stage3.py `_prepare_fp32_grad_for_sub_group`, ZeRO-2's
    # `single_grad_partition`), from a 16-bit one on GPUs; Adam computes sqrt(v) / c out of place: torch's
    # single-tensor AdamW (CPU) holds two temporaries the size of the partition, the multi-tensor one (CUDA)
    # one, DeepSpeedCPUAdam (offloading on GPUs) none.
    step = dict(states, **first_use, **buffers, **adam)
    if not z.offload_optimizer:
        step["flattened fp32 gradients"] = (optimizer_side, (FP32 + (b if b != FP32 else 0)) * nt // world)
    temporaries = 2 if not cuda else (0 if z.offload_optimizer else 1)
    step["Adam's temporaries"] = (optimizer_side, temporaries * FP32 * nt // world)

    trained = dict(states, **first_use, **buffers, **adam)
    saving = dict(trained)
    if cuda and not z.offload_optimizer:  # torch.save copies each GPU storage to the host as it writes it
        saving["largest state copied to the host"] = ("host", FP32 * nt // world)
    # Export: each module gathered (ZeRO-3) and copied to the host; the writer holds the copies of a shard.
    exporting = dict(trained)
    if z.stage == 3 and world > 1:
        exporting["a gathered module"] = (rank_side, module * b)
    exporting["the copies of one shard"] = ("host", min(max(max_shard_bytes, module * b), n * b))
    moments = {
        "setup": (loading,),
        "first_step": (engine, backward, step),
        "step": (steady_backward, step),
        "checkpoint_save": (saving,),
        "export": (exporting,),
    }
    return {phase: _peak(phase, group, cuda) for phase, group in moments.items()}


def _peak(phase: str, moments: tuple[dict, ...], cuda: bool) -> RankMemory:
    """A phase's peak: on each side (accelerator, host) the terms of the moment that needs the most there."""
    sides = []
    for moment in moments:
        rank = RankMemory()
        for name, (place, nbytes) in moment.items():
            if nbytes:
                getattr(rank, "device" if place == "device" else "host")[name] = nbytes
        if cuda:
            rank.device["CUDA context (allowance)"] = CUDA_CONTEXT_BYTES
        else:
            rank.host["process: set-up and first-step overhead"] = CPU_PHASE_OVERHEAD[
                "first_step" if phase == "step" else phase
            ]
        sides.append(rank)
    return RankMemory(
        device=max((rank.device for rank in sides), key=lambda terms: sum(terms.values())),
        host=max((rank.host for rank in sides), key=lambda terms: sum(terms.values())),
    )


# --- jobs ----------------------------------------------------------------------------------------------------

# Host-memory terms only the writer (rank 0) has: the others write no shard, and under ZeRO-3 read no
# checkpoint either (cumo/model/weights.py `load_weights`: ZeRO-2 ranks each read their whole model).
WRITER_ONLY = {2: ("the copies of one shard",), 3: ("reading a module", "the copies of one shard")}


@dataclass
class JobPlan:
    """One job's plan: per GPU (or per CPU rank) and per node, the terms of its peak, and what to change."""

    job: str  # "train cumo-mistral-7b pft", "evaluate cumo-mixtral-8x7b"
    rule: str  # the workflow's rule: train, evaluate
    wildcards: dict[str, str]
    nodes: int
    ranks: int  # training ranks, or evaluation shards
    gpus_per_rank: int  # 1 for training; evaluation's GPUs per shard (0 on CPU)
    device: dict[str, int]  # one GPU's peak, by term (empty on CPU)
    host: dict[str, int]  # one node's peak, by term
    device_limit: int
    host_limit: int
    advice: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what does not fit, in words

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def device_bytes(self) -> int:
        return sum(self.device.values())

    @property
    def host_bytes(self) -> int:
        return sum(self.host.values())

    def check(self, gpus_per_node: int) -> None:
        """Fill `problems`: what exceeds the cluster."""
        self.problems = []
        if self.device and self.device_bytes > self.device_limit:
            self.problems.append(
                f"{_gb(self.device_bytes)} per GPU > {_gb(self.device_limit)} ({_largest_terms(self.device)})"
            )
        if self.host_bytes > self.host_limit:
            self.problems.append(
                f"{_gb(self.host_bytes)} of host memory per node > {_gb(self.host_limit)} "
                f"({_largest_terms(self.host)})"
            )
        gpus = self.gpus_per_rank * (self.ranks // self.nodes)
        if self.device and gpus > gpus_per_node:
            self.problems.append(f"{gpus} GPUs on one node > the node's {gpus_per_node}")


def _gb(nbytes: float) -> str:
    return f"{nbytes / GB:.1f} GB"


def _largest_terms(terms: dict[str, int], count: int = 3) -> str:
    ranked = sorted(terms.items(), key=lambda item: -item[1])[:count]
    return ", ".join(f"{name} {_gb(nbytes)}" for name, nbytes in ranked)


def stage_ds_config(stage, world: int, hidden_size: int, device: str) -> dict:
    """The stage's DeepSpeed config as the trainer fills it (cumo/train/trainer.py), for `world` ranks."""
    from cumo.train.batching import plan_batch
    from cumo.train.deepspeed_config import fill_deepspeed_config, upstream_config

    return fill_deepspeed_config(
        upstream_config(stage.zero),
        batch=plan_batch(stage.global_batch_size, stage.micro_batch_size, world),
        lr=stage.learning_rate,
        weight_decay=stage.weight_decay,
        warmup_steps=1,
        total_steps=2,
        bf16=device == "cuda",
        grad_clip=1.0,
        hidden_size=hidden_size,
        device=device,
    )


def plan_training(
    job: str,
    wildcards: dict,
    facts: ModelFacts,
    stage,
    nodes: int,
    processes_per_node: int,
    device: str,
    cluster: Cluster,
) -> JobPlan:
    """A training job: `nodes` x `processes_per_node` ranks of `stage`; its peak per GPU and per node."""
    world = nodes * processes_per_node
    ds_config = stage_ds_config(stage, world, facts.shapes.hidden, device)
    phases = training_phases(facts, stage, ds_config, world, device)
    device_peak = max((rank.device for rank in phases.values()), key=lambda terms: sum(terms.values()))
    host_rank = max((rank.host for rank in phases.values()), key=lambda terms: sum(terms.values()))
    writer_only = WRITER_ONLY[ds_config["zero_optimization"]["stage"]]
    others = {name: nbytes for name, nbytes in host_rank.items() if name not in writer_only}
    process = CUDA_PROCESS_HOST_BYTES if device == "cuda" else CPU_PROCESS_HOST_BYTES
    host = {
        "processes (allowance)" if device == "cuda" else "processes after imports": processes_per_node
        * process
    }
    for name, nbytes in host_rank.items():
        host[name] = nbytes + (processes_per_node - 1) * others.get(name, 0)
    return JobPlan(
        job=job,
        rule="train",
        wildcards=wildcards,
        nodes=nodes,
        ranks=world,
        gpus_per_rank=1 if device == "cuda" else 0,
        device=dict(device_peak) if device == "cuda" else {},
        host=host,
        device_limit=cluster.gpu_bytes,
        host_limit=cluster.host_bytes,
    )


def plan_evaluation(
    job: str,
    wildcards: dict,
    facts: ModelFacts,
    shards: int,
    gpus_per_shard: int,
    batch_size: int,
    dtype_bytes: int,
    device: str,
    cluster: Cluster,
    max_shard_bytes: int = 5 * GB,
) -> JobPlan:
    """An evaluation job: `shards` processes, each with the whole model over `gpus_per_shard` GPUs (whole
    layers on each: transformers' device_map, cumo/eval/generate.py) answering `batch_size` questions at a
    time with a KV cache of EVAL_CONTEXT_TOKENS per question."""
    s, b, n = facts.shapes, dtype_bytes, facts.total
    k = max(gpus_per_shard, 1)
    kv_cache = batch_size * EVAL_CONTEXT_TOKENS * s.layers * 2 * s.kv_width * b
    # Without gradients nothing is kept: the prefill's largest working set is one decoder layer's MLP over the
    # prompt (gate, up, their product) or one CLIP layer over every crop; the next token's logits in fp32.
    crop_tokens = batch_size * s.crops * s.crop_tokens
    working = max(
        batch_size * EVAL_CONTEXT_TOKENS * (3 * s.intermediate + 4 * s.hidden) * b,
        crop_tokens * (s.vision_intermediate * (1 + s.clip_moe * s.top_k) + 4 * s.vision_hidden) * b,
    )
    model = {
        "weights": n * b // k,
        # device_map places whole layers: a GPU may hold up to one more than its share
        "weights: uneven split": facts.largest_block * b if k > 1 else 0,
        "KV cache": kv_cache // k,
        "activations: prefill": working,
        "logits": batch_size * s.vocab * FP32,
    }
    if device == "cuda":
        gpu = dict(model, **{"CUDA context (allowance)": CUDA_CONTEXT_BYTES})
        per_shard_host = CUDA_PROCESS_HOST_BYTES + min(
            max_shard_bytes, n * b
        )  # from_pretrained reads a shard
        host = {"processes (allowance) and a checkpoint shard each": shards * per_shard_host}
    else:
        gpu = {}
        host = {
            "processes after imports": shards * CPU_PROCESS_HOST_BYTES,
            "model, cache and activations": shards * sum(model.values()),
        }
    return JobPlan(
        job=job,
        rule="evaluate",
        wildcards=wildcards,
        nodes=1,
        ranks=shards,
        gpus_per_rank=k if device == "cuda" else 0,
        device={name: nbytes for name, nbytes in gpu.items() if nbytes},
        host=host,
        device_limit=cluster.gpu_bytes,
        host_limit=cluster.host_bytes,
    )


# --- a workflow config -----------------------------------------------------------------------------------------


def training_stage(config: dict, preset: str, stage: str):
    """The stage's recipe with the config's overrides (`train.recipe.<stage>`), checked; errors name the key."""
    from cumo.train.stages import stage_config

    overrides = dict((config["train"].get("recipe") or {}).get(stage) or {})
    if isinstance(overrides.get("trainable"), list):
        overrides["trainable"] = tuple(overrides["trainable"])
    try:
        return stage_config(stage, preset, **overrides)
    except (TypeError, ValueError) as error:
        raise PlanError(f"train.recipe.{stage} ({preset}): {error}") from None


def plan_config(config: dict) -> list[JobPlan]:
    """Every training and evaluation job of a workflow config (config/config.yaml's keys) on its cluster."""
    try:
        return _plan_config(config)
    except KeyError as error:
        raise PlanError(
            f"the config has no {error.args[0]!r} where the plan reads it: see config/README.md for its keys"
        ) from None


def _plan_config(config: dict) -> list[JobPlan]:
    from cumo.train.batching import BatchError
    from cumo.train.stages import STAGES

    cluster = Cluster.from_config(config.get("cluster"))
    evaluation, models = config["eval"], config["models"]
    trained = {name: model for name, model in models.items() if "preset" in model and "released" not in model}
    train = config["train"] if trained else None  # a config that only evaluates has no training ranks
    sections = {"eval": evaluation} | ({"train": train} if train else {})
    for section, settings in sections.items():
        if settings["device"] == "cuda" and not cluster.gpus_per_node:
            raise PlanError(
                f"cluster.gpus_per_node: 0, but {section}.device is cuda: declare the GPUs of a node (e.g. 8), "
                f"or set {section}.device: cpu"
            )
    jobs = []
    for name, model in trained.items():
        for stage_name in STAGES:
            stage = training_stage(config, model["preset"], stage_name)
            facts = preset_facts(model["preset"], stage.upcycle)

            def plan(stage, nodes, facts=facts, name=name, stage_name=stage_name):
                job = plan_training(
                    f"train {name} {stage_name}",
                    {"model": name, "stage": stage_name},
                    facts,
                    stage,
                    nodes,
                    train["processes_per_node"],
                    train["device"],
                    cluster,
                )
                job.check(cluster.gpus_per_node)
                return job

            try:
                job = plan(stage, train["nodes"][stage_name])
            except BatchError as error:
                raise PlanError(f"train {name} {stage_name}: {error}") from None
            if not job.fits:
                job.advice = _training_advice(plan, stage, train["nodes"][stage_name])
            jobs.append(job)
    for name in models:
        facts = _evaluated_facts(models, name)
        if facts is None:
            continue
        jobs.append(_plan_evaluation_job(name, facts, evaluation, cluster))
    return jobs


def _evaluated_facts(models: dict, name: str) -> ModelFacts | None:
    """The model an evaluation of `name` loads: a trained preset after sft (co-upcycled), the model a
    blank-images entry names, or a released checkpoint: its config when it is a directory on disk, else its
    preset (a source not yet downloaded; the conversion checks the two agree), else None (not planned)."""
    model = models[name]
    if "blank_images_of" in model:
        return _evaluated_facts(models, model["blank_images_of"])
    if "released" in model:
        from pathlib import Path

        from cumo.model.convert import read_released_config

        if (Path(model["released"]) / "config.json").is_file():
            return describe_with_image_token(read_released_config(model["released"]))
    if "preset" in model:
        return preset_facts(model["preset"], True)
    return None


def _plan_evaluation_job(name: str, facts: ModelFacts, evaluation: dict, cluster: Cluster) -> JobPlan:
    """The evaluation of one model: GPUs per shard as the config says, or the fewest the model fits on."""
    device = evaluation["device"]
    dtype_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}[evaluation["dtype"]]

    def plan(shards, gpus):
        job = plan_evaluation(
            f"evaluate {name}",
            {"model": name},
            facts,
            shards,
            gpus,
            evaluation["batch_size"],
            dtype_bytes,
            device,
            cluster,
        )
        job.check(cluster.gpus_per_node)
        return job

    shards = evaluation["shards"]
    if device != "cuda":
        return plan(shards, 0)
    fitting = [k for k in range(1, cluster.gpus_per_node + 1) if plan(1, k).device_bytes <= cluster.gpu_bytes]
    chosen = evaluation.get("gpus_per_shard") or (fitting[0] if fitting else cluster.gpus_per_node)
    job = plan(shards, chosen)
    if job.fits:
        return job
    if not fitting:
        job.advice = [f"the model does not fit the {cluster.gpus_per_node} GPUs of one node: use larger GPUs"]
        return job
    gpus = chosen if chosen in fitting else fitting[0]
    if gpus != chosen:
        job.advice.append(
            f"eval.gpus_per_shard: {gpus} (or leave it out: the plan picks the fewest that fit)"
        )
    if shards * gpus > cluster.gpus_per_node:
        job.advice.append(f"eval.shards: {cluster.gpus_per_node // gpus} ({gpus} GPUs each on one node)")
    if not plan(min(shards, cluster.gpus_per_node // gpus), gpus).fits:
        job.advice.append(
            "fewer eval.shards: the node's host memory holds one model copy per shard while loading"
        )
    return job


def _training_advice(plan, stage, nodes: int) -> list[str]:
    """Config changes that make a training job fit, each alone where one does, else together: a smaller
    micro-batch at the same global batch, activation checkpointing, more ZeRO (offloading), more nodes."""
    from cumo.train.batching import BatchError
    from cumo.train.stages import ZERO_CONFIGS

    key = f"train.recipe.{stage.name}"
    micro = [
        (f"{key}.micro_batch_size: {m} (the same global batch {stage.global_batch_size}, more accumulation)",
         {"micro_batch_size": m})
        for m in range(stage.micro_batch_size - 1, 0, -1)
        if stage.global_batch_size % m == 0
    ]  # fmt: skip
    checkpointing = (
        []
        if stage.gradient_checkpointing
        else [(f"{key}.gradient_checkpointing: true", {"gradient_checkpointing": True})]
    )
    zero = [(f"{key}.zero: {z}", {"zero": z}) for z in ZERO_CONFIGS[ZERO_CONFIGS.index(stage.zero) + 1 :]]
    more_nodes = [(f"train.nodes.{stage.name}: {n}", n) for n in range(nodes + 1, 9)]

    def fits(changes: dict, n: int) -> bool:
        try:
            return plan(dataclasses.replace(stage, **changes), n).fits
        except BatchError:  # the global batch does not split over that many ranks
            return False

    advice = []
    for group in (checkpointing, micro, zero):  # the first of each kind that fits alone
        advice += [next((text for text, changes in group if fits(changes, nodes)), None)]
    advice.append(next((text for text, n in more_nodes if fits({}, n)), None))
    advice = [text for text in advice if text]
    if advice:
        return advice
    for (zero_text, zero_changes), (micro_text, micro_changes) in [
        (z, m) for z in [("", {})] + zero for m in micro
    ]:
        for nodes_text, n in [("", nodes)] + more_nodes:
            if fits({**zero_changes, **micro_changes}, n):
                return [" and ".join(text for text in (zero_text, micro_text, nodes_text) if text)]
    return ["no change of micro-batch, ZeRO offloading or nodes (up to 8) makes it fit"]


def check_config(config: dict) -> list[JobPlan]:
    """`plan_config`, raising `PlanRefused` naming every job that cannot fit and what to change."""
    jobs = plan_config(config)
    refused = [job for job in jobs if not job.fits]
    if refused:
        raise PlanRefused(refusal(refused, Cluster.from_config(config.get("cluster"))))
    return jobs


def refusal(refused: list[JobPlan], cluster: Cluster) -> str:
    lines = [
        f"{len(refused)} job(s) cannot fit the cluster ({cluster.gpus_per_node} GPUs of {cluster.gpu_memory_gb} GB "
        f"and {cluster.host_memory_gb} GB of host memory per node; config key `cluster`):"
    ]
    for job in refused:
        lines.append(f"- {job.job}: {'; '.join(job.problems)}.")
        lines.append(
            f"  Change the config: {' or '.join(job.advice)}" if job.advice else "  No change found."
        )
    lines.append("`cumo plan CONFIG` prints the whole plan.")
    return "\n".join(lines)


def format_plan(jobs: list[JobPlan], cluster: Cluster) -> str:
    """The plan as a Markdown table, one row per job, then the refused jobs with what to change."""
    rows = [
        f"Cluster: {cluster.gpus_per_node} GPUs of {cluster.gpu_memory_gb} GB and {cluster.host_memory_gb} GB of "
        "host memory per node.",
        "",
        "| job | nodes x ranks (x GPUs) | per GPU | largest terms | host per node | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for job in jobs:
        shape = f"{job.nodes} x {job.ranks // job.nodes}" + (
            f" x {job.gpus_per_rank}" if job.gpus_per_rank > 1 else ""
        )
        gpu = _gb(job.device_bytes) if job.device else "-"
        terms = _largest_terms(job.device or job.host)
        rows.append(
            f"| {job.job} | {shape} | {gpu} | {terms} | {_gb(job.host_bytes)} | "
            f"{'fits' if job.fits else 'DOES NOT FIT'} |"
        )
    refused = [job for job in jobs if not job.fits]
    if refused:
        rows += ["", refusal(refused, cluster)]
    return "\n".join(rows)


def slurm_mem_mb(job: JobPlan | None, attempt: int, cluster: Cluster) -> int:
    """Slurm's --mem for a job (MB meaning MiB): its planned host memory per node, times the attempt (a
    retried job gets more), at most the node's; the node's for a job not planned (a released checkpoint
    not yet on disk)."""
    node = cluster.host_bytes // 2**20
    return min(-(-job.host_bytes // 2**20) * attempt, node) if job else node

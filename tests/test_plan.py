"""The memory plan (cumo/plan.py): the activation formula against the bytes autograd keeps, the model states
against DeepSpeed's own estimators, bad cluster sections, and the plans of the shipped configs."""

import copy
import weakref
from pathlib import Path

import pytest
import torch
import yaml
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
from transformers import CLIPVisionConfig, MistralConfig, MixtralConfig

from cumo.model.configuration_cumo import CumoConfig
from cumo.model.modeling_cumo import CumoForConditionalGeneration
from cumo.model.presets import TINY_TEXT, TINY_VISION, build_config
from cumo.plan import (
    Cluster,
    PlanError,
    PlanRefused,
    Shapes,
    check_config,
    plan_config,
    preset_facts,
    saved_activation_bytes,
    slurm_mem_mb,
    stage_ds_config,
    training_phases,
)
from cumo.train.stages import freeze_untrained, stage_config

ROOT = Path(__file__).resolve().parents[1]
ALL = ("vision", "connector", "llm")


def load(path) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


# -- activations: the formula against autograd ---------------------------------------------------------------


def small_config(width: int, moe: bool, mixtral: bool) -> CumoConfig:
    """The tiny preset's shapes at another width: S^2 crops, GQA, MoE as the paper's, Mixtral's experts."""
    text = dict(TINY_TEXT, hidden_size=width, intermediate_size=3 * width)
    if mixtral:
        text |= dict(num_local_experts=4, num_experts_per_tok=2)
    tiny = build_config("tiny", moe=moe)
    return CumoConfig(
        vision_config=CLIPVisionConfig(
            **dict(TINY_VISION, hidden_size=width // 2, intermediate_size=2 * width)
        ),
        text_config=(MixtralConfig if mixtral else MistralConfig)(**text),
        projector_type=tiny.projector_type,
        clip_moe=moe,
        image_token_id=tiny.image_token_id,
    )


def saved_by_autograd(model, batch) -> dict[str, int]:
    """Bytes of the tensors autograd keeps for the backward at the end of the forward, by part, each storage
    once and parameters not at all. The hook keeps a detached alias: returning the tensor itself would tie a
    node that saves its own output into a reference cycle that outlives the forward."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    owner, saved = ["loss"], []
    parts = {"vision_tower": "vision", "mm_projector": "connector", "language_model": "llm", "lm_head": "llm"}
    for name, module in model.named_modules():
        part = next((part for key, part in parts.items() if key in name.split(".")), None)
        if part:
            module.register_forward_pre_hook(lambda *_, part=part: owner.append(part))
            module.register_forward_hook(lambda *_: owner.pop() and None)

    def pack(tensor):
        tensor = tensor.detach()
        saved.append((weakref.ref(tensor), owner[-1]))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(**batch)
    storages, bytes_by_part = set(), {}
    for ref, part in saved:
        tensor = ref()
        if tensor is None:  # saved by a node the loss does not reach, freed already
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() in parameters | storages:
            continue
        storages.add(storage.data_ptr())
        if part == "loss" and tensor.dtype == torch.bool:  # the image-token mask, CumoModel's: the LLM's side
            part = "llm"
        bytes_by_part[part] = bytes_by_part.get(part, 0) + storage.nbytes()
    del output
    return bytes_by_part


CASES = [  # (dtype, MoE CLIP and connector, Mixtral LLM, trainable, checkpointing): pretrain, pft, sft and more
    (torch.bfloat16, False, False, ("connector",), True),
    (torch.bfloat16, False, False, ALL, False),
    (torch.float32, False, False, ALL, True),
    (torch.float32, True, False, ALL, False),
    (torch.bfloat16, True, False, ALL, True),
    (torch.bfloat16, False, True, ("connector",), False),
    (torch.float32, True, True, ALL, False),
    (torch.bfloat16, True, True, ALL, True),
]


@pytest.mark.parametrize("dtype, moe, mixtral, trainable, checkpointing", CASES)
@pytest.mark.parametrize("width", [64, 128])
def test_saved_activations_are_what_autograd_keeps(dtype, moe, mixtral, trainable, checkpointing, width):
    config = small_config(width, moe, mixtral)
    torch.manual_seed(0)
    model = CumoForConditionalGeneration(config).to(dtype).train()
    freeze_untrained(model, trainable)
    if checkpointing:
        model.activation_checkpointing_enable()
    samples, length = 2, 40
    ids = torch.randint(10, config.text_config.vocab_size, (samples, length))
    ids[:, 3 : 3 + config.num_image_tokens] = config.image_token_id
    side = config.vision_config.image_size
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    batch["pixel_values"] = torch.randn(samples, 3, side, side).to(dtype)
    predicted = saved_activation_bytes(
        Shapes.of(config),
        samples=samples,
        length=length,
        trainable=trainable,
        checkpointing=checkpointing,
        dtype_bytes=dtype.itemsize,
        norm_stats_bytes=dtype.itemsize,  # LayerNorm's statistics on CPU: the input's dtype
    )
    assert saved_by_autograd(model, batch) == predicted


# -- model states: DeepSpeed's estimators ---------------------------------------------------------------------


@pytest.mark.parametrize("zero, world", [("zero2", 8), ("zero3", 8), ("zero3", 16)])
def test_model_states_are_deepspeeds_estimates_where_everything_trains(zero, world):
    """pft trains the whole model: 16-bit weights, fp32 master, Adam's moments and fp32 gradients are what
    DeepSpeed's estimators count; the plan's ZeRO-3 16-bit gradient partition is on top (see cumo/plan.py)."""
    facts = preset_facts("cumo-mistral-7b", False)
    stage = stage_config("pft", "cumo-mistral-7b", zero=zero)
    phases = training_phases(
        facts, stage, stage_ds_config(stage, world, facts.shapes.hidden, "cuda"), world, "cuda"
    )
    step = phases["checkpoint_save"].device  # states and buffers after a step, nothing transient
    counted = step["weights"] + step["fp32 master"] + step["Adam moments"]
    n = facts.total
    if zero == "zero2":
        _, expected = estimate_zero2_model_states_mem_needs(n, 8, world // 8, cpu_offload=False)
        counted += step["gradient partition"] + 4 * n // world  # ZeRO-2's fp32 gradients exist at the step
    else:
        _, gpu, largest_layer = estimate_zero3_model_states_mem_needs(
            n, facts.largest_module, 8, world // 8, cpu_offload=False
        )
        expected = gpu - largest_layer
        counted += (
            step["fp32 gradient"] - 2 * facts.persistent
        )  # the estimator keeps no small parameter whole
    assert counted == pytest.approx(expected, rel=1e-6)


def test_parameters_are_counted_per_part_with_the_image_token_row():
    """README's Table 7 counts (tests/test_presets.py derives them) plus the image token's embedding and
    lm_head rows: 2 x 4,096."""
    mistral, mixtral = preset_facts("cumo-mistral-7b", True), preset_facts("cumo-mixtral-8x7b", True)
    assert mistral.parameters == {
        "vision": 907_952_128,
        "connector": 100_704_256,
        "llm": 7_241_732_096 + 8192,
    }
    assert mixtral.parameters["llm"] == 46_702_792_704 + 8192
    assert mixtral.largest_module == 8 * 3 * 4096 * 14336  # one layer's experts: ZeRO-3 gathers them together


# -- the cluster ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cluster, named",
    [
        (
            {"gpus_per_node": 8, "gpu_memory_gb": 80},
            ["cluster.host_memory_gb is missing", "the default cluster"],
        ),
        (
            {"gpus_per_node": 0, "gpu_memory_gb": 0, "host_memory_gb": 1000},
            ["cluster.gpus_per_node: 0", "e.g. 8"],
        ),
        (
            {"gpus_per_node": 8, "gpu_memory_gb": 0, "host_memory_gb": 1000},
            ["cluster.gpu_memory_gb", "e.g. 80"],
        ),
        (
            {"gpus_per_node": 8, "gpu_memory_gb": 80, "host_memory_gb": -1},
            ["cluster.host_memory_gb", "e.g. 1000"],
        ),
        (
            {"gpus_per_node": 8.5, "gpu_memory_gb": 80, "host_memory_gb": 1},
            ["cluster.gpus_per_node", "whole number"],
        ),
        (
            {"gpus_per_node": 8, "gpu_memory_gb": 80, "host_memory_gb": 1000, "gpus": 8},
            ["cluster: unknown key(s) ['gpus']"],
        ),
    ],
)
def test_a_bad_cluster_section_is_refused_naming_the_key_and_the_fix(cluster, named):
    config = load("config/config.yaml") | {"cluster": cluster}
    with pytest.raises(PlanError) as error:
        plan_config(config)
    for words in named:
        assert words in str(error.value)


def test_without_a_cluster_section_the_default_node_is_planned():
    config = load("config/config.yaml")
    del config["cluster"]
    assert Cluster.from_config(None) == Cluster(8, 80, 1000)
    assert all(job.fits for job in plan_config(config))


# -- the shipped configs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["config/config.yaml", "config/tiny.yaml"])
def test_every_shipped_config_fits_its_cluster(path):
    config = load(path)
    jobs = check_config(config)
    models = config["models"]
    trained = [name for name, model in models.items() if "preset" in model]
    assert len(jobs) == 3 * len(trained) + len(models)  # every stage of every trained model, every evaluation
    if config["train"]["device"] == "cpu":
        assert all(not job.device for job in jobs) and all(job.host_bytes < 2 * 10**9 for job in jobs)


def test_the_paper_recipe_as_cumo_ran_it_needs_three_changes_on_8_x_80_gb_nodes():
    """CuMo's own settings (micro-batch 32 in pretrain, pft on one node, 8 evaluation shards) on the default
    cluster: Mixtral-8x7B's pretrain at 32 x 2,048 tokens, its pft's offloaded states in one node's host
    memory and its 2-GPU evaluation shards are refused, each with the change config/config.yaml makes."""
    config = load("config/config.yaml")
    config["train"]["nodes"]["pft"] = 1
    del config["train"]["recipe"]
    config["eval"]["shards"] = 8
    with pytest.raises(PlanRefused) as error:
        check_config(config)
    message = str(error.value)
    assert message.count("\n- ") == 3
    assert "- train cumo-mixtral-8x7b pretrain: 82.1 GB per GPU > 80.0 GB" in message
    assert (
        "train.recipe.pretrain.micro_batch_size: 16 (the same global batch 256, more accumulation)" in message
    )
    assert "- train cumo-mixtral-8x7b pft: 1344.8 GB of host memory per node > 1000.0 GB" in message
    assert "train.nodes.pft: 2" in message
    assert "- evaluate cumo-mixtral-8x7b: 16 GPUs on one node > the node's 8" in message
    assert "eval.shards: 4 (2 GPUs each on one node)" in message


def test_on_40_gb_gpus_the_plan_says_what_to_change():
    config = copy.deepcopy(load("config/config.yaml"))
    config["cluster"]["gpu_memory_gb"] = 40
    jobs = {job.job: job for job in plan_config(config)}
    refused = {name for name, job in jobs.items() if not job.fits}
    assert refused == {
        "train cumo-mistral-7b pretrain",
        "train cumo-mixtral-8x7b pretrain",
        "evaluate cumo-mixtral-8x7b",
    }
    assert "train.recipe.pretrain.micro_batch_size: 8 (the same global batch 256, more accumulation)" in (
        jobs["train cumo-mistral-7b pretrain"].advice
    )
    assert jobs["evaluate cumo-mixtral-8x7b"].gpus_per_rank == 3
    config["train"]["recipe"]["pretrain"]["micro_batch_size"] = 8
    config["eval"]["shards"] = 2
    assert all(job.fits for job in plan_config(config))


def test_a_recipe_override_that_the_stage_refuses_names_its_key():
    config = load("config/config.yaml")
    config["train"]["recipe"] = {"pft": {"micro_batch_size": 3}}
    with pytest.raises(
        PlanError, match=r"train\.recipe\.pft \(cumo-mistral-7b\): .*not a multiple of micro_batch_size=3"
    ):
        plan_config(config)


def test_slurm_memory_is_the_plan_grown_with_the_attempt_up_to_the_node():
    config = load("config/config.yaml")
    cluster = Cluster.from_config(config["cluster"])
    job = next(job for job in plan_config(config) if job.job == "train cumo-mixtral-8x7b sft")
    first = slurm_mem_mb(job, 1, cluster)
    assert first * 2**20 >= job.host_bytes > (first - 1) * 2**20  # MiB, rounded up
    assert slurm_mem_mb(job, 2, cluster) == cluster.host_bytes // 2**20 < 2 * first  # capped at the node
    assert slurm_mem_mb(None, 1, cluster) == cluster.host_bytes // 2**20

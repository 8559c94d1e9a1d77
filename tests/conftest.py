"""Fixtures shared by the tests."""

import pytest


@pytest.fixture(params=["tiny", "tiny-mixtral"])
def preset(request):
    """Both LLM kinds: dense Mistral and MoE Mixtral."""
    return request.param


@pytest.fixture(scope="session")
def eval_root(tmp_path_factory):
    """The 13 synthetic benchmarks' files (cumo.data.synthetic_benchmarks), written once: <root>/eval/<folder>."""
    from cumo.data.synthetic_benchmarks import write_benchmarks

    root = tmp_path_factory.mktemp("world")
    write_benchmarks(root)
    return root / "eval"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised tiny MoE CuMo with the shapes world's tokenizer, saved as a stage exports it."""
    import torch

    from cumo.data.synthetic import build_tokenizer
    from cumo.model.modeling_cumo import CumoForConditionalGeneration
    from cumo.model.presets import build_config
    from cumo.model.processing_cumo import CumoProcessor

    torch.manual_seed(0)
    config = build_config("tiny", moe=True)
    model = CumoForConditionalGeneration(config)
    directory = tmp_path_factory.mktemp("models") / "tiny"
    model.save_pretrained(directory)
    CumoProcessor(build_tokenizer(), config).save_pretrained(directory)
    return directory

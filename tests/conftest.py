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

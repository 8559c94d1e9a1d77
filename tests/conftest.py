"""Fixtures shared by the tests."""

import pytest


@pytest.fixture(params=["tiny", "tiny-mixtral"])
def preset(request):
    """Both LLM kinds: dense Mistral and MoE Mixtral."""
    return request.param

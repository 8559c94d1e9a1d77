"""Tests of `cumo/model/moe.py` against oracles.

The oracle for the sorted forward is `reference_forward`, CuMo's naive loop over rows and experts
(clip_smoe.py), compared in float64 for outputs and every gradient. Routing is checked against a softmax
recomputed here in float64, the auxiliary losses against values worked out by hand, and co-upcycling
against the dense `MLP` that every expert is copied from.
"""

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from cumo.model.moe import MLP, SparseMoeBlock, balance_loss, reference_forward, router_z_loss

IN_FEATURES, HIDDEN_FEATURES, OUT_FEATURES = 8, 16, 12
ACTIVATION = "gelu"
# Scale of a forced router row: with positive inputs its logit is ~ +-100 * 0.8 * D, so the softmax gives
# that expert probability ~1 (positive) or ~e^-640 (negative), whatever the other rows are.
FORCE = 100.0


@dataclass(frozen=True)
class Case:
    rows: int
    tokens: int
    num_experts: int
    top_k: int
    forced_expert: int | None = None  # expert whose router row is set to `forced_sign * FORCE`
    forced_sign: int = 0  # -1 starves the forced expert, +1 sends every token to it


CASES = {
    "random": Case(rows=3, tokens=17, num_experts=4, top_k=2),
    "empty_expert": Case(rows=3, tokens=17, num_experts=4, top_k=2, forced_expert=3, forced_sign=-1),
    "all_to_one_top1": Case(rows=3, tokens=17, num_experts=4, top_k=1, forced_expert=1, forced_sign=+1),
    "single_row": Case(rows=1, tokens=17, num_experts=4, top_k=2),
    "top1": Case(rows=3, tokens=17, num_experts=4, top_k=1),
    "top_k_equals_num_experts": Case(rows=3, tokens=17, num_experts=4, top_k=4),
}


def make_block(case: Case, dtype: torch.dtype = torch.float64, seed: int = 0):
    """A block and an input (R, N, D) that requires grad, with the case's forced router row if any."""
    torch.manual_seed(seed)
    block = SparseMoeBlock(
        IN_FEATURES, HIDDEN_FEATURES, OUT_FEATURES, case.num_experts, case.top_k, ACTIVATION
    ).to(dtype)
    hidden_states_RND = torch.randn(case.rows, case.tokens, IN_FEATURES, dtype=dtype)
    if case.forced_expert is not None:
        # Positive inputs make the forced row's logit FORCE * sum(x), far from the random rows' logits.
        hidden_states_RND = hidden_states_RND.abs()
        with torch.no_grad():
            block.router.weight[case.forced_expert] = case.forced_sign * FORCE
    return block, hidden_states_RND.requires_grad_()


def output_and_grads(block: SparseMoeBlock, forward, hidden_states_RND: torch.Tensor, cotangent_RNO):
    """Output of `forward(block, x)` and the gradients of <output, cotangent> w.r.t. x and every parameter."""
    out_RNO = forward(block, hidden_states_RND)
    inputs = {"input": hidden_states_RND, **dict(block.named_parameters())}
    grads = torch.autograd.grad((out_RNO * cotangent_RNO).sum(), list(inputs.values()))
    return out_RNO.detach(), dict(zip(inputs, grads, strict=True))


def sorted_forward(block: SparseMoeBlock, hidden_states_RND: torch.Tensor) -> torch.Tensor:
    return block(hidden_states_RND)[0]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_forward_and_gradients_match_reference_loop(case: Case):
    block, hidden_states_RND = make_block(case)
    R, N, K = case.rows, case.tokens, case.top_k

    counts_E = block(hidden_states_RND)[1].tokens_per_expert_E
    assert counts_E.sum() == R * N * K
    if case.forced_sign < 0:
        assert counts_E[case.forced_expert] == 0
    if case.forced_sign > 0:
        assert counts_E[case.forced_expert] == R * N

    # A random cotangent, so that a gradient mixing up tokens or outputs cannot cancel out in a plain sum.
    cotangent_RNO = torch.randn(R, N, OUT_FEATURES, dtype=torch.float64)
    out_RNO, grads = output_and_grads(block, sorted_forward, hidden_states_RND, cotangent_RNO)
    expected_out_RNO, expected_grads = output_and_grads(
        block, reference_forward, hidden_states_RND, cotangent_RNO
    )

    torch.testing.assert_close(out_RNO, expected_out_RNO, rtol=0, atol=1e-10)
    assert grads.keys() == {
        "input",
        "router.weight",
        "experts.fc1_weight",
        "experts.fc1_bias",
        "experts.fc2_weight",
        "experts.fc2_bias",
    }
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=0, atol=1e-10, msg=name)


def test_expert_without_tokens_gets_defined_zero_gradient():
    case = CASES["empty_expert"]
    block, hidden_states_RND = make_block(case)
    out_RNO, aux = block(hidden_states_RND)
    assert aux.tokens_per_expert_E[case.forced_expert] == 0
    out_RNO.square().sum().backward()

    # Every parameter must have a gradient whatever the routing, or ZeRO-3 / DDP wait on it forever.
    for name, parameter in block.named_parameters():
        assert parameter.grad is not None, name
    for name, parameter in block.experts.named_parameters():
        starved_grad = parameter.grad[case.forced_expert]
        assert torch.equal(starved_grad, torch.zeros_like(starved_grad)), name
        assert parameter.grad.abs().sum() > 0, name


def test_route_matches_float64_softmax_top_k():
    case = CASES["random"]
    block, hidden_states_RND = make_block(case)
    weights_RNK, experts_RNK, _ = block.route(hidden_states_RND)
    # fp32 *or wider*: a float64 block keeps float64 routing, so it can be compared at float64 tolerance.
    assert weights_RNK.dtype == torch.float64

    probs_RNE = (hidden_states_RND @ block.router.weight.T).softmax(dim=-1).detach()
    # Distinct experts per token, and the chosen ones are the most probable: none left out beats them.
    chosen_RNE = F.one_hot(experts_RNK, case.num_experts).sum(dim=-2)
    assert chosen_RNE.max() == 1
    lowest_chosen_RN = probs_RNE.masked_fill(chosen_RNE == 0, math.inf).amin(dim=-1)
    highest_left_RN = probs_RNE.masked_fill(chosen_RNE == 1, -math.inf).amax(dim=-1)
    assert (lowest_chosen_RN >= highest_left_RN).all()

    chosen_probs_RNK = probs_RNE.gather(-1, experts_RNK)
    expected_weights_RNK = chosen_probs_RNK / chosen_probs_RNK.sum(dim=-1, keepdim=True)
    torch.testing.assert_close(weights_RNK, expected_weights_RNK, rtol=0, atol=1e-12)
    ones_RN = torch.ones(case.rows, case.tokens, dtype=torch.float64)
    torch.testing.assert_close(weights_RNK.sum(dim=-1), ones_RN, rtol=0, atol=1e-12)


def test_route_is_float32_in_a_bfloat16_block():
    block, hidden_states_RND = make_block(CASES["random"], dtype=torch.bfloat16)
    weights_RNK, _, aux = block.route(hidden_states_RND)
    assert weights_RNK.dtype == torch.float32
    assert aux.balance_R.dtype == aux.router_z_R.dtype == torch.float32
    # A bf16 softmax would leave sums off by ~1e-2 (8 mantissa bits); fp32 keeps them within ~1e-7.
    torch.testing.assert_close(weights_RNK.sum(dim=-1), torch.ones(weights_RNK.shape[:-1]), rtol=0, atol=1e-6)
    assert block(hidden_states_RND)[0].dtype == torch.bfloat16


def test_balance_loss_is_one_at_perfect_balance():
    # Uniform probabilities, and each row's top-1 choices spread evenly: 16 * mean_e(1/4 * 1/4) = 1.
    probs_RNE = torch.full((2, 4, 4), 0.25, dtype=torch.float64)
    top1_RN = torch.tensor([[0, 1, 2, 3], [3, 1, 0, 2]])
    assert torch.equal(balance_loss(probs_RNE, top1_RN), torch.ones(2, dtype=torch.float64))


def test_balance_loss_by_hand():
    probs_RNE = torch.tensor(
        [
            [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]],
            [[0.2, 0.8], [0.1, 0.9], [0.4, 0.6], [0.3, 0.7]],
        ],
        dtype=torch.float64,
    )
    top1_RN = probs_RNE.argmax(dim=-1)
    # Row 0: P = [2.6, 1.4] / 4 = [0.65, 0.35]; top-1 = [0, 0, 1, 0] so f = [3/4, 1/4];
    #        E^2 * mean_e(P_e * f_e) = 4 * (0.65 * 0.75 + 0.35 * 0.25) / 2 = 2 * (0.4875 + 0.0875) = 1.15.
    # Row 1: P = [1.0, 3.0] / 4 = [0.25, 0.75]; top-1 = [1, 1, 1, 1] so f = [0, 1];
    #        4 * (0.25 * 0 + 0.75 * 1) / 2 = 1.5.
    expected_R = torch.tensor([1.15, 1.5], dtype=torch.float64)
    torch.testing.assert_close(balance_loss(probs_RNE, top1_RN), expected_R, rtol=0, atol=1e-12)


def test_router_z_loss_by_hand():
    log2, log3, log5 = math.log(2), math.log(3), math.log(5)
    logits_RNE = torch.tensor(
        [
            [[0.0, 0.0], [log3, 0.0]],
            [[log2, log2], [log5, log3]],
        ],
        dtype=torch.float64,
    )
    # Row 0: logsumexp = log(1 + 1) = log 2 and log(3 + 1) = 2 log 2; mean of squares = (1 + 4) / 2 (log 2)^2.
    # Row 1: logsumexp = log(2 + 2) = 2 log 2 and log(5 + 3) = 3 log 2; mean of squares = (4 + 9) / 2 (log 2)^2.
    expected_R = torch.tensor([2.5 * log2**2, 6.5 * log2**2], dtype=torch.float64)
    torch.testing.assert_close(router_z_loss(logits_RNE), expected_R, rtol=0, atol=1e-12)


def test_block_aux_is_per_row():
    case = CASES["random"]
    block, hidden_states_RND = make_block(case)
    _, aux = block(hidden_states_RND)
    assert aux.balance_R.shape == aux.router_z_R.shape == (case.rows,)

    for r in range(case.rows):
        logits_1NE = (hidden_states_RND[r : r + 1] @ block.router.weight.T).detach()
        probs_1NE = logits_1NE.softmax(dim=-1)
        expected_balance = balance_loss(probs_1NE, probs_1NE.argmax(dim=-1))[0]
        expected_router_z = router_z_loss(logits_1NE)[0]
        torch.testing.assert_close(aux.balance_R[r], expected_balance, rtol=0, atol=1e-12)
        torch.testing.assert_close(aux.router_z_R[r], expected_router_z, rtol=0, atol=1e-12)

    expected_counts_E = torch.zeros(case.num_experts, dtype=torch.int64)
    for row in (hidden_states_RND @ block.router.weight.T).topk(case.top_k, dim=-1).indices:
        expected_counts_E += torch.bincount(row.flatten(), minlength=case.num_experts)
    assert torch.equal(aux.tokens_per_expert_E, expected_counts_E)


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_upcycled_block_equals_dense_mlp(top_k: int):
    torch.manual_seed(0)
    mlp = MLP(IN_FEATURES, HIDDEN_FEATURES, OUT_FEATURES, ACTIVATION).double()
    block = SparseMoeBlock(IN_FEATURES, HIDDEN_FEATURES, OUT_FEATURES, 4, top_k, ACTIVATION).double()
    block.experts.load_from_dense(mlp)
    hidden_states_RND = torch.randn(3, 17, IN_FEATURES, dtype=torch.float64)

    # Identical experts and weights summing to 1: the random router cannot change the output.
    out_RNO, aux = block(hidden_states_RND)
    assert (aux.tokens_per_expert_E > 0).sum() > 1
    torch.testing.assert_close(out_RNO, mlp(hidden_states_RND), rtol=0, atol=1e-12)


@pytest.mark.parametrize("top_k", [0, 5])
def test_top_k_out_of_range_is_rejected(top_k: int):
    with pytest.raises(ValueError, match=f"top_k={top_k}"):
        SparseMoeBlock(IN_FEATURES, HIDDEN_FEATURES, OUT_FEATURES, 4, top_k, ACTIVATION)

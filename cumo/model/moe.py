"""Sparse top-k Mixture-of-Experts MLP: the block CuMo co-upcycles into CLIP and the connector.

Routing and auxiliary losses follow CuMo's `CLIPEncoderMoELayer` (multimodal_encoder/clip_smoe.py) and
`MLPMoE` (multimodal_projector/builder.py), https://github.com/SHI-Labs/CuMo:

- router softmax over E experts (in fp32 or wider here), top-k, the k weights re-normalised to sum to 1;
- balance loss per "image" (row of the input): E^2 * mean_e(P_e * f_e) with P_e the mean router
  probability of expert e over the row's tokens and f_e the fraction of the row's tokens whose top-1 is e
  (Switch Transformer, Fedus et al. 2021, eq. 4; 1.0 at perfect balance);
- router z-loss: mean over tokens of logsumexp(logits)^2 (ST-MoE, Zoph et al. 2022, eq. 5).

CuMo's forward loops over images and experts (`reference_forward` below keeps that loop as the test
oracle). Here the k copies of every token are sorted by expert so each expert runs one matmul over a
contiguous slice; the only host sync is reading the per-expert counts. Expert weights are stacked into one
parameter per role, so every expert parameter takes part in every step whatever the routing: an expert
that gets no token still has a (zero) gradient, and neither ZeRO-3 nor DDP waits on it.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


class MLP(nn.Module):
    """fc1 -> act -> fc2: the dense block every expert starts as (CLIP's MLP, the `mlp2x_gelu` connector)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, activation: str):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = ACT2FN[activation]
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class StackedExperts(nn.Module):
    """E MLPs with their weights stacked on a leading expert dimension (named like `MLP`'s fc1/fc2)."""

    def __init__(
        self, num_experts: int, in_features: int, hidden_features: int, out_features: int, activation: str
    ):
        super().__init__()
        self.num_experts = num_experts
        self.act = ACT2FN[activation]
        self.fc1_weight = nn.Parameter(torch.empty(num_experts, hidden_features, in_features))  # (E, H, D)
        self.fc1_bias = nn.Parameter(torch.empty(num_experts, hidden_features))  # (E, H)
        self.fc2_weight = nn.Parameter(torch.empty(num_experts, out_features, hidden_features))  # (E, O, H)
        self.fc2_bias = nn.Parameter(torch.empty(num_experts, out_features))  # (E, O)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Each expert initialised exactly as an nn.Linear of its shape would be.
        for weight, bias in ((self.fc1_weight, self.fc1_bias), (self.fc2_weight, self.fc2_bias)):
            bound = 1 / math.sqrt(weight.shape[-1])
            for e in range(self.num_experts):
                nn.init.kaiming_uniform_(weight[e], a=math.sqrt(5))
            nn.init.uniform_(bias, -bound, bound)

    def load_from_dense(self, mlp: MLP) -> None:
        """Make every expert a copy of `mlp` (co-upcycling, CuMo section 3.2)."""
        with torch.no_grad():
            self.fc1_weight.copy_(mlp.fc1.weight.expand_as(self.fc1_weight))
            self.fc1_bias.copy_(mlp.fc1.bias.expand_as(self.fc1_bias))
            self.fc2_weight.copy_(mlp.fc2.weight.expand_as(self.fc2_weight))
            self.fc2_bias.copy_(mlp.fc2.bias.expand_as(self.fc2_bias))

    def expert(self, e: int, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.act(F.linear(hidden_states, self.fc1_weight[e], self.fc1_bias[e]))
        return F.linear(hidden_states, self.fc2_weight[e], self.fc2_bias[e])

    def forward(self, sorted_states_SD: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Rows of `sorted_states_SD` are grouped by expert, `counts[e]` rows for expert e. Returns (S, O)."""
        # unbind once: indexing `weight[e]` per expert would make each backward zero-fill a full (E, ...)
        # gradient (measured: a third of the block's CPU time); unbind's backward stacks the E pieces once.
        fc1_w, fc1_b, fc2_w, fc2_b = (
            p.unbind(0) for p in (self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias)
        )
        chunks = sorted_states_SD.split(counts)
        hidden = [self.act(F.linear(chunk, fc1_w[e], fc1_b[e])) for e, chunk in enumerate(chunks)]
        return torch.cat([F.linear(h, fc2_w[e], fc2_b[e]) for e, h in enumerate(hidden)])


@dataclass
class MoeAux:
    """What a MoE block reports besides its output, per row ("image") so callers can aggregate as CuMo."""

    balance_R: torch.Tensor  # (R,) balance loss of each row
    router_z_R: torch.Tensor  # (R,) router z-loss of each row
    tokens_per_expert_E: torch.Tensor  # (E,) top-k assignments each expert received (int64)


def router_z_loss(router_logits_RNE: torch.Tensor) -> torch.Tensor:
    """Per-row mean over tokens of logsumexp(logits)^2 (ST-MoE eq. 5). Returns (R,)."""
    return torch.logsumexp(router_logits_RNE, dim=-1).square().mean(dim=-1)


def balance_loss(router_probs_RNE: torch.Tensor, top1_RN: torch.Tensor) -> torch.Tensor:
    """Per-row E^2 * mean_e(P_e * f_e), as CuMo's `density_1_proxy * density_1`. Returns (R,).

    P (the mean router probability) carries the gradient; f (the top-1 density) is a count.
    """
    num_experts = router_probs_RNE.shape[-1]
    density_proxy_RE = router_probs_RNE.mean(dim=1)
    density_RE = F.one_hot(top1_RN, num_experts).to(router_probs_RNE.dtype).mean(dim=1)
    return (density_proxy_RE * density_RE).mean(dim=-1) * num_experts**2


class SparseMoeBlock(nn.Module):
    """top_k-of-num_experts MoE MLP over (R, N, D) inputs, R rows ("images") of N tokens."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int,
        num_experts: int,
        top_k: int,
        activation: str,
    ):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be between 1 and num_experts={num_experts}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.router = nn.Linear(in_features, num_experts, bias=False)
        self.experts = StackedExperts(num_experts, in_features, hidden_features, out_features, activation)

    def route(self, hidden_states_RND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, MoeAux]:
        """Router decisions: weights (R, N, K) summing to 1, expert indices (R, N, K), aux losses."""
        # fp32 at least: bf16 routing flips near-ties and its weights do not sum to 1 (Mixtral does the same).
        router_logits_RNE = self.router(hidden_states_RND)
        router_logits_RNE = router_logits_RNE.to(torch.promote_types(router_logits_RNE.dtype, torch.float32))
        router_probs_RNE = router_logits_RNE.softmax(dim=-1)
        weights_RNK, experts_RNK = router_probs_RNE.topk(self.top_k, dim=-1)
        weights_RNK = weights_RNK / weights_RNK.sum(dim=-1, keepdim=True)
        aux = MoeAux(
            balance_R=balance_loss(router_probs_RNE, experts_RNK[..., 0]),
            router_z_R=router_z_loss(router_logits_RNE),
            tokens_per_expert_E=torch.bincount(experts_RNK.flatten(), minlength=self.num_experts),
        )
        return weights_RNK, experts_RNK, aux

    def forward(self, hidden_states_RND: torch.Tensor) -> tuple[torch.Tensor, MoeAux]:
        R, N, D = hidden_states_RND.shape
        K = self.top_k
        weights_RNK, experts_RNK, aux = self.route(hidden_states_RND)

        # Sort the R*N*K (token, expert) pairs by expert; slot s holds token order[s] // K.
        slot_expert_S = experts_RNK.flatten()
        order_S = slot_expert_S.argsort(stable=True)
        counts = aux.tokens_per_expert_E.tolist()  # the one host sync of the layer
        states_TD = hidden_states_RND.reshape(R * N, D)
        sorted_out_SO = self.experts(states_TD[order_S // K], counts)

        # Back to (token, k) order, then the weighted sum over the k experts of each token.
        out_SO = torch.zeros_like(sorted_out_SO).index_copy(0, order_S, sorted_out_SO)
        out_TKO = out_SO.view(R * N, K, -1)
        weights_TK1 = weights_RNK.reshape(R * N, K, 1).to(out_TKO.dtype)
        return (out_TKO * weights_TK1).sum(dim=1).view(R, N, -1), aux


def reference_forward(block: SparseMoeBlock, hidden_states_RND: torch.Tensor) -> torch.Tensor:
    """CuMo's loop over rows and experts (clip_smoe.py): the oracle the sorted forward is tested against."""
    weights_RNK, experts_RNK, _ = block.route(hidden_states_RND)
    R, N, _ = hidden_states_RND.shape
    out = hidden_states_RND.new_zeros(R, N, block.experts.fc2_weight.shape[1])
    for r in range(R):
        for e in range(block.num_experts):
            token_idx, nth_expert = torch.where(experts_RNK[r] == e)
            weight = weights_RNK[r][token_idx, nth_expert, None].to(out.dtype)
            out[r, token_idx] += weight * block.experts.expert(e, hidden_states_RND[r, token_idx])
    return out

"""PhiMoE's sparse MoE block: the sparsemixer top-2 router (not Mixtral's softmax-of-top-k) over SwiGLU experts.

Sparsemixer picks the best expert, then softmaxes only over experts whose logits lie within a relative margin
2 * jitter_eps of it; the gate is that softmax at the chosen expert (so often about 1.0). The second expert is
chosen the same way with the first masked out. In training it samples experts (Gumbel) and uses Heun's third-order
gradient estimate (PhimoeMultiplier); at inference it is deterministic.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..ops import REFERENCE, Ops


class _Multiplier(torch.autograd.Function):
    """Forward: multiplier * mask_for_one. Backward: the sparsemixer gradient estimate w.r.t. the router scores."""

    @staticmethod
    def forward(ctx, scores, multiplier, selected, masked_gates, mask_for_one):  # noqa: D401 - autograd signature
        ctx.save_for_backward(multiplier, selected, masked_gates)
        return multiplier * mask_for_one

    @staticmethod
    def backward(ctx, grad_out):
        multiplier, selected, masked_gates = ctx.saved_tensors
        grad_out = grad_out * multiplier
        grad_scores = masked_gates * grad_out.mul(-1)
        grad_scores.scatter_add_(dim=-1, index=selected, src=grad_out)
        return grad_scores, None, None, None, None


def _pick(scores: torch.Tensor, candidates: torch.Tensor, jitter_eps: float, training: bool,
          second: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One sparsemixer round over `candidates` [N, E] (already-chosen experts at -inf): (gate [N, 1], expert [N, 1])."""
    with torch.no_grad():
        threshold, best = candidates.max(dim=-1, keepdim=True)
        factor = scores.abs().clamp(min=threshold)
        outside = ((threshold - scores) / factor) > (2 * jitter_eps)
    masked = candidates.masked_fill(outside, float("-inf"))
    if training:  # Gumbel sampling of the expert
        noise = torch.empty_like(masked, memory_format=torch.legacy_contiguous_format).exponential_().log()
        chosen = (masked - noise).max(dim=-1)[1].unsqueeze(-1)
    else:
        chosen = best
    gates = torch.softmax(masked, dim=-1)
    gate = gates.gather(dim=-1, index=chosen)
    if training:
        top = gates.max(dim=-1, keepdim=True)[1]
        coin = torch.rand_like(gate)
        if second:  # the reference draws twice here (rand_like(...).uniform_()); same RNG stream, same samples
            coin = coin.uniform_()
        mask_for_one = torch.logical_or(chosen == top, coin > 0.75)  # Heun's third-order method
        mask_for_one = torch.add(0.3333, mask_for_one, alpha=0.6667).type_as(gates)
        gate = _Multiplier.apply(scores, gate, chosen, gates, mask_for_one)
    return gate, chosen


def sparsemixer(scores: torch.Tensor, jitter_eps: float, training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [N, E] -> (gates [N, 2], experts [N, 2])."""
    gate1, expert1 = _pick(scores, scores, jitter_eps, training)
    rest = torch.scatter(scores, -1, expert1, float("-inf"))
    gate2, expert2 = _pick(scores, rest, jitter_eps, training, second=True)
    return torch.cat((gate1, gate2), dim=-1), torch.cat((expert1, expert2), dim=-1)


class Expert(nn.Module):
    """w2(act(w1 x) * w3 x): the checkpoint's per-expert names (w1 gate, w3 up, w2 down)."""

    ops: Ops = REFERENCE

    def __init__(self, hidden_size: int, intermediate_size: int, act: str) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.w2 = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.w3 = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.act_name = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.ops.activations[self.act_name](self.w1(x)) * self.w3(x))


class SparseMoE(nn.Module):
    """`block_sparse_moe`: a bias-free `gate` router and `experts.{e}`; returns (output, router logits [N, E])."""

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, act: str,
                 router_jitter: float, input_jitter: float) -> None:
        super().__init__()
        self.gate = nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = nn.ModuleList(Expert(hidden_size, intermediate_size, act) for _ in range(num_experts))
        self.router_jitter = router_jitter
        self.input_jitter = input_jitter

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, h = x.shape
        if self.training and self.input_jitter > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.input_jitter, 1.0 + self.input_jitter)
        flat = x.reshape(-1, h)  # [N, H]
        logits = self.gate(flat)  # [N, E]
        gates, experts = sparsemixer(logits, self.router_jitter, self.training)  # [N, 2] each
        out = torch.zeros_like(flat)
        for e in experts.unique().tolist():  # ascending, like the reference: same summation order
            token, slot = torch.where(experts == e)
            y = self.experts[e](flat[token]) * gates[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out.reshape(b, t, h), logits

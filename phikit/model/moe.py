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


def stacked_experts_pre_hook(state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                             missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
    """A load-state-dict pre-hook for the decoder layer that holds a `SparseMoE` as `block_sparse_moe` (registered
    there: torch hands a module only the keys under its own prefix, so the sibling `mlp.` keys never reach the
    SparseMoE itself). It reads a transformers 5.x PhiMoE state dict, whose layer holds `mlp.router.weight` [E, H],
    `mlp.experts.gate_up_proj` [E, 2I, H] (gate rows, then up rows) and `mlp.experts.down_proj` [E, H, I], where
    phikit (and the checkpoint files) have `block_sparse_moe.gate.weight` and per-expert w1 (gate), w3 (up), w2
    (down): the stacked tensors are split into those, exactly (views, no arithmetic)."""
    moe, stacked = prefix + "block_sparse_moe.", prefix + "mlp."
    router, gate_up, down = stacked + "router.weight", stacked + "experts.gate_up_proj", stacked + "experts.down_proj"
    if not any(k in state_dict for k in (router, gate_up, down)):
        return
    per_expert = next((k for k in state_dict if k.startswith(moe)), None)
    if per_expert is not None:
        error_msgs.append(f"{prefix[:-1]}: the state dict holds both phikit's tensors ({per_expert}) and "
                          f"transformers' stacked ones ({stacked}*); pass one layout")
        return
    converted: dict = {}
    if router in state_dict:
        converted[moe + "gate.weight"] = state_dict[router]
    if gate_up in state_dict:
        t = state_dict[gate_up]
        if t.dim() != 3 or t.shape[1] % 2:
            error_msgs.append(f"{gate_up} has shape {tuple(t.shape)}; transformers' layout is [experts, "
                              f"2 * intermediate_size, hidden_size]")
            return
        inter = t.shape[1] // 2
        for e in range(t.shape[0]):
            converted[f"{moe}experts.{e}.w1.weight"] = t[e, :inter]
            converted[f"{moe}experts.{e}.w3.weight"] = t[e, inter:]
    if down in state_dict:
        t = state_dict[down]
        if t.dim() != 3:
            error_msgs.append(f"{down} has shape {tuple(t.shape)}; transformers' layout is [experts, hidden_size, "
                              f"intermediate_size]")
            return
        for e in range(t.shape[0]):
            converted[f"{moe}experts.{e}.w2.weight"] = t[e]
    for key in (router, gate_up, down):
        state_dict.pop(key, None)
    state_dict.update(converted)

"""Training losses with the reference semantics: shifted causal-LM cross entropy ignoring -100, classification
losses chosen by `problem_type`, and PhiMoE's load-balancing auxiliary loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, num_items_in_batch: int | torch.Tensor | None,
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    if num_items_in_batch is None:
        return F.cross_entropy(logits, targets, ignore_index=ignore_index)
    total = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None,
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross entropy of logits [B, T, V] at t against labels [B, T] at t + 1; labels == -100 are skipped."""
    vocab = logits.shape[-1]
    shifted = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]  # [B, T]
    return _cross_entropy(logits.float().reshape(-1, vocab), shifted.reshape(-1).to(logits.device),
                          num_items_in_batch, ignore_index)


def sequence_classification_loss(pooled_logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """MSE for regression, cross entropy for single-label, BCE-with-logits for multi-label (set on first use)."""
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    labels = labels.to(pooled_logits.device)
    if config.problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(pooled_logits.squeeze(), labels.squeeze())
        return F.mse_loss(pooled_logits, labels)
    if config.problem_type == "single_label_classification":
        return _cross_entropy(pooled_logits.view(-1, num_labels), labels.view(-1), None)
    return F.binary_cross_entropy_with_logits(pooled_logits, labels)


def token_classification_loss(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    return _cross_entropy(logits.float().view(-1, num_labels), labels.view(-1).to(logits.device), None)


def load_balancing_loss(router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int,
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch-Transformer auxiliary loss: E * sum_e (fraction of routings to e) * (mean router prob of e).

    router_logits: one [N, E] per layer; attention_mask [B, T] with N = B*T excludes padding when given.
    """
    device = router_logits[0].device
    tokens_per_expert = torch.zeros(num_experts, dtype=torch.float32, device=device)
    prob_per_expert = torch.zeros(num_experts, dtype=torch.float32, device=device)
    rows: float | torch.Tensor = 0.0
    mask = None if attention_mask is None else attention_mask.reshape(-1).to(device=device, dtype=torch.float32)
    for logits in router_logits:
        probs = F.softmax(logits.to(device), dim=-1)  # [N, E]
        _, chosen = torch.topk(probs, top_k, dim=-1)  # [N, k]
        if mask is None:
            tokens_per_expert = tokens_per_expert + torch.histc(chosen.reshape(-1).float(), bins=num_experts,
                                                                min=0, max=num_experts)
            prob_per_expert = prob_per_expert + probs.float().sum(dim=0)
            rows = rows + probs.shape[0]
        else:
            tokens_per_expert = tokens_per_expert + torch.zeros(num_experts, device=device).scatter_add_(
                0, chosen.reshape(-1), mask.repeat_interleave(top_k))
            prob_per_expert = prob_per_expert + (probs.float() * mask[:, None]).sum(dim=0)
            rows = rows + mask.sum()
    return torch.sum((tokens_per_expert / rows) * (prob_per_expert / rows)) * num_experts

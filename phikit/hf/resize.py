"""`model.resize_token_embeddings(n, pad_to_multiple_of=None, mean_resizing=True)` as transformers 5 does it.

The input embedding is resized in place (the module stays, its weight is replaced); an untied `lm_head` gets a new
`nn.Linear`; a tied head follows the embedding. New rows: with `mean_resizing`, draws from a normal distribution
with the old rows' mean and 1e-9 x their covariance (the old mean where that covariance is not positive definite),
and the head's new biases from N(mean, 1e-9 x std); without it, the model's own initialisation. Modules are built
and drawn in transformers' order, so the same seed gives the same new rows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.distributions import constraints
from torch.distributions.multivariate_normal import MultivariateNormal

from ..generation_config import GenerationArgumentError


def _check(model: Any, new_num_tokens: Any, pad_to_multiple_of: Any, mean_resizing: Any) -> None:
    for name, value in (("new_num_tokens", new_num_tokens), ("pad_to_multiple_of", pad_to_multiple_of)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise GenerationArgumentError(f"resize_token_embeddings: {name}={value!r} must be an integer >= 1 (or "
                                          f"None); pass the tokenizer's size, e.g. len(tokenizer)")
    if not isinstance(mean_resizing, bool):
        raise GenerationArgumentError(f"resize_token_embeddings: mean_resizing={mean_resizing!r} must be True or "
                                      f"False")
    if not isinstance(model.get_input_embeddings(), nn.Embedding):
        raise GenerationArgumentError(f"resize_token_embeddings needs an nn.Embedding input embedding, this model "
                                      f"has {type(model.get_input_embeddings()).__name__}")
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    if head is not None and not tied and type(head) is not nn.Linear:
        raise GenerationArgumentError(f"resize_token_embeddings cannot resize a {type(head).__name__} lm_head "
                                      f"(quantized or packed weights); resize the plain model, then quantize")


def _mean_rows(old_weight: torch.Tensor, new_weight: torch.Tensor, old_rows: int, added: int) -> None:
    """transformers' `_init_added_embeddings_weights_with_mean`."""
    weight = old_weight.to(torch.float32)
    mean = torch.mean(weight, dim=0)
    centered = weight - mean
    covariance = centered.T @ centered / old_rows
    epsilon = 1e-9
    if constraints.positive_definite.check(epsilon * covariance).all():
        distribution = MultivariateNormal(mean, covariance_matrix=epsilon * covariance)
        new_weight[-added:, :] = distribution.sample(sample_shape=(added,)).to(old_weight.dtype)
    else:
        new_weight[-added:, :] = mean[None, :].repeat(added, 1).to(old_weight.dtype)


def _resize_embedding(model: Any, old: nn.Embedding, new_rows: int, mean_resizing: bool) -> None:
    old_rows, dim = old.weight.shape
    if old_rows == new_rows:
        return
    new = nn.Embedding(new_rows, dim, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        if new_rows > old_rows and not mean_resizing:
            model._init_weights(new)
        elif new_rows > old_rows:
            _mean_rows(old.weight.data, new.weight.data, old_rows, new_rows - old_rows)
        n = min(old_rows, new_rows)
        new.weight.data[:n, :] = old.weight.data[:n, :]
    old.weight.data = new.weight.data
    old.num_embeddings = new_rows
    if old.padding_idx is not None and new_rows - 1 < old.padding_idx:
        old.padding_idx = None


def _resized_head(model: Any, old: nn.Linear, new_rows: int, mean_resizing: bool) -> nn.Linear:
    old_rows, dim = old.weight.shape
    if old_rows == new_rows:
        old.out_features = new_rows  # a tied head already follows the embedding
        return old
    has_bias = old.bias is not None
    new = nn.Linear(dim, new_rows, bias=has_bias, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        if new_rows > old_rows and not mean_resizing:
            model._init_weights(new)
        elif new_rows > old_rows:
            added = new_rows - old_rows
            _mean_rows(old.weight.data, new.weight.data, old_rows, added)
            if has_bias:
                mean = torch.mean(old.bias.data, dim=0, dtype=torch.float32)
                std = torch.std(old.bias.data, dim=0).to(torch.float32)
                new.bias.data[-added:].normal_(mean=mean, std=1e-9 * std)
        n = min(old_rows, new_rows)
        new.weight.data[:n, :] = old.weight.data[:n, :]
        if has_bias:
            new.bias.data[:n] = old.bias.data[:n]
    new.requires_grad_(old.weight.requires_grad)
    return new


def resize_token_embeddings(model: Any, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                            mean_resizing: bool = True) -> nn.Embedding:
    """Resize the vocabulary rows of `model` (see the module docstring); returns the input embedding."""
    _check(model, new_num_tokens, pad_to_multiple_of, mean_resizing)
    embedding = model.get_input_embeddings()
    if new_num_tokens is None and pad_to_multiple_of is None:
        return embedding
    rows = embedding.weight.shape[0] if new_num_tokens is None else new_num_tokens
    if pad_to_multiple_of is not None:
        rows = (rows + pad_to_multiple_of - 1) // pad_to_multiple_of * pad_to_multiple_of
    requires_grad = embedding.weight.requires_grad
    _resize_embedding(model, embedding, rows, mean_resizing)
    embedding.requires_grad_(requires_grad)
    head = model.get_output_embeddings()
    if head is not None:
        model.lm_head = _resized_head(model, head, rows, mean_resizing)
    model.config.vocab_size = rows
    if hasattr(model, "vocab_size"):
        model.vocab_size = rows
    model.tie_weights()
    return embedding

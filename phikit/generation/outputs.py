"""What `generate(..., return_dict_in_generate=True)` returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..outputs import ModelOutput


@dataclass
class GenerateDecoderOnlyOutput(ModelOutput):
    """sequences [B * num_return_sequences, prompt + new]; scores / logits: one [B, V] per step when asked.

    With an `assistant_model`: `num_assistant_tokens` drafted, `num_accepted_tokens` of them accepted, and
    `acceptance_rate` = accepted / drafted."""

    sequences: torch.LongTensor | None = None
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    past_key_values: Any = None
    num_assistant_tokens: int | None = None
    num_accepted_tokens: int | None = None
    acceptance_rate: float | None = None


@dataclass
class GenerateBeamDecoderOnlyOutput(ModelOutput):
    """sequences [B * num_return_sequences, prompt + new]; sequences_scores: length-penalised log-probabilities."""

    sequences: torch.LongTensor | None = None
    sequences_scores: torch.Tensor | None = None
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    beam_indices: torch.LongTensor | None = None
    past_key_values: Any = None

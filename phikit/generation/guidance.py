"""Classifier-free guidance: mix next-token log-probabilities with those of an unconditional (negative) prompt."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.cache import DynamicCache


class ClassifierFreeGuidance:
    """scores' = s * (log p(x | prompt) - log p(x | negative)) + log p(x | negative), the reference formula.

    The negative branch runs the same model with its own cache: from `negative_prompt_ids` [B, T'] if given, else
    from the prompt's last token, then one generated token per step.
    """

    def __init__(self, model: torch.nn.Module, guidance_scale: float, negative_ids: torch.Tensor | None = None,
                 negative_mask: torch.Tensor | None = None) -> None:
        self.model = model
        self.scale = guidance_scale
        self.ids = negative_ids
        self.mask = negative_mask
        self.cache = DynamicCache()
        self.first = True

    def _unconditional_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.first:
            self.first = False
            if self.ids is None:
                self.ids = input_ids[:, -1:]
            if self.mask is None:
                self.mask = torch.ones_like(self.ids, dtype=torch.long)
            ids = self.ids.to(input_ids.device)
        else:
            ids = input_ids[:, -1:]
            self.mask = torch.cat((self.mask, torch.ones_like(ids, dtype=torch.long)), dim=1)
        out = self.model(ids, attention_mask=self.mask.to(ids.device), past_key_values=self.cache, use_cache=True,
                         logits_to_keep=1)
        return out.logits[:, -1]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = F.log_softmax(scores, dim=-1)
        unconditional = F.log_softmax(self._unconditional_logits(input_ids), dim=-1)
        return self.scale * (scores - unconditional) + unconditional

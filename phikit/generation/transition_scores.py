"""`model.compute_transition_scores(sequences, scores, beam_indices=None, normalize_logits=False)`: the score of
each generated token at its step, transformers 5's algorithm (equal values on greedy, sampling and beam outputs)."""

from __future__ import annotations

from typing import Any

import torch

from ..generation_config import GenerationArgumentError


def _check(sequences: Any, scores: Any, beam_indices: Any, normalize_logits: Any, vocab_size: int) -> None:
    if not torch.is_tensor(sequences) or sequences.dim() != 2 or sequences.dtype.is_floating_point:
        shape = tuple(sequences.shape) if torch.is_tensor(sequences) else type(sequences).__name__
        raise GenerationArgumentError(f"sequences must be the integer ids [rows, tokens] generate returned "
                                      f"(out.sequences), got {shape}")
    if not isinstance(scores, (tuple, list)) or not scores or not all(torch.is_tensor(s) and s.dim() == 2
                                                                      for s in scores):
        raise GenerationArgumentError("scores must be the non-empty tuple of [rows, vocab] tensors generate "
                                      "returned with output_scores=True, return_dict_in_generate=True (out.scores)")
    shapes = {tuple(s.shape) for s in scores}
    if len(shapes) != 1 or next(iter(shapes))[1] != vocab_size:
        raise GenerationArgumentError(f"scores hold shapes {sorted(shapes)}; every step must be [rows, "
                                      f"vocab_size={vocab_size}], as generate returns them")
    rows, steps = scores[0].shape[0], len(scores)
    if steps > sequences.shape[1]:
        raise GenerationArgumentError(f"scores has {steps} steps but sequences only {sequences.shape[1]} tokens; "
                                      f"pass the sequences and scores of the same generate call")
    if beam_indices is None:
        if sequences.shape[0] != rows:
            raise GenerationArgumentError(f"sequences has {sequences.shape[0]} rows but scores {rows}; beam search "
                                          f"outputs need beam_indices=out.beam_indices")
    elif not torch.is_tensor(beam_indices) or beam_indices.dim() != 2 or beam_indices.shape[0] != \
            sequences.shape[0] or beam_indices.shape[1] > steps or beam_indices.dtype.is_floating_point:
        shape = tuple(beam_indices.shape) if torch.is_tensor(beam_indices) else type(beam_indices).__name__
        raise GenerationArgumentError(f"beam_indices must be the integer [rows={sequences.shape[0]}, steps<={steps}] "
                                      f"tensor generate returned (out.beam_indices), got {shape}")
    elif beam_indices.numel() and int(beam_indices.max()) >= rows:
        raise GenerationArgumentError(f"beam_indices holds beam {int(beam_indices.max())} but scores have {rows} "
                                      f"rows")
    if not isinstance(normalize_logits, bool):
        raise GenerationArgumentError(f"normalize_logits={normalize_logits!r} must be True or False")


def compute_transition_scores(model: Any, sequences: torch.Tensor, scores: tuple[torch.Tensor, ...],
                              beam_indices: torch.Tensor | None = None, normalize_logits: bool = False
                              ) -> torch.Tensor:
    """[rows, steps]: scores[step][beam, token] of each generated token (0 where a beam had already finished)."""
    vocab = model.config.vocab_size
    _check(sequences, scores, beam_indices, normalize_logits, vocab)
    if beam_indices is None:
        beam_indices = torch.arange(scores[0].shape[0]).view(-1, 1).to(sequences.device)
        beam_indices = beam_indices.expand(-1, len(scores))
    stacked = torch.stack(tuple(scores)).reshape(len(scores), -1).transpose(0, 1)  # [rows * vocab, steps]
    if normalize_logits:
        stacked = stacked.reshape(-1, vocab, stacked.shape[-1])
        stacked = torch.nn.functional.log_softmax(stacked, dim=1)
        stacked = stacked.reshape(-1, stacked.shape[-1])
    finished = beam_indices < 0
    length = int((1 - finished.long()).sum(-1).max())
    beam_indices = beam_indices.clone()[:, :length].long()
    finished = finished[:, :length]
    beam_indices[finished] = 0
    offsets = beam_indices * vocab
    cut = sequences.shape[-1] - length
    indices = sequences[:, cut:].to(offsets.device) + offsets
    out = stacked.gather(0, indices)
    out[finished] = 0
    return out

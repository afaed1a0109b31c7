"""Decode loops: sampling/greedy, beam search (the reference's vectorised algorithm), assisted decoding.

Every loop feeds the model only the tokens its cache has not seen, with rope positions counted from each row's
first real token (left padding), and asks for the last position's logits only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.cache import DynamicCache, KVCache
from .step import forward_step
from ..generation_config import GenerationConfig
from .outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput


def _extend(mask: torch.Tensor, n: int = 1) -> torch.Tensor:
    return torch.cat((mask, mask.new_ones(mask.shape[0], n)), dim=1)


def sample(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, gen: GenerationConfig, processors,
           criteria, cache: KVCache | None, streamer=None):
    """Greedy (argmax) or multinomial sampling, one token per step for every row until all rows stop."""
    pad = gen.pad_token_id
    has_eos = any(hasattr(c, "eos_token_id") for c in criteria)
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    scores, raw = [], []
    while True:
        logits = forward_step(model, input_ids, attention_mask, cache)[:, -1]  # [B, V]
        processed = processors(input_ids, logits)
        if gen.output_scores:
            scores.append(processed)
        if gen.output_logits:
            raw.append(logits)
        if gen.do_sample:
            tokens = torch.multinomial(F.softmax(processed, dim=-1), num_samples=1).squeeze(1)
        else:
            tokens = torch.argmax(processed, dim=-1)
        if has_eos:
            tokens = tokens * unfinished + pad * (1 - unfinished)
        input_ids = torch.cat((input_ids, tokens[:, None]), dim=-1)
        attention_mask = _extend(attention_mask)
        if streamer is not None:
            streamer.put(tokens.cpu())
        unfinished = unfinished & ~criteria(input_ids, tuple(scores) or None)
        if int(unfinished.max()) == 0:
            break
    if not gen.return_dict_in_generate:
        return input_ids
    return GenerateDecoderOnlyOutput(sequences=input_ids, scores=tuple(scores) or None, logits=tuple(raw) or None,
                                     past_key_values=cache)


def beam_search(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, gen: GenerationConfig, processors,
                criteria, cache: KVCache | None):
    """Beam search (and beam sampling with do_sample) with the reference's vectorised bookkeeping.

    input_ids [B * beams, T]. Each step keeps the top (1 + #eos) * beams continuations, moves those that hit a
    stopping criterion into the finished set (scored with length_penalty), and continues the best unfinished ones.
    """
    beams, max_length = gen.num_beams, gen.max_length
    flat_batch, prompt_len = input_ids.shape
    batch = flat_batch // beams
    eos = gen.eos_token_id or []
    keep = max(2, 1 + len(eos)) * beams
    device = input_ids.device
    top_beam_mask = torch.cat((torch.ones(beams, dtype=torch.bool), torch.zeros(keep - beams, dtype=torch.bool)))
    top_beam_mask = top_beam_mask.to(device)
    # The reference fills with `pad or eos[0]`, so a pad id of 0 gives eos[0]; same here for identical outputs.
    fill = (gen.pad_token_id or eos[0]) if eos else -1

    running = torch.full((batch, beams, max_length), fill, dtype=torch.long, device=device)
    running[:, :, :prompt_len] = input_ids.view(batch, beams, prompt_len)
    sequences = running.clone()
    running_scores = torch.zeros(batch, beams, device=device)
    running_scores[:, 1:] = -1e9
    beam_scores = torch.full((batch, beams), -1e9, device=device)
    finished = torch.zeros(batch, beams, dtype=torch.bool, device=device)
    improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)
    running_indices = torch.full((batch, beams, max_length - prompt_len), -1, dtype=torch.int32, device=device)
    beam_indices = running_indices.clone()
    scores, raw = [], []
    cur_len = prompt_len
    while True:
        flat = running[:, :, :cur_len].reshape(flat_batch, cur_len)
        logits = forward_step(model, flat, attention_mask, cache)[:, -1]  # [B*beams, V]
        attention_mask = _extend(attention_mask)
        log_probs = processors(flat, F.log_softmax(logits, dim=-1))
        if gen.output_logits:
            raw.append(logits)
        if gen.output_scores:
            scores.append(log_probs)
        vocab = log_probs.shape[-1]
        totals = (log_probs.view(batch, beams, vocab) + running_scores[:, :, None]).reshape(batch, -1)

        # top continuations over (beam, token) pairs
        if gen.do_sample:
            top_idx = torch.multinomial(F.softmax(totals, dim=-1), num_samples=keep)
            top_scores = torch.gather(totals, 1, top_idx)
        else:
            top_scores, top_idx = torch.topk(totals, k=keep)
        from_beam = top_idx // vocab  # [B, keep]
        top_sequences = _gather(running, from_beam)
        top_sequences[:, :, cur_len] = top_idx % vocab
        top_indices = _gather(running_indices, from_beam)
        top_indices[:, :, cur_len - prompt_len] = (from_beam + torch.arange(batch, device=device)[:, None] * beams
                                                   ).to(top_indices.dtype)
        hits = criteria(top_sequences[:, :, :cur_len + 1].reshape(batch * keep, -1), tuple(scores) or None)
        hits = hits.view(batch, keep)

        # the best unfinished continuations run on
        alive_scores = top_scores + hits.float() * -1e9
        pick = torch.topk(alive_scores, k=beams)[1]
        running, running_scores = _gather(top_sequences, pick), _gather(alive_scores, pick)
        running_indices = _gather(top_indices, pick)

        # finished continuations among the top `beams` join the finished set if they beat it
        just_done = hits & top_beam_mask[None, :]
        done_scores = top_scores / ((cur_len + 1 - prompt_len) ** gen.length_penalty)
        full = torch.all(finished, dim=-1, keepdim=True) & (gen.early_stopping is True)
        done_scores = done_scores + full.float() * -1e9 + (~improvable).float() * -1e9 + (~just_done) * -1e9
        merged_scores = torch.cat((beam_scores, done_scores), dim=1)
        best = torch.topk(merged_scores, k=beams)[1]
        sequences = _gather(torch.cat((sequences, top_sequences), dim=1), best)
        beam_scores = _gather(merged_scores, best)
        beam_indices = _gather(torch.cat((beam_indices, top_indices), dim=1), best)
        finished = _gather(torch.cat((finished, just_done), dim=1), best)

        if cache is not None:
            cache.reorder_cache(running_indices[..., cur_len - prompt_len].reshape(-1).long())
        cur_len += 1
        improvable = _still_improvable(improvable, running_scores, beam_scores, finished, cur_len, max_length,
                                       prompt_len, gen)
        go_on = bool(improvable.any()) and not (bool(finished.all()) and gen.early_stopping is True) and \
            not bool(hits.all())
        if not go_on:
            break

    n = gen.num_return_sequences
    sequences = sequences[:, :n].reshape(batch * n, -1)
    beam_scores = beam_scores[:, :n].reshape(batch * n)
    beam_indices = beam_indices[:, :n].reshape(batch * n, -1)
    generated = int((beam_indices + 1).bool().sum(dim=1).max())
    sequences = sequences[:, :prompt_len + generated]
    if not gen.return_dict_in_generate:
        return sequences
    return GenerateBeamDecoderOnlyOutput(sequences=sequences, sequences_scores=beam_scores if gen.output_scores
                                         else None, scores=tuple(scores) or None, logits=tuple(raw) or None,
                                         beam_indices=beam_indices[:, :generated], past_key_values=cache)


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor [B, N, ...] at beams index [B, K] -> [B, K, ...]."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def _still_improvable(improvable: torch.Tensor, running_scores: torch.Tensor, beam_scores: torch.Tensor,
                      finished: torch.Tensor, cur_len: int, max_length: int, prompt_len: int,
                      gen: GenerationConfig) -> torch.Tensor:
    """Could the best running beam still beat the worst finished one? (the reference's heuristic, per row)"""
    if gen.early_stopping == "never" and gen.length_penalty > 0.0:
        best_length = max_length - prompt_len
    else:
        best_length = cur_len - prompt_len
    best_running = running_scores[:, :1] / (best_length**gen.length_penalty)
    worst_finished = torch.where(finished, torch.min(beam_scores, dim=1, keepdim=True)[0], -1.0e9)
    return improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)


def assisted_decode(model, assistant, input_ids: torch.Tensor, attention_mask: torch.Tensor, gen: GenerationConfig,
                    processors, criteria, cache: KVCache | None, streamer=None):
    """Greedy decoding checked against a draft: the assistant proposes up to `num_assistant_tokens` (default 5)
    tokens, the target scores them all in one forward and keeps the longest prefix that equals its own greedy
    choice plus one token of its own. The output is exactly the target's greedy output. `acceptance_rate` is the
    share of proposals the target agreed with, among those it checked before generation stopped."""
    if cache is None:
        raise ValueError("assisted decoding needs use_cache=True")
    draft_len = int(getattr(gen, "num_assistant_tokens", 5) or 5)
    draft_cache = DynamicCache()
    drafted = checked = accepted = 0  # proposed; compared with the target (not cut off by a stop); equal
    scores, raw = [], []
    done = False
    while not done:
        length = input_ids.shape[1]
        room = gen.max_length - length
        proposal, ext, ext_mask = [], input_ids, attention_mask
        for _ in range(min(draft_len, room - 1)):
            logits = forward_step(assistant, ext, ext_mask, draft_cache)[:, -1]
            token = logits.argmax(dim=-1, keepdim=True)
            proposal.append(token)
            ext, ext_mask = torch.cat((ext, token), dim=1), _extend(ext_mask)
        drafted += len(proposal)
        logits = forward_step(model, ext, ext_mask, cache, keep=len(proposal) + 1)  # [1, n+1, V]
        for j in range(len(proposal) + 1):
            prefix = ext[:, :length + j]
            processed = processors(prefix, logits[:, j])
            if gen.output_scores:
                scores.append(processed)
            if gen.output_logits:
                raw.append(logits[:, j])
            choice = processed.argmax(dim=-1, keepdim=True)
            input_ids = torch.cat((input_ids, choice), dim=1)
            attention_mask = _extend(attention_mask)
            if streamer is not None:
                streamer.put(choice[0].cpu())
            stop = bool(criteria(input_ids, tuple(scores) or None).all())
            if j < len(proposal):  # a proposal was checked against the target's own choice
                checked += 1
                matched = torch.equal(choice, proposal[j])
                accepted += int(matched)
            if stop:
                done = True
                break
            if j < len(proposal) and not matched:
                break
        # Caches keep every token but the newest: the target saw ext, the draft ext minus its last proposal.
        keep_len = input_ids.shape[1] - 1
        cache.crop(min(keep_len, cache.get_seq_length()))
        draft_cache.crop(min(keep_len, draft_cache.get_seq_length()))
    rate = accepted / checked if checked else 0.0
    if not gen.return_dict_in_generate:
        return input_ids
    return GenerateDecoderOnlyOutput(sequences=input_ids, scores=tuple(scores) or None, logits=tuple(raw) or None,
                                     past_key_values=cache, num_assistant_tokens=drafted,
                                     num_accepted_tokens=accepted, acceptance_rate=rate)

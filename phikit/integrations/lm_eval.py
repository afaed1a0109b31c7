"""An lm-evaluation-harness model class on phikit's own model and tokenizer, registered as `phikit` in lm-eval's
model registry when this module is imported (lm-eval 0.4 discovers no model classes from other packages):

    import phikit.integrations.lm_eval            # registers "phikit"
    lm_eval.simple_evaluate(model="phikit", model_args="pretrained=FOLDER,batch_size=8", tasks=["hellaswag"])
    phikit eval --model FOLDER --tasks hellaswag --limit 10     # the same from the command line

It follows lm-eval's `HFLM` where numbers are observable, so both give the same loglikelihoods and greedy texts on
the same weights (tested against HFLM on transformers): loglikelihood requests sorted longest first, right-padded,
scored from one forward each batch (log-softmax in fp32 over every logit, as HFLM's default); rolling
loglikelihoods over lm-eval's disjoint windows of `max_length`; `generate_until` batches grouped by generation
arguments, left-padded, greedy unless asked, stopped at the `until` strings and the eos token, which are then cut.
Needs the `eval` extra: pip install 'phikit[eval]'.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

try:
    from lm_eval import utils as lm_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import (handle_stop_sequences, has_bos_prefix, normalize_gen_kwargs,
                                      postprocess_generated_text)
except ImportError as e:  # lm-eval is the optional `eval` extra
    raise ImportError(f"phikit's lm-evaluation-harness model needs lm-eval ({e}): pip install 'phikit[eval]'") from e

from ..hf.auto import AutoModelForCausalLM
from ..tokenizer.tokenization import AutoTokenizer

DEFAULT_MAX_LENGTH = 2048


def _as_int(name: str, value: Any, low: int = 1) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < low or (isinstance(value, float) and value != number):
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    return number


@register_model("phikit")
class PhikitLM(TemplateLM):
    """lm-eval's LM over a phikit causal LM. `pretrained`: a checkpoint folder (or hub id), or a loaded phikit
    model; `tokenizer`: a phikit tokenizer or its folder (default: the model's folder)."""

    backend = "causal"

    def __init__(self, pretrained: Any = None, tokenizer: Any = None, batch_size: int | str = 1,
                 max_length: int | None = None, max_gen_toks: int = 256, dtype: str = "auto",
                 add_bos_token: bool | None = None, device: str | None = None, **model_kwargs: Any) -> None:
        super().__init__()
        if pretrained is None:
            raise ValueError("PhikitLM needs pretrained=FOLDER (a checkpoint folder or hub id) or a phikit model")
        if isinstance(pretrained, (str, os.PathLike)):
            self.model = AutoModelForCausalLM.from_pretrained(pretrained, dtype=dtype, device_map=device,
                                                              **model_kwargs)
            source = os.fspath(pretrained)
        else:
            self.model, source = pretrained, getattr(pretrained, "name_or_path", None)
        self.model.eval()
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            where = tokenizer if tokenizer is not None else source
            if where is None:
                raise ValueError("pass tokenizer= (a phikit tokenizer or its folder) with a model object that has "
                                 "no name_or_path")
            tokenizer = AutoTokenizer.from_pretrained(where)
        self.tokenizer = tokenizer
        self._name = source or type(self.model).__name__
        if str(batch_size).startswith("auto"):
            raise ValueError(f"batch_size={batch_size!r}: phikit's lm-eval model takes a fixed batch size (e.g. 8)")
        self.batch_size = _as_int("batch_size", batch_size)
        self.max_gen_toks = _as_int("max_gen_toks", max_gen_toks)
        config = self.model.config
        self._max_length = _as_int("max_length", max_length) if max_length is not None else (
            getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH)
        self.add_bos_token = add_bos_token
        self.think_end_token = None

    # ------------------------------------------------------------------ what lm-eval reads
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", None) or self._name).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # ------------------------------------------------------------------ tokens
    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        flag = add_special_tokens if add_special_tokens is not None else self.add_bos_token
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            flag = False  # the text already starts with the prefix token
        ids = self.tokenizer.encode(string) if flag is None else self.tokenizer.encode(string,
                                                                                       add_special_tokens=flag)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, override_bs: int | None = None
                              ) -> list[tuple[float, bool]]:
        """requests: ((context, continuation) or None, context ids, continuation ids) -> (logprob, is_greedy)."""
        order = sorted(range(len(requests)), key=lambda i: (-len(requests[i][1]) - len(requests[i][2]),
                                                            tuple(requests[i][1] + requests[i][2])))
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        size = override_bs or self.batch_size
        for start in range(0, len(order), size):
            batch = order[start:start + size]
            inputs = []
            for i in batch:
                _, context, continuation = requests[i]
                if not context or not continuation or len(continuation) > self.max_length:
                    raise ValueError(f"request {i}: the context and the continuation must each hold at least one "
                                     f"token and the continuation at most {self.max_length}")
                inputs.append((context + continuation)[-(self.max_length + 1):][:-1])  # the last one is predicted
            width = max(len(x) for x in inputs)
            ids = torch.zeros(len(inputs), width, dtype=torch.long, device=self.device)  # right-padded
            for row, x in enumerate(inputs):
                ids[row, :len(x)] = torch.tensor(x, dtype=torch.long)
            logprobs = F.log_softmax(self.model(ids).logits.float(), dim=-1)  # [b, width, V]
            for row, i in enumerate(batch):
                continuation = requests[i][2]
                n, length = len(continuation), len(inputs[row])
                picked = logprobs[row, length - n:length]  # [n, V]: the positions that predict the continuation
                want = torch.tensor(continuation, dtype=torch.long, device=picked.device)
                greedy = bool((picked.argmax(-1) == want).all())
                answer = (float(picked.gather(1, want[:, None]).sum()), greedy)
                out[i] = answer
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for index, (string,) in enumerate(req.args for req in requests):
            for window in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, *window))
                owners.append(index)
        scores = self._loglikelihood_tokens(windows)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, scores):
            totals[owner] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        args = [req.args for req in requests]
        out: list[str | None] = [None] * len(args)
        groups: dict[str, list[int]] = {}
        for i, (_, gen_kwargs) in enumerate(args):
            groups.setdefault(repr(sorted(gen_kwargs.items())), []).append(i)
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        for members in groups.values():
            members.sort(key=lambda i: (-len(self.tok_encode(args[i][0])), args[i][0]))
            kwargs = normalize_gen_kwargs(dict(args[members[0]][1]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_new = kwargs.pop("max_gen_toks")
            kwargs.pop("max_length", None)
            if kwargs.get("temperature", 0.0) == 0.0 and kwargs.get("do_sample") is None:
                kwargs["do_sample"] = False
            if kwargs.get("do_sample") is False:
                kwargs.pop("temperature", None)
            room = self.max_length - max_new
            if room <= 0:
                raise ValueError(f"max_gen_toks={max_new} leaves no room for a prompt in max_length="
                                 f"{self.max_length}")
            for start in range(0, len(members), self.batch_size):
                batch = members[start:start + self.batch_size]
                encoded = [self.tok_encode(args[i][0], left_truncate_len=room) for i in batch]
                width = max(len(x) for x in encoded)
                pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
                ids = torch.full((len(batch), width), pad, dtype=torch.long, device=self.device)
                mask = torch.zeros_like(ids)
                for row, x in enumerate(encoded):  # left-padded
                    ids[row, width - len(x):] = torch.tensor(x, dtype=torch.long)
                    mask[row, width - len(x):] = 1
                generated = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new,
                                                stop_strings=until, tokenizer=self.tokenizer, pad_token_id=pad,
                                                **kwargs)
                for row, i in enumerate(batch):
                    text = self.tok_decode(generated[row, width:].tolist())
                    text = postprocess_generated_text(generation=text, stop=until, think_end_token=None)
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", args[i], text)
        return out  # type: ignore[return-value]

"""The checks `GenerationConfig.validate` runs: every generation option's type and range, and the combinations
generate cannot run (transformers 5's `GenerationConfig.validate` and its logits processors' checks, made errors).

Each message names the option, the value, the allowed range and a fix, e.g.
`top_p=1.5 must be a number in (0, 1]; pass a probability such as top_p=0.9`. NaN and infinities fail every range.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


class GenerationArgumentError(ValueError):
    """A generation option or generate() argument has a value generate cannot run; the message says which and why."""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int, fix: str) -> None:
    if not _is_int(value) or value < minimum:
        raise GenerationArgumentError(f"{name}={value!r} must be an integer >= {minimum}; {fix}")


def check_number(name: str, value: Any, low: float, high: float, interval: str, fix: str) -> None:
    """`interval` like "(0, 1]": the brackets say whether `low` / `high` are allowed."""
    ok = _is_number(value) and math.isfinite(value)
    if ok:
        ok = (value > low if interval[0] == "(" else value >= low) and \
             (value < high if interval[-1] == ")" else value <= high)
    if not ok:
        raise GenerationArgumentError(f"{name}={value!r} must be a number in {interval}; {fix}")


def check_bool(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise GenerationArgumentError(f"{name}={value!r} must be True or False (a bool, not "
                                      f"{type(value).__name__})")


def token_ids(name: str, value: Any, vocab_size: int | None, many: bool) -> list[int]:
    """The ids an option names (an int, or with `many` a list / tuple / 1-D tensor of ints), checked."""
    if value is None:
        return []
    if hasattr(value, "tolist") and not _is_int(value):
        value = value.tolist()
    items = list(value) if many and isinstance(value, (list, tuple)) else [value]
    bound = vocab_size if vocab_size is not None else 2**31  # ids index int32 tensors in the kernels
    limit = f"0 <= id < {vocab_size}; the model's vocab_size is {vocab_size}" if vocab_size is not None else \
        "0 <= id < 2**31"
    for i in items:
        if not _is_int(i) or not 0 <= i < bound:
            what = "an integer token id or a list of them" if many else "an integer token id"
            raise GenerationArgumentError(f"{name}={value!r} must be {what} ({limit}); the bad entry is {i!r}")
    return items


def _id_lists(name: str, value: Any, vocab_size: int | None) -> None:
    """bad_words_ids: a list of non-empty lists of token ids."""
    if value is None:
        return
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(w, (list, tuple)) and w
                                                                    for w in value):
        raise GenerationArgumentError(f"{name}={value!r} must be a list of non-empty lists of token ids, e.g. "
                                      f"[[123], [45, 67]] (tokenizer(words, add_special_tokens=False).input_ids)")
    for words in value:
        token_ids(name, list(words), vocab_size, many=True)


def _stop_strings(value: Any) -> None:
    if value is None:
        return
    strings = [value] if isinstance(value, str) else value
    if not isinstance(strings, (list, tuple)) or not strings or not all(isinstance(s, str) and s for s in strings):
        raise GenerationArgumentError(f"stop_strings={value!r} must be a non-empty string or a non-empty list of "
                                      f"non-empty strings, e.g. stop_strings=['\\n\\n']")


def validate_generation_config(gen: Any, vocab_size: int | None = None) -> None:
    """Raise `GenerationArgumentError` for the first option of `gen` (a GenerationConfig) generate cannot run.
    `vocab_size`: the model's, to check the token ids options name."""
    g = gen.__dict__
    for name, minimum, fix in (("max_new_tokens", 1, "pass how many tokens to generate, e.g. max_new_tokens=64"),
                               ("max_length", 1, "it counts the prompt too; prefer max_new_tokens=N"),
                               ("min_length", 0, "it counts the prompt too; prefer min_new_tokens=N"),
                               ("min_new_tokens", 0, "pass how many tokens to generate at least, or None")):
        if g.get(name) is not None:
            check_int(name, g[name], minimum, fix)
    for name in ("do_sample", "output_scores", "output_logits", "return_dict_in_generate", "use_cache"):
        check_bool(name, g.get(name))
    check_int("num_beams", g.get("num_beams", 1), 1, "num_beams=1 is greedy / sampling, more is beam search")
    check_int("num_return_sequences", g.get("num_return_sequences", 1), 1, "pass how many outputs per prompt")
    if g.get("num_assistant_tokens") is not None:
        check_int("num_assistant_tokens", g["num_assistant_tokens"], 1, "pass how many tokens the draft proposes")
    sampling = g.get("do_sample") is True
    if g.get("temperature") is not None:
        if sampling:
            check_number("temperature", g["temperature"], 0, math.inf, "(0, inf)",
                         "pass a positive number such as 0.7; for greedy decoding pass do_sample=False")
        else:
            check_number("temperature", g["temperature"], 0, math.inf, "[0, inf)", "pass a number such as 0.7")
    if g.get("top_k") is not None:
        check_int("top_k", g["top_k"], 0, "pass how many of the most likely tokens to keep, e.g. 50 (0 = off)")
    if g.get("top_p") is not None:
        check_number("top_p", g["top_p"], 0, 1, "(0, 1]", "pass a probability such as top_p=0.9 (1.0 = off)")
    if g.get("min_p") is not None:
        check_number("min_p", g["min_p"], 0, 1, "[0, 1]", "pass a probability such as min_p=0.05, or None")
    if g.get("typical_p") is not None:
        check_number("typical_p", g["typical_p"], 0, 1, "(0, 1]", "pass a probability such as 0.9 (1.0 = off)")
    if g.get("repetition_penalty") is not None:
        check_number("repetition_penalty", g["repetition_penalty"], 0, math.inf, "(0, inf)",
                     "pass a positive number such as 1.1 (1.0 = off; above 1 discourages repeats)")
    if g.get("no_repeat_ngram_size") is not None:
        check_int("no_repeat_ngram_size", g["no_repeat_ngram_size"], 0, "pass an n-gram size such as 3 (0 = off)")
    if g.get("length_penalty") is not None:
        check_number("length_penalty", g["length_penalty"], -math.inf, math.inf, "(-inf, inf)",
                     "pass a finite number such as 1.0")
    if g.get("guidance_scale") is not None:
        check_number("guidance_scale", g["guidance_scale"], -math.inf, math.inf, "(-inf, inf)",
                     "pass a finite number such as 1.5 (1.0 or None = off)")
    if g.get("max_time") is not None:
        check_number("max_time", g["max_time"], 0, math.inf, "[0, inf)", "pass a number of seconds, or None")
    if g.get("early_stopping") not in (None, True, False, "never") or isinstance(g.get("early_stopping"), int) \
            and not isinstance(g.get("early_stopping"), bool):
        raise GenerationArgumentError(f"early_stopping={g.get('early_stopping')!r} must be True, False or 'never'")
    if g.get("cache_implementation") not in (None, "dynamic", "static"):
        raise GenerationArgumentError(f"cache_implementation={g['cache_implementation']!r} is not one of "
                                      f"'dynamic', 'static' (or None for the default)")
    # eos / pad / bos ids past vocab_size are allowed, as transformers allows them: the family defaults (eos and pad
    # 32000 on Phi-3) outlive a small vocab_size in tiny configs, and such an id is only compared with, never looked
    # up (the ids that index the scores, below, are bounded by the vocabulary).
    token_ids("eos_token_id", g.get("eos_token_id"), None, many=True)
    token_ids("pad_token_id", g.get("pad_token_id"), None, many=False)
    token_ids("bos_token_id", g.get("bos_token_id"), None, many=False)
    for name in ("suppress_tokens", "begin_suppress_tokens"):
        if g.get(name) is not None:
            if not isinstance(g[name], (list, tuple)):
                raise GenerationArgumentError(f"{name}={g[name]!r} must be a list of token ids")
            token_ids(name, list(g[name]), vocab_size, many=True)
    _id_lists("bad_words_ids", g.get("bad_words_ids"), vocab_size)
    _stop_strings(g.get("stop_strings"))
    _combinations(g)


def _combinations(g: dict[str, Any]) -> None:
    beams, n = g.get("num_beams", 1), g.get("num_return_sequences", 1)
    if beams > 1 and n > beams:
        raise GenerationArgumentError(f"num_return_sequences={n} cannot exceed num_beams={beams}; raise num_beams "
                                      f"or lower num_return_sequences")
    if beams == 1 and not g.get("do_sample") and n > 1:
        raise GenerationArgumentError(f"greedy decoding returns one sequence per prompt, not num_return_sequences="
                                      f"{n}; use do_sample=True or num_beams >= num_return_sequences")
    if g.get("use_cache") is False and g.get("cache_implementation") == "static":
        raise GenerationArgumentError("cache_implementation='static' needs use_cache=True")
    mx, mn = g.get("max_new_tokens"), g.get("min_new_tokens")
    if mx is not None and mn is not None and mn > mx:
        raise GenerationArgumentError(f"min_new_tokens={mn} is larger than max_new_tokens={mx}; lower "
                                      f"min_new_tokens")

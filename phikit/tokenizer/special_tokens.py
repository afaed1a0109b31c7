"""The special-token half of `PhiTokenizer`: named special tokens, their ids, and adding tokens to the vocabulary."""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Tokenizer, processors

from .call_inputs import check_ids
from .settings_check import SPECIAL_TOKEN_KEYS
from .tokenizer_files import token_content


def _check_token_value(name: str, value: Any) -> None:
    if isinstance(value, AddedToken) or isinstance(value, str) and value:
        return
    if isinstance(value, dict) and isinstance(value.get("content"), str) and value["content"]:
        return
    raise ValueError(f"{name}={value!r} is not a token: give a non-empty string such as '<pad>' (or an AddedToken).")


class SpecialTokensMixin:
    """Special tokens of a tokenizer over `self._tokenizer` (a `tokenizers.Tokenizer`), with `self._special`
    (key -> token), `self.additional_special_tokens`, `self._add_bos` / `self._add_eos`."""

    _tokenizer: Tokenizer
    _special: dict[str, str | None]
    additional_special_tokens: list[str]
    _add_bos: Any
    _add_eos: Any

    # ---------------------------------------------------------------- special tokens

    def _add_missing_special(self, content: str) -> None:
        if self._tokenizer.token_to_id(content) is None:
            self._tokenizer.add_special_tokens([AddedToken(content, special=True, normalized=False)])

    def _update_post_processor(self) -> None:
        # transformers' rule: an explicit add_bos_token / add_eos_token rebuilds the template around $A / $B.
        bos, eos = self.bos_token, self.eos_token
        add_bos, add_eos = bool(self._add_bos) and bos is not None, bool(self._add_eos) and eos is not None
        single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
        pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
        specials = [(bos, self.bos_token_id)] * add_bos + [(eos, self.eos_token_id)] * add_eos
        self._tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                                       special_tokens=specials)

    def _get_special(self, key: str) -> str | None:
        return self._special.get(key)

    def _set_special(self, key: str, value: str | None) -> None:
        if value is not None:
            _check_token_value(key, value)
        value = token_content(value)
        if value is not None and self._tokenizer.token_to_id(value) is None:
            raise ValueError(f"{key}={value!r} is not in the vocabulary; add it with "
                             f"tokenizer.add_special_tokens({{'{key}': {value!r}}}) (and resize the model's "
                             "embeddings), or reuse an existing token, e.g. tokenizer.pad_token = tokenizer.eos_token.")
        self._special[key] = value
        if key in ("bos_token", "eos_token") and (self._add_bos or self._add_eos):
            self._update_post_processor()

    def add_special_tokens(self, special_tokens_dict: dict[str, str | list[str]]) -> int:
        """Add special tokens (`{"pad_token": "<pad>"}`, `{"additional_special_tokens": [...]}`); return how many
        were new to the vocabulary. Everything is checked before anything is added."""
        if not isinstance(special_tokens_dict, dict):
            raise ValueError(f"add_special_tokens takes a dict such as {{'pad_token': '<pad>'}}; got "
                             f"{type(special_tokens_dict).__name__}.")
        for key, value in special_tokens_dict.items():
            if key in ("additional_special_tokens", "extra_special_tokens"):
                if isinstance(value, (str, AddedToken)) or not isinstance(value, (list, tuple)):
                    raise ValueError(f"add_special_tokens: {key} must be a list of tokens; got "
                                     f"{type(value).__name__}.")
                for i, tok in enumerate(value):
                    _check_token_value(f"{key}[{i}]", tok)
            elif key in SPECIAL_TOKEN_KEYS:
                _check_token_value(key, value)
            else:
                raise ValueError(f"unknown special token key {key!r}; use one of {SPECIAL_TOKEN_KEYS} or "
                                 "'additional_special_tokens'.")
        before = len(self)
        for key, value in special_tokens_dict.items():
            if key in ("additional_special_tokens", "extra_special_tokens"):
                for tok in value:
                    self._add_missing_special(token_content(tok))
                    if token_content(tok) not in self.additional_special_tokens:
                        self.additional_special_tokens.append(token_content(tok))
            else:
                self._add_missing_special(token_content(value))
                self._set_special(key, value)
        return len(self) - before

    def add_tokens(self, new_tokens: str | list[str], special_tokens: bool = False) -> int:
        """Add ordinary (or special) tokens to the vocabulary; return how many were new."""
        tokens = [new_tokens] if isinstance(new_tokens, (str, AddedToken)) else new_tokens
        if not isinstance(tokens, (list, tuple)):
            raise ValueError(f"add_tokens takes a token string or a list of them; got {type(new_tokens).__name__}.")
        for i, tok in enumerate(tokens):
            _check_token_value(f"new_tokens[{i}]", tok)
        tokens = list(tokens)
        if special_tokens:
            return self._tokenizer.add_special_tokens(tokens)
        return self._tokenizer.add_tokens(tokens)

    def _token_id(self, key: str) -> int | None:
        token = self._special.get(key)
        return None if token is None else self._tokenizer.token_to_id(token)

    def _set_token_id(self, key: str, value: int | None) -> None:
        self._set_special(key, None if value is None else self._id_to_token_checked(value))

    def _id_to_token_checked(self, value: int) -> str:
        [idx] = check_ids([value], len(self), "id")
        token = self._tokenizer.id_to_token(idx)
        if token is None:  # a hole in the vocabulary
            raise ValueError(f"token id {value} has no token in this vocabulary (0..{len(self) - 1}).")
        return token

    bos_token = property(lambda self: self._get_special("bos_token"), lambda self, v: self._set_special("bos_token", v))
    eos_token = property(lambda self: self._get_special("eos_token"), lambda self, v: self._set_special("eos_token", v))
    unk_token = property(lambda self: self._get_special("unk_token"), lambda self, v: self._set_special("unk_token", v))
    pad_token = property(lambda self: self._get_special("pad_token"), lambda self, v: self._set_special("pad_token", v))
    sep_token = property(lambda self: self._get_special("sep_token"), lambda self, v: self._set_special("sep_token", v))
    cls_token = property(lambda self: self._get_special("cls_token"), lambda self, v: self._set_special("cls_token", v))
    mask_token = property(lambda self: self._get_special("mask_token"),
                          lambda self, v: self._set_special("mask_token", v))
    bos_token_id = property(lambda self: self._token_id("bos_token"), lambda self, v: self._set_token_id("bos_token", v))
    eos_token_id = property(lambda self: self._token_id("eos_token"), lambda self, v: self._set_token_id("eos_token", v))
    unk_token_id = property(lambda self: self._token_id("unk_token"), lambda self, v: self._set_token_id("unk_token", v))
    pad_token_id = property(lambda self: self._token_id("pad_token"), lambda self, v: self._set_token_id("pad_token", v))

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens that are set (what chat templates receive as variables)."""
        return {k: v for k, v in self._special.items() if v is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        """Named special tokens then additional ones, without repeats (transformers' order)."""
        out: list[str] = []
        for tok in [*self._special.values(), *self.additional_special_tokens]:
            if tok is not None and tok not in out:
                out.append(tok)
        return out

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of `all_special_tokens`."""
        return [self._tokenizer.token_to_id(t) for t in self.all_special_tokens]

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        """Id -> AddedToken for every added token (chat tokens, phi-2's whitespace tokens, ...)."""
        return dict(sorted(self._tokenizer.get_added_tokens_decoder().items()))

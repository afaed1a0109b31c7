"""Fuzz target: bytes as one file of a tokenizer folder (tokenizer_config.json, tokenizer.json,
special_tokens_map.json, chat_template.json or added_tokens.json, picked by the first byte), loaded with
`AutoTokenizer.from_pretrained` and used once. Only `TokenizerLoadError` (and its `TokenizerFileError`) may escape.

    python tests/fuzz/fuzz_tokenizer_files.py -max_total_time=120 -timeout=10
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

FILES = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "chat_template.json",
         "added_tokens.json")
_FOLDER: pathlib.Path | None = None


def tiny_tokenizer_json() -> str:
    """A small byte-level BPE tokenizer.json (cheap to load, unlike a real 32k vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate("abcdefghijklmnopqrstuvwxyzĠ")}
    vocab.update({"ab": len(vocab), "Ġa": len(vocab) + 1})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), ("Ġ", "a")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|user|>"])
    return tok.to_str()


BASE_CONFIG = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "model_max_length": 2048,
               "chat_template": "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}",
               "added_tokens_decoder": {"29": {"content": "<|endoftext|>", "special": True}}}


def seeds() -> list[bytes]:
    config = json.dumps(BASE_CONFIG).encode()
    return [b"\x00" + config, b"\x01" + tiny_tokenizer_json().encode(),
            b"\x02" + json.dumps({"pad_token": "<|user|>", "additional_special_tokens": ["<|user|>"]}).encode(),
            b"\x03" + json.dumps({"chat_template": [{"name": "default", "template": "{{ messages }}"}]}).encode(),
            b"\x04" + json.dumps({"<|user|>": 30, "<new>": 31}).encode(), b"\x00[]", b"\x00{\"model_max_length\": \"x\"}"]


def _folder() -> pathlib.Path:
    global _FOLDER
    if _FOLDER is None:
        _FOLDER = pathlib.Path(tempfile.mkdtemp(prefix="fuzz-tokfiles-"))
    return _FOLDER


def TestOneInput(data: bytes) -> None:
    from phikit.tokenizer.tokenization import AutoTokenizer
    from phikit.tokenizer.tokenizer_files import TokenizerLoadError

    if not data:
        return
    folder = _folder()
    for name in FILES:
        (folder / name).unlink(missing_ok=True)
    (folder / "tokenizer.json").write_text(tiny_tokenizer_json(), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(BASE_CONFIG), encoding="utf-8")
    (folder / FILES[data[0] % len(FILES)]).write_bytes(data[1:])
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except TokenizerLoadError:
        return
    ids = tok("ab a", return_offsets_mapping=True)["input_ids"]
    tok.decode(ids)


if __name__ == "__main__":
    from fuzzing import fuzz

    fuzz(TestOneInput, seeds(), ["phikit.tokenizer.tokenization", "phikit.tokenizer.tokenizer_files",
                                 "phikit.tokenizer.settings_check"])

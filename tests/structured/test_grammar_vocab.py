"""llguidance's view of real Phi vocabularies (../shared/fixtures/tokenizers): the tokenizer.json route and phikit's
own token table allow the same ids, padding ids are never allowed, and vocabularies without a tokenizer.json (tiktoken,
as Phi-4-mini ships) work through the table."""

from __future__ import annotations

import json

import pytest
import torch

from phikit import PhiTokenizer
from phikit.structured import Grammar, GrammarMatcher, grammar_tokenizer, token_table
from phikit.structured import bitmask

from tests.tokenizer_cases import TOKENIZERS, require_fixtures

from .common import SCHEMA

require_fixtures()

GRAMMARS = {
    "schema": lambda: Grammar.json_schema(SCHEMA),
    "regex": lambda: Grammar.regex(r"[a-z ]{1,12}\n[0-9]+"),
    "choice": lambda: Grammar.choice(["Paris", "Lyon", "Marseille"]),
}
TEXTS = {"schema": ' {"mood": "sad", "sco', "regex": "hello wor", "choice": "Mar"}


def _mask(llt, grammar: Grammar, prefix: list[int], vocab_limit: int, stops: list[int]) -> torch.Tensor:
    m = GrammarMatcher(grammar, llt, vocab_limit, stops)
    for token in prefix:
        assert m.consume(token), (token, m.error)
    row = bitmask.allocate(1, llt.vocab_size)[0]
    m.fill(row)
    return bitmask.unpack(row[None], llt.vocab_size)[0]


@pytest.mark.parametrize("folder,width", [("phi-3-mini", 32064), ("phi-2", 51200)])
def test_the_token_table_and_tokenizer_json_allow_the_same_ids(folder: str, width: int) -> None:
    tok = PhiTokenizer.from_pretrained(TOKENIZERS / folder)
    stops = [tok.eos_token_id] + ([32007] if folder == "phi-3-mini" else [])
    via_json = grammar_tokenizer(tok, width, stops, route="json")
    via_table = grammar_tokenizer(tok, width, stops, route="table")
    for name, build in GRAMMARS.items():
        grammar = build()
        # llguidance's own tokenization of the text, and (where a leading space is allowed) phikit's whole-prompt
        # encoding, whose SentencePiece dummy-prefix space the choices do not allow
        prefixes = [[], via_json.tokenize_str(TEXTS[name])]
        if name != "choice":
            prefixes.append(tok.encode(TEXTS[name], add_special_tokens=False))
        for prefix in prefixes:
            a = _mask(via_json, grammar, prefix, len(tok), stops)
            b = _mask(via_table, grammar, prefix, len(tok), stops)
            assert a.any()
            assert torch.equal(a, b), (folder, name, prefix, (a != b).nonzero().flatten()[:10])
            assert not a[len(tok):].any(), "an id past the tokenizer was allowed"


def test_the_token_table_spells_pieces_as_bytes() -> None:
    phi3 = PhiTokenizer.from_pretrained(TOKENIZERS / "phi-3-mini")
    table, special = token_table(phi3, 32064)
    assert table[phi3.convert_tokens_to_ids("<0x0A>")] == b"\n"
    assert table[phi3.convert_tokens_to_ids("▁the")] == b" the"
    assert table[32007] == b"\xff<|end|>" and 32007 in special
    assert table[32050] == b""  # the embedding's padding
    phi2 = PhiTokenizer.from_pretrained(TOKENIZERS / "phi-2")
    table, _ = token_table(phi2, 51200)
    assert table[phi2.convert_tokens_to_ids("Ġthe")] == b" the"
    assert table[phi2.convert_tokens_to_ids("Ċ")] == b"\n"


def test_a_tiktoken_vocabulary_constrains_as_well() -> None:
    from tests.test_tool_calls import phi4_mini  # the o200k ranks + Phi-4-mini's config, loaded once per run

    tok = phi4_mini()
    stops = [199999, 200020]
    llt = grammar_tokenizer(tok, 200064, stops, route="table")
    grammar = Grammar.json_schema(SCHEMA)
    text = '{"mood": "happy", "score": 7, "detail": {"word": "ok"}}'
    m = GrammarMatcher(grammar, llt, len(tok), stops)
    for token in tok.encode(text, add_special_tokens=False):
        assert m.consume(token), m.error
    row = bitmask.allocate(1, 200064)[0]
    m.fill(row)
    allowed = bitmask.unpack(row[None], 200064)[0].nonzero().flatten().tolist()
    assert set(allowed) <= set(stops) | {i for i in range(len(tok)) if tok.decode([i]).isspace()}
    assert set(stops) <= set(allowed)


def test_auto_reads_tokenizer_json_only_where_the_tokenizer_came_from_one() -> None:
    from phikit.structured.vocab import _from_tokenizer_json

    assert _from_tokenizer_json(PhiTokenizer.from_pretrained(TOKENIZERS / "phi-3-mini"))
    meta = json.loads((TOKENIZERS / "tiktoken" / "cl100k_base.meta.json").read_text(encoding="utf-8"))
    tiktoken = PhiTokenizer.from_tiktoken(TOKENIZERS / "tiktoken" / "cl100k_base.tiktoken", meta["pat_str"],
                                          TOKENIZERS / "phi-4-base")
    assert not _from_tokenizer_json(tiktoken)  # its folder holds tokenizer_config.json only: the token table

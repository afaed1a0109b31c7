"""The tool-call parser on recorded Phi-4-mini-style outputs, encoded with the real Phi-4-mini tokenizer (o200k ranks +
its tokenizer_config.json): one call, nested arrays, two calls, two regions, text before a call, `parameters`,
vLLM's functools form, malformed JSON (returned as text), markers as text split across chunks (a vocabulary without
the marker tokens), and streamed deltas that concatenate to the final arguments."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest

from phikit import PhiTokenizer
from phikit.tool_calls import ToolCallParser

from tests.tokenizer_cases import TOKENIZERS, require_fixtures

require_fixtures()

START, END, EOT = 200025, 200026, 200020  # <|tool_call|>, <|/tool_call|>, <|end|>


@lru_cache(maxsize=None)
def phi4_mini() -> PhiTokenizer:
    meta = json.loads((TOKENIZERS / "tiktoken" / "o200k_base.meta.json").read_text(encoding="utf-8"))
    return PhiTokenizer.from_tiktoken(TOKENIZERS / "tiktoken" / "o200k_base.tiktoken", meta["pat_str"],
                                      TOKENIZERS / "phi-4-mini")


def ids_of(tok, *parts) -> list[int]:
    out = []
    for part in parts:
        out += part if isinstance(part, list) else tok.encode(part, add_special_tokens=False)
    return out


def parse_whole(tok, ids):
    parser = ToolCallParser(tok)
    parser.feed(ids)
    return parser.finish()


def parse_streamed(tok, ids):
    """One id at a time: (shown content, {index: (id, name, concatenated arguments)}, final ParsedOutput)."""
    parser = ToolCallParser(tok)
    shown, calls = "", {}
    for i in ids:
        text, deltas = parser.feed([i])
        shown += text
        for d in deltas:
            if d.id is not None:
                assert d.index not in calls and d.name
                calls[d.index] = [d.id, d.name, d.arguments]
            else:
                calls[d.index][2] += d.arguments
    return shown, calls, parser.finish()


CASES = {
    "one call": (["<|tool_call|>", '[{"name": "get_weather", "arguments": {"city": "Oslo"}}]', "<|/tool_call|>"],
                 "", [("get_weather", {"city": "Oslo"})]),
    "nested arrays": (["<|tool_call|>", '[{"name": "plot", "arguments": {"points": [[1, 2], [3, [4, 5]]], '
                                        '"style": {"colors": ["red", "blue"], "label": "a}]b"}}}]', "<|/tool_call|>"],
                      "", [("plot", {"points": [[1, 2], [3, [4, 5]]], "style": {"colors": ["red", "blue"],
                                                                              "label": "a}]b"}})]),
    "two calls in a list": (["<|tool_call|>", '[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": '
                                              '{"y": [true, null]}}]', "<|/tool_call|>"],
                            "", [("a", {"x": 1}), ("b", {"y": [True, None]})]),
    "two regions": (["<|tool_call|>", '{"name": "a", "arguments": {}}', "<|/tool_call|>", "<|tool_call|>",
                     '[{"name": "b", "arguments": {"z": "é"}}]', "<|/tool_call|>"],
                    "", [("a", {}), ("b", {"z": "é"})]),
    "text before": (["Let me look that up. ", "<|tool_call|>", '[{"name": "search", "arguments": {"q": "phi"}}]',
                     "<|/tool_call|>"], "Let me look that up. ", [("search", {"q": "phi"})]),
    "parameters key, name last": (["<|tool_call|>", '[{"parameters": {"n": 3}, "name": "roll"}]', "<|/tool_call|>"],
                                  "", [("roll", {"n": 3})]),
    "no end marker": (["<|tool_call|>", '[{"name": "a", "arguments": {"k": "v"}}]'], "", [("a", {"k": "v"})]),
    "functools": (['functools[{"name": "f", "arguments": {"x": 1}}]'], "", [("f", {"x": 1})]),
    "plain text": (["Just an answer, naïve café 😀."], "Just an answer, naïve café 😀.", []),
    "malformed": (["Try: ", "<|tool_call|>", '[{"name": "a", "arguments": {oops', "<|/tool_call|>", " then text"],
                  'Try: <|tool_call|>[{"name": "a", "arguments": {oops<|/tool_call|> then text', []),
    "not calls": (["<|tool_call|>", '[1, 2]', "<|/tool_call|>"], "<|tool_call|>[1, 2]<|/tool_call|>", []),
}


def _ids(tok, parts, markers: bool) -> list[int]:
    out = []
    for part in parts:
        if markers and part == "<|tool_call|>":
            out.append(START)
        elif markers and part == "<|/tool_call|>":
            out.append(END)
        else:
            out += tok.encode(part, add_special_tokens=False)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_recorded_outputs_parse_whole_and_streamed_alike(name: str) -> None:
    tok = phi4_mini()
    parts, content, expected = CASES[name]
    ids = _ids(tok, parts, markers=True) + [EOT]
    whole = parse_whole(tok, ids)
    assert whole.content == content
    assert [(c.name, json.loads(c.arguments)) for c in whole.tool_calls] == expected
    assert all(c.id.startswith("call_") and len(c.id) == 29 for c in whole.tool_calls)
    shown, streamed, final = parse_streamed(tok, ids)
    assert final.content == content and shown == content
    if name != "malformed":  # a malformed region may have streamed deltas before it turned out not to parse
        assert [(v[1], v[2]) for _, v in sorted(streamed.items())] == [(c.name, c.arguments) for c in
                                                                       final.tool_calls]
        assert [v[0] for _, v in sorted(streamed.items())] == [c.id for c in final.tool_calls]


def test_markers_spelled_as_text_split_across_chunks() -> None:
    # phi-2's vocabulary has no marker tokens: the markers arrive as several text tokens, one id at a time
    tok = PhiTokenizer.from_pretrained(TOKENIZERS / "phi-2")
    ids = tok.encode('Sure <|tool_call|>[{"name": "f", "arguments": {"a": [1, {"b": 2}]}}]<|/tool_call|>',
                     add_special_tokens=False)
    shown, streamed, final = parse_streamed(tok, ids)
    assert shown == final.content == "Sure "
    assert [(c.name, json.loads(c.arguments)) for c in final.tool_calls] == [("f", {"a": [1, {"b": 2}]})]
    assert streamed[0][2] == final.tool_calls[0].arguments
    # text that only starts like a marker is held back, then shown
    shown, _, final = parse_streamed(tok, tok.encode("a <|tool and more", add_special_tokens=False))
    assert shown == final.content == "a <|tool and more" and not final.tool_calls


def test_the_first_delta_of_a_call_carries_its_name_and_later_ones_argument_text() -> None:
    tok = phi4_mini()
    ids = _ids(tok, ["<|tool_call|>", '[{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}]',
                     "<|/tool_call|>"], markers=True)
    parser = ToolCallParser(tok)
    deltas = []
    for i in ids:
        deltas += parser.feed([i])[1]
    assert deltas[0].id is not None and deltas[0].name == "get_weather" and deltas[0].index == 0
    assert len(deltas) > 3 and all(d.id is None and d.name is None for d in deltas[1:])
    assert "".join(d.arguments for d in deltas) == '{"city": "Oslo", "unit": "C"}'
    assert parser.finish().tool_calls[0].to_openai() == {
        "id": deltas[0].id, "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "C"}'}}

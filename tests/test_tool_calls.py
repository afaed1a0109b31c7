"""The tool-call parser on recorded Phi-4-mini-style outputs, encoded with the real Phi-4-mini tokenizer (o200k ranks +
its tokenizer_config.json): one call, nested arrays, two calls, two regions, text before a call, `parameters`,
vLLM's functools form, malformed JSON (returned as text), markers as text split across chunks (a vocabulary without
the marker tokens), and streamed deltas that concatenate to the final arguments."""

from __future__ import annotations

import json
import re
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
    "malformed, no end marker": (["Try ", "<|tool_call|>", '[{"name": "a", "argu'],
                                 'Try <|tool_call|>[{"name": "a", "argu', []),
    "no arguments key": (["<|tool_call|>", '[{"name": "now"}, {"name": "later", "arguments": {}}]', "<|/tool_call|>"],
                         "", [("now", {}), ("later", {})]),
    "arguments as a JSON string": (["<|tool_call|>", '[{"name": "f", "arguments": "{\\"a\\": [1, \\"]\\"]}"}]',
                                    "<|/tool_call|>"], "", [("f", {"a": [1, "]"]})]),
    "a second start marker ends the first region": (["<|tool_call|>", '{"name": "a", "arguments": {"x": 1}}',
                                                     "<|tool_call|>", '{"name": "b", "arguments": {}}',
                                                     "<|/tool_call|>", " done"],
                                                    " done", [("a", {"x": 1}), ("b", {})]),
    "text after the call": (["<|tool_call|>", '[{"name": "a", "arguments": {"q": "x"}}]', "<|/tool_call|>",
                             " I called it."], " I called it.", [("a", {"q": "x"})]),
    "multi-token characters": (["龘靐 🧑\u200d🔬 𝔘𝔫𝔦 ", "<|tool_call|>", '[{"name": "t", "arguments": {"s": "𝔘𝔫𝔦 龘"}}]',
                                "<|/tool_call|>"], "龘靐 🧑\u200d🔬 𝔘𝔫𝔦 ", [("t", {"s": "𝔘𝔫𝔦 龘"})]),
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
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", c.id) for c in whole.tool_calls)
    assert len({c.id for c in whole.tool_calls}) == len(whole.tool_calls)
    shown, streamed, final = parse_streamed(tok, ids)
    assert final.content == content and "\ufffd" not in shown
    # what streaming showed is a prefix of the content: only a region that never ended comes out at finish()
    assert shown == content if name != "malformed, no end marker" else shown == "Try "
    assert [(c.name, c.arguments) for c in final.tool_calls] == [(c.name, c.arguments) for c in whole.tool_calls]
    chunked = ToolCallParser(tok)
    for k in range(0, len(ids), 3):
        chunked.feed(ids[k:k + 3])
    assert [(c.name, c.arguments) for c in chunked.finish().tool_calls] == [(c.name, c.arguments) for c in
                                                                            whole.tool_calls]
    assert chunked.finish().content == content
    if not name.startswith("malformed"):  # a malformed region may have streamed deltas before it turned out not to parse
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


def test_control_tokens_never_reach_the_content() -> None:
    # <|tool|> / <|/tool|> are added tokens *not* flagged special in Phi-4-mini's config; a stray end marker (no
    # region open) is a control token too
    tok = phi4_mini()
    ids = [200019] + tok.encode("It is ", add_special_tokens=False) + [200023, 200024, END, 200027] + \
        tok.encode("<warm> & sunny.", add_special_tokens=False) + [EOT, 199999]
    shown, _, final = parse_streamed(tok, ids)
    assert shown == final.content == "It is <warm> & sunny." and not final.tool_calls


def test_content_streams_before_the_call_and_the_call_before_it_ends() -> None:
    tok = phi4_mini()
    parser = ToolCallParser(tok)
    assert parser.feed(tok.encode("Checking.", add_special_tokens=False)) == ("Checking.", [])
    assert not parser.saw_tool_call
    text, deltas = parser.feed([START] + tok.encode('[{"name": "get_weather", "arguments": {"city": "Os',
                                                    add_special_tokens=False))
    assert text == "" and parser.saw_tool_call
    assert [(d.index, d.name, d.arguments) for d in deltas] == [(0, "get_weather", '{"city": "Os')]
    text, deltas = parser.feed(tok.encode('lo"}}, {"name": "b", "parameters": [{"x": [1]}]}]', add_special_tokens=False)
                               + [END])
    assert [(d.index, d.id is None, d.name, d.arguments) for d in deltas] == [
        (0, True, None, 'lo"}'), (1, False, "b", '[{"x": [1]}]')]
    final = parser.finish()
    assert final.content == "Checking." and [(c.name, c.arguments) for c in final.tool_calls] == [
        ("get_weather", '{"city": "Oslo"}'), ("b", '[{"x": [1]}]')]
    assert parser.finish() is final
    with pytest.raises(RuntimeError, match="new parser"):
        parser.feed([1])

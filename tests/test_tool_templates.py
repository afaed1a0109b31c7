"""phikit's Phi-4-mini tool template: the official template's output where the official one works (the recorded
ORT-extensions case, plain chats), and a 3-turn tool conversation (request-level tools, an assistant tool call, a tool
result) rendered and tokenized as Phi-4-mini expects, on the real Phi-4-mini tokenizer."""

from __future__ import annotations

import json

import pytest

from phikit.tokenizer.chat_template import render_chat
from phikit.tool_calls import BUILTIN_TEMPLATES, ToolCallParser, builtin_template, template_reads_tools

from tests.test_tool_calls import END, EOT, START, phi4_mini
from tests.tokenizer_cases import TOKENIZERS, phi_cases, require_fixtures

require_fixtures()

TEMPLATE = builtin_template("phi4-mini-tools")
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


def _official(folder: str) -> str:
    return json.loads((TOKENIZERS / folder / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]


def _render(messages, **kw) -> str:
    [text] = render_chat(TEMPLATE, [messages], eos_token="<|endoftext|>", **kw)
    return text


def test_without_tool_history_it_renders_as_the_official_template() -> None:
    cases = [c for c in phi_cases()["chat_template_and_ids"] + phi_cases()["chat_template_text_only"]
             if c["tokenizer"] == "phi-4-mini"]
    assert cases
    for case in cases:
        assert _render(case["messages"], add_generation_prompt=case["add_generation_prompt"]) == case["expected_text"]
    chats = [[{"role": "user", "content": "Hi"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]]
    for messages in chats:
        for gen in (True, False):
            [official] = render_chat(_official("phi-4-mini"), [messages], add_generation_prompt=gen,
                                     eos_token="<|endoftext|>")
            assert _render(messages, add_generation_prompt=gen) == official


GOLDEN_TEXT = (
    '<|system|>You can use tools.<|tool|>[{"name": "get_weather", "description": "Weather in a city.", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]'
    '<|/tool|><|end|><|user|>Weather in Oslo?<|end|>'
    '<|assistant|><|tool_call|>[{"name": "get_weather", "arguments": {"city": "Oslo"}}]<|/tool_call|><|end|>'
    '<|tool|>{"temp": -3}<|end|><|assistant|>It is -3 degrees.<|end|><|user|>Thanks!<|end|><|assistant|>')
GOLDEN_IDS = [  # the real Phi-4-mini tokenizer (o200k ranks + its tokenizer_config.json)
    200022, 3575, 665, 1199, 8437, 13, 200023, 58, 10848, 897, 1243, 392, 522, 170154, 672, 392, 9186, 1243, 392,
    29602, 306, 261, 5030, 21161, 392, 24021, 1243, 10494, 2493, 1243, 392, 3369, 672, 392, 35913, 1243, 10494, 17500,
    1243, 10494, 2493, 1243, 392, 1655, 18583, 4180, 392, 12919, 1243, 9129, 17500, 2601, 6478, 60, 200024, 200020,
    200021, 29602, 306, 44865, 30, 200020, 200019, 200025, 58, 10848, 897, 1243, 392, 522, 170154, 672, 392, 34317,
    1243, 10494, 17500, 1243, 392, 15097, 746, 57612, 60, 200026, 200020, 200023, 10848, 7340, 1243, 533, 18, 92,
    200020, 200019, 3206, 382, 533, 18, 18210, 13, 200020, 200021, 14897, 0, 200020, 200019]


def _conversation(arguments) -> list[dict]:
    return [
        {"role": "system", "content": "You can use tools."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": -3}'},
        {"role": "assistant", "content": "It is -3 degrees."},
        {"role": "user", "content": "Thanks!"},
    ]


def test_a_three_turn_tool_conversation_renders_and_tokenizes_as_phi4_mini_expects() -> None:
    messages = _conversation('{"city": "Oslo"}')  # OpenAI's shape: arguments as a JSON string
    text = _render(messages, tools=TOOLS, add_generation_prompt=True)
    assert text == GOLDEN_TEXT
    assert _render(_conversation({"city": "Oslo"}), tools=TOOLS, add_generation_prompt=True) == GOLDEN_TEXT  # a dict
    tok = phi4_mini()
    ids = tok.apply_chat_template(messages, tools=TOOLS, chat_template=TEMPLATE, add_generation_prompt=True,
                                  return_dict=False)
    assert ids == GOLDEN_IDS
    system, tool_open, tool_close, user, assistant = 200022, 200023, 200024, 200021, 200019
    assert ids[0] == system and ids[-1] == assistant
    assert ids.count(START) == 1 and ids.count(END) == 1 and ids.index(START) < ids.index(END)
    assert ids[ids.index(START) - 1] == assistant and ids[ids.index(END) + 1] == EOT
    assert ids[ids.index(END) + 2] == tool_open  # the tool result
    assert ids.count(tool_open) == 2 and ids.count(tool_close) == 1 and ids.count(user) == 2
    assert tok.decode(ids) == text
    # the parser reads the rendered call back
    parser = ToolCallParser(tok)
    parser.feed(ids[ids.index(START):ids.index(END) + 2])
    parsed = parser.finish()
    assert parsed.content == "" and [(c.name, c.arguments) for c in parsed.tool_calls] == [
        ("get_weather", '{"city": "Oslo"}')]


def test_assistant_tool_calls_with_content_and_without_arguments() -> None:
    messages = [{"role": "user", "content": "Go"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"type": "function", "function": {"name": "now", "arguments": ""}},
                    {"type": "function", "function": {"name": "find", "arguments": {"q": ["a", {"b": "é"}]}}}]},
                {"role": "tool", "content": "12:00"}, {"role": "tool", "content": "[]"}]
    assert _render(messages, add_generation_prompt=True) == (
        '<|user|>Go<|end|><|assistant|>Checking.<|tool_call|>[{"name": "now", "arguments": {}}, '
        '{"name": "find", "arguments": {"q": ["a", {"b": "é"}]}}]<|/tool_call|><|end|>'
        '<|tool|>12:00<|end|><|tool|>[]<|end|><|assistant|>')


def test_tools_without_a_system_message_get_one() -> None:
    text = _render([{"role": "user", "content": "Hi"}], tools=TOOLS, add_generation_prompt=True)
    assert text.startswith("<|system|><|tool|>[{\"name\": \"get_weather\"") and text.endswith(
        "<|/tool|><|end|><|user|>Hi<|end|><|assistant|>")
    bare = [t["function"] for t in TOOLS]  # function dicts without the {"type", "function"} wrapper
    assert _render([{"role": "user", "content": "Hi"}], tools=bare, add_generation_prompt=True) == text


def test_which_templates_read_tools() -> None:
    assert template_reads_tools(_official("phi-4-mini"))  # message['tools']
    assert template_reads_tools(TEMPLATE)
    assert not template_reads_tools(_official("phi-3-mini"))
    assert template_reads_tools("{% for t in tools %}{{ t }}{% endfor %}")
    assert template_reads_tools("{{ messages[0].tools }}")
    assert template_reads_tools("{% for m in messages %}{% if m.get('tools') %}x{% break %}{% endif %}{% endfor %}")
    assert not template_reads_tools("{% for m in messages %}{{ m.get('content') }}{{ m['tool_calls'] }}{% endfor %}")
    assert not template_reads_tools("")
    with pytest.raises(ValueError, match="phi4-mini-tools"):
        builtin_template("nope")
    assert set(BUILTIN_TEMPLATES) == {"phi4-mini-tools"}

"""Tool calls through the server with the official client, on a tiny random Phi-4-mini-like model with the real
Phi-4-mini tokenizer (o200k ranks + tokenizer_config.json from ../shared/fixtures): `tool_choice: "required"` and a
named function return calls whose name and arguments validate against the tool's schema (a grammar forces them),
streamed and not; `auto` answers; tool history renders with phikit's Phi-4-mini tool template."""

from __future__ import annotations

import json

import pytest

from tests.serve.common import SERVED, start_server, stop
from tests.tokenizer_cases import require_fixtures

require_fixtures()
pytest.importorskip("llguidance", reason="llguidance is not installed: pip install 'phikit[structured]'")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed: pip install -e '.[test]'")
import httpx  # noqa: E402

WEATHER = {"type": "object", "properties": {"city": {"enum": ["Oslo", "Rome"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 5}},
           "required": ["city", "days"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Forecast.", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "The time.", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "Weather in Oslo for 2 days?"}]


@pytest.fixture(scope="module")
def phi4_mini_model(tmp_path_factory):
    """A random 2-layer Phi-4-mini-shaped model (tied head, GQA) with the Phi-4-mini vocabulary, saved."""
    import torch

    from phikit import Phi3Config, Phi3ForCausalLM
    from tests.test_tool_calls import phi4_mini

    tok = phi4_mini()
    config = Phi3Config(vocab_size=200064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                        tie_word_embeddings=True, bos_token_id=199999, eos_token_id=[199999, 200020],
                        pad_token_id=199999)
    torch.manual_seed(0)
    model = Phi3ForCausalLM(config)
    folder = tmp_path_factory.mktemp("phi4-mini") / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(phi4_mini_model, tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("tools"), "--dtype", "float32", "--parallel", "2",
                       "--ctx-size", "1024", model=phi4_mini_model)
    yield srv
    stop(srv.proc)


def _check_calls(calls, names=("get_weather", "get_time")):
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_returns_a_call_that_validates(server):
    client = server.client()
    for seed in range(3):
        out = client.chat.completions.create(model=SERVED, messages=ASK, tools=TOOLS, tool_choice="required",
                                             temperature=1.0, seed=seed, max_tokens=120)
        choice = out.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        _check_calls(choice.message.tool_calls)


def test_a_named_function_is_the_one_called(server):
    out = server.client().chat.completions.create(
        model=SERVED, messages=ASK, tools=TOOLS, max_tokens=120, seed=4, parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = out.choices[0].message.tool_calls
    assert len(calls) == 1
    _check_calls(calls, names=("get_time",))


def test_required_streamed_gives_the_same_shape(server):
    stream = server.client().chat.completions.create(model=SERVED, messages=ASK, tools=TOOLS, tool_choice="required",
                                                     temperature=1.0, seed=7, max_tokens=120, stream=True)
    calls, reason = {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for d in delta.tool_calls or []:
            if d.id is not None:
                calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": d.function.arguments or ""}
            else:
                calls[d.index]["arguments"] += d.function.arguments or ""
        reason = chunk.choices[0].finish_reason or reason
    assert reason == "tool_calls" and calls
    for call in calls.values():
        assert call["id"].startswith("call_") and call["name"] in SCHEMAS
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_auto_answers_with_content_or_calls(server):
    out = server.client().chat.completions.create(model=SERVED, messages=ASK, tools=TOOLS, max_tokens=16, seed=1)
    choice = out.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content is not None or choice.message.tool_calls


def test_tool_history_renders_with_the_phi4_mini_tool_template(server):
    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\", \"days\": 2}"}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "{\"forecast\": \"snow\"}"}]
    body = httpx.post(server.url + "/tokenize", json={"model": SERVED, "messages": messages, "tools": TOOLS},
                      timeout=60).json()
    assert body["prompt"] == (
        "<|system|><|tool|>" + json.dumps([t["function"] for t in TOOLS]) + "<|/tool|><|end|>"
        "<|user|>Weather in Oslo for 2 days?<|end|>"
        '<|assistant|><|tool_call|>[{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}]'
        '<|/tool_call|><|end|><|tool|>{"forecast": "snow"}<|end|><|assistant|>')
    assert 200025 in body["tokens"] and 200026 in body["tokens"]
    out = server.client().chat.completions.create(model=SERVED, messages=messages, tools=TOOLS, max_tokens=8, seed=2)
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_tool_choice_errors_name_the_field(server):
    import openai

    client = server.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SERVED, messages=ASK, tools=TOOLS, max_tokens=4,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    assert err.value.param == "tool_choice" and "nope" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SERVED, messages=ASK, tool_choice="required", max_tokens=4)
    assert err.value.param == "tool_choice"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SERVED, messages=ASK, tools=[{"type": "function"}], max_tokens=4)
    assert err.value.param == "tools[0]"


def test_the_shipped_template_is_chosen_by_name_on_the_command_line():
    from phikit.server.chat import read_chat_template
    from phikit.tool_calls import builtin_template

    assert read_chat_template("phi4-mini-tools") == builtin_template("phi4-mini-tools")


@pytest.fixture(scope="module")
def bundled_tools_server(tmp_path_factory):
    """The bundled model (no tool tokens in its vocabulary) served with the shipped tool template."""
    from tests.serve.common import BUNDLED

    srv = start_server(tmp_path_factory.mktemp("bundled-tools"), "--dtype", "float32", "--parallel", "2",
                       "--chat-template", "phi4-mini-tools", model=BUNDLED)
    yield srv
    stop(srv.proc)


def test_even_the_bundled_model_makes_valid_calls_with_text_markers(bundled_tools_server):
    client = bundled_tools_server.client()
    for stream in (False, True):
        # one call (a random model, free to list calls, may list more than max_tokens holds)
        kwargs = dict(model=SERVED, messages=ASK, tools=TOOLS, tool_choice="required", temperature=1.0, seed=3,
                      max_tokens=150, parallel_tool_calls=False)
        if not stream:
            choice = client.chat.completions.create(**kwargs).choices[0]
            assert choice.finish_reason == "tool_calls" and not choice.message.content
            _check_calls(choice.message.tool_calls)
            continue
        calls, content = {}, ""
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            delta = chunk.choices[0].delta if chunk.choices else None
            content += (delta.content or "") if delta else ""
            for d in (delta.tool_calls or []) if delta else []:
                calls.setdefault(d.index, {"name": d.function.name, "arguments": ""})
                calls[d.index]["arguments"] += d.function.arguments or ""
        assert calls and not content.strip()
        for call in calls.values():
            jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])

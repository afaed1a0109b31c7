"""Structured output through the server with the official client: `response_format` (json_object, json_schema) and
vLLM's `structured_outputs` (regex, choice, grammar, json), streamed and not; schemas that do not compile are 400s
naming the field."""

from __future__ import annotations

import json
import re

import pytest

from tests.serve.common import SERVED, chat_messages, chat_model, start_server, stop  # noqa: F401 (chat_model: a fixture)

pytest.importorskip("llguidance", reason="llguidance is not installed: pip install 'phikit[structured]'")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed: pip install -e '.[test]'")
import openai  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7},
                   "plan": {"type": "object", "properties": {"first": {"type": "string", "maxLength": 10}},
                            "required": ["first"]}},
    "required": ["city", "days", "plan"],
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA, "strict": True}}


@pytest.fixture(scope="module")
def server(chat_model, tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("structured"), "--parallel", "4", model=chat_model)
    yield srv
    stop(srv.proc)


def test_json_schema_content_validates(server):
    client = server.client()
    for seed in range(5):
        out = client.chat.completions.create(model=SERVED, messages=chat_messages("Plan a trip, as JSON."),
                                             response_format=RESPONSE_FORMAT, temperature=1.0, seed=seed,
                                             max_tokens=200)
        choice = out.choices[0]
        assert choice.finish_reason == "stop", choice
        value = json.loads(choice.message.content)
        jsonschema.validate(value, {**SCHEMA, "additionalProperties": False})


def test_json_schema_streamed_concatenates_to_json_that_validates(server):
    stream = server.client().chat.completions.create(
        model=SERVED, messages=chat_messages("Plan a trip, as JSON."), response_format=RESPONSE_FORMAT,
        temperature=1.0, seed=11, max_tokens=200, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_gives_an_object(server):
    out = server.client().chat.completions.create(model=SERVED, messages=chat_messages("JSON"), max_tokens=120,
                                                  response_format={"type": "json_object"}, seed=3, n=2)
    for choice in out.choices:
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
        else:  # an object still open at max_tokens: a prefix of one
            assert choice.message.content.lstrip().startswith("{")


@pytest.mark.parametrize("structured, check", [
    ({"regex": r"[A-Z][a-z]{2,5} [0-9]{2}"}, lambda s: re.fullmatch(r"[A-Z][a-z]{2,5} [0-9]{2}", s)),
    ({"choice": ["red", "green", "blue"]}, lambda s: s in ("red", "green", "blue")),
    ({"grammar": 'start: "a" "b"+ "c"'}, lambda s: re.fullmatch("ab+c", s)),
    ({"json": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 3}},
     lambda s: isinstance(json.loads(s), list) and all(isinstance(v, bool) for v in json.loads(s))),
])
def test_vllm_structured_outputs_on_completions(server, structured, check):
    out = server.client().completions.create(model=SERVED, prompt="Answer:", max_tokens=60, seed=5, n=2,
                                             temperature=1.0, extra_body={"structured_outputs": structured})
    for choice in out.choices:
        assert choice.finish_reason == "stop" and check(choice.text), choice.text


@pytest.mark.parametrize("fields, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
     "response_format"),
    ({"extra_body": {"structured_outputs": {"regex": "(("}}}, "structured_outputs"),
    ({"extra_body": {"structured_outputs": {"regex": "a", "choice": ["b"]}}}, "structured_outputs"),
    ({"extra_body": {"structured_outputs": {"xml": "a"}}}, "structured_outputs"),
    ({"response_format": {"type": "json_object"}, "extra_body": {"structured_outputs": {"regex": "a"}}},
     "structured_outputs"),
    ({"response_format": {"type": "json_object"}, "extra_body": {"ignore_eos": True}}, "ignore_eos"),
])
def test_grammars_that_cannot_work_are_400_naming_the_field(server, fields, param):
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(model=SERVED, messages=chat_messages("x"), max_tokens=4, **fields)
    assert err.value.param == param, err.value.message

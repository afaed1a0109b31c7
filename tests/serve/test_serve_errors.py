"""Every refusal in OpenAI's error shape with the right status, `param` naming the field and a message that names the
value and the limit: the context, ranges, unknown model, fields the server cannot honour, malformed bodies (400,
never 422), bad token ids, unknown routes. Unknown fields are accepted."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.serve.common import SERVED, chat_messages, chat_model, start_server, stop  # noqa: F401


@pytest.fixture(scope="module")
def server(chat_model, tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("errors"), "--parallel", "2", model=chat_model)
    yield srv
    stop(srv.proc)


def post(server, path: str, body, **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, timeout=60, **({"json": body} if body is not None else {}), **kwargs)


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def chat(**fields) -> dict:
    return {"model": SERVED, "messages": chat_messages("def f(x):"), "max_tokens": 4, **fields}


def test_context_length_exceeded_names_both_numbers(server):
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(model=SERVED, messages=chat_messages("hi"), max_tokens=100000)
    assert err.value.code == "context_length_exceeded" and err.value.param == "max_tokens"
    assert "512" in err.value.message and "100000" in err.value.message
    long_prompt = "x = 1\n" * 400
    with pytest.raises(openai.BadRequestError) as err:
        server.client().completions.create(model=SERVED, prompt=long_prompt, max_tokens=4)
    assert err.value.code == "context_length_exceeded" and "512" in err.value.message
    assert err.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(model=SERVED, messages=chat_messages(long_prompt), max_tokens=4)
    assert err.value.code == "context_length_exceeded" and err.value.param == "messages"


def test_temperature_5_is_400_naming_temperature(server):
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(model=SERVED, messages=chat_messages("hi"), temperature=5)
    assert err.value.param == "temperature" and "5" in err.value.message and "2.0" in err.value.message


def test_unknown_model_is_not_found(server):
    with pytest.raises(openai.NotFoundError) as err:
        server.client().chat.completions.create(model="gpt-4o", messages=chat_messages("hi"), max_tokens=2)
    assert err.value.code == "model_not_found" and "gpt-4o" in err.value.message and SERVED in err.value.message


def test_best_of_2_is_400(server):
    with pytest.raises(openai.BadRequestError) as err:
        server.client().completions.create(model=SERVED, prompt="x", best_of=2, max_tokens=2)
    assert err.value.param == "best_of"


@pytest.mark.parametrize("field, value", [
    ("audio", {"voice": "alloy", "format": "wav"}), ("modalities", ["text", "audio"]),
    ("prediction", {"type": "content", "content": "x"}), ("web_search_options", {}),
    ("response_format", {"type": "xml"}), ("response_format", {"type": "json_schema", "json_schema": {"name": "x"}}),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]), ("tool_choice", "required"),
    ("reasoning_effort", "high"),
])
def test_chat_fields_the_server_cannot_honour_are_400_by_name(server, field, value):
    err = error_of(post(server, "/v1/chat/completions", chat(**{field: value})), 400)
    assert err["param"] == field and err["type"] == "invalid_request_error"


@pytest.mark.parametrize("fields, param", [({"suffix": "end"}, "suffix"), ({"echo": True, "logprobs": 1}, "echo"),
                                           ({"logprobs": 6}, "logprobs")])
def test_completion_fields_the_server_cannot_honour_are_400_by_name(server, fields, param):
    body = {"model": SERVED, "prompt": "x", "max_tokens": 2, **fields}
    assert error_of(post(server, "/v1/completions", body), 400)["param"] == param


def test_defaults_of_unsupported_fields_and_ignored_fields_are_accepted(server):
    body = chat(modalities=["text"], response_format={"type": "text"}, tool_choice="none", tools=[], user="u",
                metadata={"k": "v"}, store=False, service_tier="auto", best_of=1, some_future_field={"x": 1})
    response = post(server, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("fields, param", [
    ({"logit_bias": {"99999": 5}}, "logit_bias"), ({"logit_bias": {"abc": 5}}, "logit_bias"),
    ({"logit_bias": {"5": 500}}, "logit_bias"), ({"top_p": 0}, "top_p"), ({"n": 3}, "n"), ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"), ({"presence_penalty": -3}, "presence_penalty"),
    ({"frequency_penalty": 2.5}, "frequency_penalty"), ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"), ({"stop": [""]}, "stop"), ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"temperature": "hot"}, "temperature"), ({"n": "many"}, "n"), ({"stop": [1, 2]}, "stop"),
    ({"stream": "yes please"}, "stream"), ({"messages": []}, "messages"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),
])
def test_bad_values_are_400_naming_the_field(server, fields, param):
    err = error_of(post(server, "/v1/chat/completions", chat(**fields)), 400)
    assert err["param"] == param, err


def test_malformed_bodies_are_400_never_422(server):
    for raw in (b"{bad json", b"[1, 2]", b"null", b"", b"\xff\xfe"):
        response = httpx.post(server.url + "/v1/chat/completions", content=raw, timeout=30,
                              headers={"content-type": "application/json"})
        error_of(response, 400)
    error_of(httpx.post(server.url + "/v1/completions", content=b"prompt=x", timeout=30,
                        headers={"content-type": "application/x-www-form-urlencoded"}), 400)
    missing = error_of(post(server, "/v1/completions", {"model": SERVED}), 400)
    assert missing["param"] == "prompt"


def test_token_id_prompts_out_of_the_vocabulary_are_400(server):
    for prompt, param in (([1, 2, 99999], "prompt"), ([[1, 2], [-5]], "prompt[1]"), ([], "prompt"), ("", "prompt")):
        err = error_of(post(server, "/v1/completions", {"model": SERVED, "prompt": prompt, "max_tokens": 2}), 400)
        assert err["param"] == param, err
    err = error_of(post(server, "/detokenize", {"tokens": [1, 999999]}), 400)
    assert err["param"] == "tokens" and "999999" in err["message"]


def test_tokenize_needs_exactly_one_of_prompt_and_messages(server):
    error_of(post(server, "/tokenize", {}), 400)
    error_of(post(server, "/tokenize", {"prompt": "x", "messages": chat_messages("x")}), 400)


def test_unknown_routes_and_methods_keep_the_shape(server):
    assert error_of(httpx.get(server.url + "/v1/nothing", timeout=30), 404)["code"] == "not_found"
    error_of(httpx.delete(server.url + "/v1/models", timeout=30), 405)
    assert error_of(httpx.get(server.url + "/v1/models/other", timeout=30), 404)["code"] == "model_not_found"


def test_server_still_healthy_after_the_errors(server):
    assert httpx.get(server.url + "/health", timeout=30).json() == {"status": "ok"}

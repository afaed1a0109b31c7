"""The endpoints: /v1/chat/completions, /v1/completions, /v1/models[/{id}], /tokenize, /detokenize, /health,
/metrics. Every error leaves as OpenAI's shape (`errors.py`); templates and tokenization run off the event loop,
so the engine sees ids only."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .state import ServerState
from .errors import APIError, bad_request
from .metrics import CONTENT_TYPE
from .structured import request_grammar
from .tools import tool_setup
from ..tool_calls import ToolCallParser
from .protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest, check_model,
                       refuse_unsupported)
from .responses import ResponseBuilder
from .runner import ClientGone, RequestRun
from .sampling import sampling_params
from .streaming import HEADERS, sse_stream

router = APIRouter()
CLIENT_CLOSED = 499  # never reaches the client: it has gone


def _state(request: Request) -> ServerState:
    return request.app.state.phikit


def _served(request: Request, model: str | None) -> ServerState:
    state = _state(request).ready()
    check_model(model, state.served_model_name)
    return state


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    state = _state(request)
    status = state.status
    if status == "ok" and not state.engine.alive:  # the engine's thread is gone: nothing will be served
        status = "engine stopped"
    return JSONResponse({"status": status}, status_code=200 if status == "ok" else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = _state(request)
    if state.engine is not None:
        state.metrics.refresh(state.engine.stats())
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


def _model_card(state: ServerState) -> dict[str, Any]:
    return {"id": state.served_model_name, "object": "model", "created": state.created, "owned_by": "phikit",
            "max_model_len": state.max_model_len}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(_state(request).ready())]}


@router.get("/v1/models/{model_id:path}")
async def get_model(request: Request, model_id: str) -> dict[str, Any]:
    state = _served(request, model_id)
    return _model_card(state)


def _check_ids(ids: list[int], vocab_size: int, param: str) -> None:
    if not ids:
        raise bad_request(param, f"{param} is empty; send at least one token")
    bad = next((i for i in ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise bad_request(param, f"{param} has token id {bad}, but this model's ids are 0 to {vocab_size - 1}")


async def _respond(request: Request, state: ServerState, run: RequestRun, builder: ResponseBuilder,
                   stream: bool) -> Response:
    if stream:
        return StreamingResponse(sse_stream(run, builder), media_type="text/event-stream", headers=HEADERS)
    try:
        choices = await run.collect(request.is_disconnected)
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    return JSONResponse(builder.full(choices))


def _accepted(request: Request, body: ChatCompletionRequest | CompletionRequest) -> tuple[ServerState, Any]:
    """What every generation endpoint checks first: the server is ready, the model name is the served one, unknown
    fields are logged and fields it cannot honour refused -> (state, the request's SamplingParams)."""
    state = _served(request, body.model)
    body.log_unknown_fields()
    refuse_unsupported(body)
    grammar = request_grammar(getattr(body, "response_format", None), body.structured_outputs)
    params = sampling_params(body)
    return state, params.with_updates(grammar=grammar) if grammar is not None else params


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    state, params = _accepted(request, body)
    setup = tool_setup(body, state.tokenizer, state.chat_template)
    if setup is not None and setup.grammar is not None:
        if params.grammar is not None:
            raise bad_request("tool_choice", f"tool_choice={body.tool_choice!r} forces a tool call, which excludes "
                                             f"response_format / structured_outputs; send one of them")
        params = params.with_updates(grammar=setup.grammar)
    _, ids = await asyncio.to_thread(state.prompts.prompt_ids, body.messages, bool(body.add_generation_prompt),
                                     bool(body.continue_final_message), body.chat_template_kwargs,
                                     setup.tools if setup else None, setup.template if setup else None)
    if not ids:
        raise bad_request("messages", "the messages render to an empty prompt")
    run = RequestRun(state.engine, state.metrics, "chatcmpl")
    run.submit([ids], params, prompt_param="messages")
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    parsers = (lambda: ToolCallParser(state.tokenizer)) if setup is not None and setup.parse else None
    builder = ResponseBuilder(run, state.served_model_name, state.texts, chat=True, logprobs=bool(body.logprobs),
                              as_ids=bool(body.return_tokens_as_token_ids), include_usage=include_usage,
                              tool_parsers=parsers)
    return await _respond(request, state, run, builder, bool(body.stream))


def _completion_prompts(state: ServerState, prompt: Any) -> tuple[list[list[int]], list[str]]:
    """(ids, text) of each prompt: a string, a list of strings, token ids, or a list of token-id lists."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise bad_request("prompt", "prompt is empty; send a string, a list of strings, token ids, or a list of "
                                    "token-id lists")
    ids, texts = [], []
    for k, item in enumerate(prompt):
        param = "prompt" if len(prompt) == 1 else f"prompt[{k}]"
        if isinstance(item, str):
            if not item:
                raise bad_request(param, f"{param} is an empty string; send some text")
            ids.append(state.prompts.encode(item, add_special_tokens=True))
            texts.append(item)
        elif isinstance(item, int):  # one token-id list: `prompt` is [int, ...]
            _check_ids(list(prompt), state.engine.vocab_size, "prompt")
            return [list(prompt)], [state.tokenizer.decode(list(prompt))]
        else:
            _check_ids(item, state.engine.vocab_size, param)
            ids.append(list(item))
            texts.append(state.tokenizer.decode(list(item)))
        if not ids[-1]:
            raise bad_request(param, f"{param} tokenizes to no tokens")
    return ids, texts


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    state, params = _accepted(request, body)
    ids, texts = await asyncio.to_thread(_completion_prompts, state, body.prompt)
    run = RequestRun(state.engine, state.metrics, "cmpl")
    run.submit(ids, params)
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    builder = ResponseBuilder(run, state.served_model_name, state.texts, chat=False,
                              logprobs=body.logprobs is not None, as_ids=bool(body.return_tokens_as_token_ids),
                              include_usage=include_usage, echo_texts=texts if body.echo else None)
    return await _respond(request, state, run, builder, bool(body.stream))


def _tokenize(state: ServerState, body: TokenizeRequest) -> dict[str, Any]:
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("prompt", "send exactly one of prompt (a string) and messages (a chat)")
    if body.messages is not None:
        setup = tool_setup(body, state.tokenizer, state.chat_template)
        text = state.prompts.render(body.messages, bool(body.add_generation_prompt), bool(body.continue_final_message),
                                    tools=setup.tools if setup else None, template=setup.template if setup else None)
        ids = state.prompts.encode(text, add_special_tokens=bool(body.add_special_tokens))
    else:
        text = body.prompt
        special = True if body.add_special_tokens is None else body.add_special_tokens
        ids = state.prompts.encode(text, add_special_tokens=special)
    out: dict[str, Any] = {"count": len(ids), "max_model_len": state.max_model_len, "tokens": ids, "prompt": text}
    if body.return_token_strs:
        out["token_strs"] = state.tokenizer.convert_ids_to_tokens(ids)
    return out


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    state = _served(request, body.model)
    body.log_unknown_fields()
    return await asyncio.to_thread(_tokenize, state, body)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    state = _served(request, body.model)
    body.log_unknown_fields()
    size = len(state.tokenizer)
    bad = next((i for i in body.tokens if not 0 <= i < size), None)
    if bad is not None:
        raise APIError(400, f"tokens has token id {bad}, but this tokenizer's ids are 0 to {size - 1}", param="tokens")
    return {"prompt": state.tokenizer.decode(body.tokens)}

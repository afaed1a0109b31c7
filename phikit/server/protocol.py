"""Request bodies as pydantic models, in OpenAI's names (plus vLLM's sampling extensions).

Unknown fields are accepted and logged once per name (`extra="allow"`). Known fields this server cannot honour are
refused by name when sent with a non-default value (`refuse_unsupported`): 400, `param` = the field. Ranges are the
engine's to check (`SamplingParams.check`), so a bad value is refused once, in one wording.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from .errors import APIError, bad_request

log = logging.getLogger("phikit.server")
_LOGGED_UNKNOWN: set[str] = set()
MAX_LOGGED_UNKNOWN = 64

TokenIds = list[int]


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    def log_unknown_fields(self) -> None:
        """Log each unknown field name once per process (they are ignored); after MAX_LOGGED_UNKNOWN names, no more
        (clients choose the names: the log and this set stay bounded)."""
        for name in sorted(self.model_extra or {}):
            if name in _LOGGED_UNKNOWN or len(_LOGGED_UNKNOWN) > MAX_LOGGED_UNKNOWN:
                continue
            _LOGGED_UNKNOWN.add(name)
            if len(_LOGGED_UNKNOWN) > MAX_LOGGED_UNKNOWN:
                log.warning("more than %d unknown request fields seen; no more are logged", MAX_LOGGED_UNKNOWN)
            else:
                log.warning("ignoring unknown request field %s (logged once)", repr(name)[:80])


class StreamOptions(OpenAIModel):
    include_usage: Optional[bool] = False
    continuous_usage_stats: Optional[bool] = False


class ChatMessage(OpenAIModel):
    role: str
    content: Union[str, list[dict[str, Any]], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None  # assistant: the calls it made
    tool_call_id: Optional[str] = None  # tool: the call this result answers


class SamplingFields(OpenAIModel):
    """Fields chat and completions share."""

    model: Optional[str] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    n: Optional[int] = 1
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[str, list[str], None] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, float]] = None
    seed: Optional[int] = None
    user: Optional[str] = None  # accepted and ignored
    metadata: Optional[dict[str, Any]] = None  # accepted and ignored
    store: Optional[bool] = None  # accepted and ignored (nothing is stored)
    service_tier: Optional[str] = None  # accepted and ignored
    # vLLM's extensions
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    stop_token_ids: Optional[list[int]] = None
    ignore_eos: Optional[bool] = False
    min_tokens: Optional[int] = 0
    skip_special_tokens: Optional[bool] = True
    return_tokens_as_token_ids: Optional[bool] = False  # logprobs tokens as "token_id:<id>"
    best_of: Optional[int] = None  # refused above 1
    structured_outputs: Optional[dict[str, Any]] = None  # vLLM's: json | regex | choice | grammar | json_object


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = None
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = None
    response_format: Optional[dict[str, Any]] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: Optional[bool] = None  # false: a forced call holds one item; parsed calls are not cut
    functions: Optional[list[dict[str, Any]]] = None
    function_call: Union[str, dict[str, Any], None] = None
    audio: Optional[dict[str, Any]] = None
    modalities: Optional[list[str]] = None
    prediction: Optional[dict[str, Any]] = None
    web_search_options: Optional[dict[str, Any]] = None
    reasoning_effort: Optional[str] = None
    # vLLM's extensions
    add_generation_prompt: Optional[bool] = True
    continue_final_message: Optional[bool] = False
    chat_template_kwargs: Optional[dict[str, Any]] = None


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str], TokenIds, list[TokenIds]]
    logprobs: Optional[int] = None
    echo: Optional[bool] = False
    suffix: Optional[str] = None


class TokenizeRequest(OpenAIModel):
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: Optional[bool] = None  # default: True for a prompt, False for messages (vLLM)
    tools: Optional[list[dict[str, Any]]] = None  # rendered as /v1/chat/completions renders them
    tool_choice: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: Optional[bool] = None
    add_generation_prompt: Optional[bool] = True
    continue_final_message: Optional[bool] = False
    return_token_strs: Optional[bool] = False


class DetokenizeRequest(OpenAIModel):
    model: Optional[str] = None
    tokens: list[int]


def _present(value: Any) -> bool:
    return value is not None and value != [] and value != {} and value != ""


def refuse_unsupported(req: SamplingFields) -> None:
    """400 naming the first known field whose value this server cannot honour."""
    if req.best_of is not None and req.best_of > 1:
        raise bad_request("best_of", f"best_of={req.best_of} is not supported (phikit returns each sample it draws); "
                                     f"use n={req.best_of} and pick the best choice yourself")
    if isinstance(req, ChatCompletionRequest):
        not_supported = {"audio": "audio output", "prediction": "predicted outputs",
                         "web_search_options": "web search", "functions": "function calling",
                         "reasoning_effort": "a reasoning effort setting"}
        for name, what in not_supported.items():
            value = getattr(req, name)  # any value asks for it ({} is web search with its defaults); [] asks nothing
            if value is not None and value != []:
                raise bad_request(name, f"{name} is not supported: phikit serves text models without {what}; "
                                        f"leave {name} unset")
        if req.modalities is not None and list(req.modalities) != ["text"]:
            raise bad_request("modalities", f"modalities={req.modalities!r} is not supported: phikit generates text "
                                            f"only; send [\"text\"] or leave it unset")
        if req.function_call is not None and req.function_call != "none":
            raise bad_request("function_call", "function_call is not supported yet; leave it unset")
        if req.top_logprobs is not None and req.top_logprobs > 0 and not req.logprobs:
            raise bad_request("top_logprobs", f"top_logprobs={req.top_logprobs} needs logprobs=true")
    if isinstance(req, CompletionRequest):
        if _present(req.suffix):
            raise bad_request("suffix", "suffix (insertion) is not supported: Phi models are not trained to fill in "
                                        "the middle; leave suffix unset")
        if req.echo and req.logprobs is not None:
            raise bad_request("echo", "echo together with logprobs is not supported (prompt logprobs are not "
                                      "computed); drop one of them")
        if req.logprobs is not None and not 0 <= req.logprobs <= 5:
            raise bad_request("logprobs", f"logprobs={req.logprobs} must be in [0, 5] for completions (the most "
                                          f"likely tokens per position)")


def check_model(requested: Optional[str], served: str) -> None:
    """404 model_not_found unless `requested` is the served name (or unset)."""
    if requested is not None and requested != served:
        raise APIError(404, f"The model {requested!r} does not exist: this server serves {served!r} (set "
                            f"--served-model-name to change it)", param="model", code="model_not_found")


def parse_logit_bias(bias: Optional[dict[str, float]]) -> Optional[dict[int, float]]:
    """{"123": 5.0} -> {123: 5.0}; a key that is not a token id -> 400 param logit_bias."""
    if not bias:
        return None
    out: dict[int, float] = {}
    for key, value in bias.items():
        try:
            out[int(key)] = value
        except ValueError:
            raise bad_request("logit_bias", f"logit_bias key {key!r} is not a token id; keys are token ids as "
                                            f"strings, e.g. {{\"1234\": -100}}") from None
    return out


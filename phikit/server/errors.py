"""OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, for every error the server returns.

Framework errors are mapped onto it: pydantic / FastAPI validation errors become 400 with `param` = the field (never
422), unknown routes 404, wrong methods 405, and any exception a handler did not expect 500 `server_error` (that
request fails; the server lives on).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.params import ContextLengthError, EngineArgumentError, EngineClosedError, QueueFullError

log = logging.getLogger("phikit.server")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
         429: "rate_limit_error", 500: "server_error", 503: "server_error"}
RETRY_AFTER_S = 1  # what a 429 (full queue) or 503 (loading) tells the client to wait


class APIError(Exception):
    """An error answered in OpenAI's shape: the status, a message that names the value, the limit and the fix, the
    field it is about (`param`) and a machine-readable `code`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(param: str | None, message: str, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_engine(error: Exception, prompt_param: str = "prompt") -> APIError:
    """The APIError of an exception `Engine.submit` raised; `prompt_param` names the request's prompt field
    ("messages" or "prompt"), the field to blame when the prompt alone fills the context."""
    if isinstance(error, ContextLengthError):
        prompt_alone = error.max_tokens is None or error.prompt_tokens >= error.context
        return APIError(400, str(error), param=prompt_param if prompt_alone else error.param,
                        code="context_length_exceeded")
    if isinstance(error, EngineArgumentError):
        return APIError(400, str(error), param=error.param, code=error.code)
    if isinstance(error, QueueFullError):
        return APIError(429, f"the server's waiting queue is full ({error}); retry after {RETRY_AFTER_S} s, or start "
                             f"the server with a larger --max-queue", code="rate_limit_exceeded",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(error, EngineClosedError):
        return unavailable("draining")
    raise error


def unavailable(state: str) -> APIError:
    """503 while the model loads or the server drains (SIGTERM)."""
    if state == "loading":
        return APIError(503, "the model is still loading; retry when GET /health answers 200",
                        code="model_loading", headers={"Retry-After": str(RETRY_AFTER_S)})
    return APIError(503, "the server is shutting down and admits no new requests", code="server_shutting_down")


def param_of(loc: Sequence[Any]) -> str | None:
    """The field a pydantic error location names: ("body", "messages", 0, "content") -> "messages[0].content"."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path") else loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not _is_type_tag(part):
            out += ("." if out else "") + part
    return out or None


def _is_type_tag(part: str) -> bool:
    # pydantic names union members in locations ("stop", "str"); those are not fields
    return part in ("str", "int", "float", "bool", "list", "dict", "list[str]", "list[int]", "list[list[int]]",
                    "function-after", "function-before", "function-wrap", "json-or-python") or "[" in part


def validation_error(error: RequestValidationError) -> APIError:
    """The first validation error as a 400 naming its field (FastAPI's default is a 422 with a list)."""
    errors = error.errors()
    if not errors:
        return bad_request(None, "the request body is invalid")
    first = errors[0]
    kind, loc = first.get("type", ""), first.get("loc", ())
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return bad_request(None, f"the request body is not valid JSON ({detail}); send a JSON object with "
                                 f"Content-Type: application/json")
    param = param_of(loc)
    if param is None and isinstance(first.get("input"), (bytes, str)):  # FastAPI read a non-JSON body as text
        return bad_request(None, "the request body is not a JSON object; send one with Content-Type: "
                                 "application/json")
    if kind == "missing" and param:
        return bad_request(param, f"the field {param!r} is required")
    if param is None:
        return bad_request(None, f"the request body must be a JSON object with the endpoint's fields: "
                                 f"{first.get('msg', 'invalid')}")
    value = first.get("input")
    shown = json.dumps(value, default=str)[:120] if value is not None else "null"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return bad_request(param, f"{param}={shown} is invalid: {first.get('msg', 'invalid value')}{more}")


def install(app: FastAPI) -> None:
    """Register the handlers that keep every error in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}; see GET /openapi.json"
            return APIError(404, message, code="not_found").response()
        if exc.status_code == 405:
            return APIError(405, f"{request.method} is not allowed on {request.url.path}",
                            code="method_not_allowed").response()
        return APIError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        message = " ".join(str(exc).split())[:300]
        return APIError(500, f"internal server error ({type(exc).__name__}: {message}); this is a bug in phikit, "
                             f"please report it", code="server_error").response()

"""`create_app(engine, tokenizer, served_model_name, ...)`: the FastAPI app over a `ServerState`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from . import errors
from .middleware import APIKeyMiddleware, BodyLimitMiddleware
from .options import DEFAULT_MAX_BODY_MB
from .routes import router
from .state import ServerState


def create_app(engine: Any, tokenizer: Any, served_model_name: str, *, api_key: str | None = None,
               max_body_mb: float = DEFAULT_MAX_BODY_MB, chat_template: str | None = None,
               state: ServerState | None = None) -> FastAPI:
    """The app. `engine` / `tokenizer` may be None: the app then answers 503 "loading" until
    `app.state.phikit.attach(engine, tokenizer)`. `chat_template` is a template's text (it overrides the
    tokenizer's)."""
    state = state or ServerState(served_model_name, chat_template)
    if engine is not None:
        state.attach(engine, tokenizer)
    app = FastAPI(title="phikit serve", version="1",
                  description="OpenAI-compatible API over phikit's engine (chat completions, completions, models, "
                              "tokenize / detokenize, health, metrics)")
    app.state.phikit = state
    errors.install(app)
    app.include_router(router)
    # outermost first: the key is checked before a body is read
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(max_body_mb * 2**20))
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    return app

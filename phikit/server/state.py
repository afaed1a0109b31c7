"""`ServerState`: what the routes serve. It is "loading" until `attach(engine, tokenizer)` (so `launch` can listen,
and answer /health with 503, while the model loads), then "ok", then "draining" after SIGTERM: /health answers 503
and new requests 503 while the running ones finish."""

from __future__ import annotations

import time
from typing import Any

from . import errors
from .chat import ChatPrompts
from .logprobs import TokenTexts
from .metrics import ServerMetrics


class ServerState:
    """What the routes serve: the engine, the tokenizer and its prompts, the served name, the metrics."""

    def __init__(self, served_model_name: str, chat_template: str | None = None) -> None:
        self.served_model_name = served_model_name
        self.chat_template = chat_template
        self.status = "loading"  # "loading" -> "ok" -> "draining"
        self.created = int(time.time())
        self.metrics = ServerMetrics()
        self.engine: Any = None
        self.tokenizer: Any = None
        self.prompts: ChatPrompts | None = None
        self.texts: TokenTexts | None = None

    def attach(self, engine: Any, tokenizer: Any) -> None:
        """The model is loaded: serve it."""
        self.engine, self.tokenizer = engine, tokenizer
        self.prompts = ChatPrompts(tokenizer, self.chat_template)
        self.texts = TokenTexts(tokenizer)
        if self.status == "loading":
            self.status = "ok"

    def start_draining(self) -> None:
        self.status = "draining"

    def ready(self) -> "ServerState":
        """Self when serving; 503 while loading or draining."""
        if self.status != "ok":
            raise errors.unavailable(self.status)
        return self

    @property
    def max_model_len(self) -> int:
        return int(self.engine.ctx_size)

"""Pure ASGI middleware, run before any route: the API key (`--api-key`, `Authorization: Bearer K` on /v1/*) and the
body-size limit (`--max-body-mb`, 413).

The body limit reads the body up to the limit before the route sees it (a declared Content-Length over the limit is
refused at once), then replays it; later messages (`http.disconnect`) pass through, so the routes still see a client
leave.
"""

from __future__ import annotations

import hmac
from typing import Any, Awaitable, Callable

from .errors import APIError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _send_error(send: Send, error: APIError) -> None:
    response = error.response()
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class APIKeyMiddleware:
    """401 on /v1/* unless the request carries `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith("/v1/"):
            auth = _header(scope, b"authorization") or ""
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                what = "no API key was given" if not auth else "the API key is wrong"
                await _send_error(send, APIError(401, f"{what}: send the server's --api-key as "
                                                      f"'Authorization: Bearer <key>'", code="invalid_api_key"))
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for a request body over `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: str) -> APIError:
        mb = self.max_bytes / 2**20
        return APIError(413, f"the request body is {size} bytes, over this server's limit of {self.max_bytes} bytes "
                             f"({mb:g} MB); send less, or start the server with a larger --max-body-mb",
                        code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_error(send, self._too_large(declared))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending its body
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _send_error(send, self._too_large(f"more than {self.max_bytes}"))
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

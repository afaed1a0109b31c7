"""Server-sent events by hand: each chunk is `data: {json}\n\n`, the stream ends with `data: [DONE]\n\n`.

Chunks follow the engine's outputs as they arrive, so the choices of n > 1 interleave by `index`. A choice that
ends in "error" sends an error event (`data: {"error": {...}}`) and ends the stream. When the client goes away, the
response's send fails or the stream is cancelled, and `RequestRun.outputs` aborts the engine requests on its way
out.
"""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator

from .errors import APIError
from .responses import ResponseBuilder
from .runner import RequestRun, failed

log = logging.getLogger("phikit.server")
DONE = "data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False, allow_nan=False)}\n\n"


async def sse_stream(run: RequestRun, builder: ResponseBuilder) -> AsyncIterator[str]:
    """The whole event stream of one streaming request."""
    try:
        for chunk in builder.first_chunks():
            yield event(chunk)
        async for choice, out in run.outputs():
            if out.finish_reason in ("error", "abort"):
                try:
                    failed(choice)
                except APIError as e:
                    yield event(e.body())
                run.abort()
                break
            chunk = builder.step_chunk(choice, out)
            if chunk is not None:
                yield event(chunk)
        else:
            if builder.include_usage:
                yield event(builder.usage_chunk())
    except Exception as e:  # a bug while streaming: this stream says so and ends; the server lives on
        log.exception("internal error while streaming %s", run.id)
        run.abort()
        yield event(APIError(500, f"internal server error while streaming ({type(e).__name__}: {e}); this is a bug "
                                  f"in phikit, please report it", code="server_error").body())
    yield DONE

"""ASGI middleware: request ids, the body size limit, draining, and per-route metrics."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.kserve.routes import error_response as v2_error
from service.api.openai.errors import plain_error as openai_error
from service.metrics import Metrics
from service.responses import error_response

log = logging.getLogger(__name__)

REQUEST_ID = "x-request-id"
# Paths whose errors take OpenAI's shape rather than attnserve's own.
OPENAI_PATHS = ("/v1/completions", "/v1/models", "/tokenize", "/detokenize", "/tokenizer_info")
DRAINING = "the server is shutting down; retry on another replica"


def protocol_error(path: str, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> ASGIApp:
    """An error answer in the shape of the protocol that the path belongs to."""
    if path.startswith(OPENAI_PATHS):
        return openai_error(status, kind, message, headers)
    if path.startswith("/v2/"):
        return v2_error(status, message, headers)
    return error_response(status, kind, message, headers=headers)


def takes_work(path: str) -> bool:
    """Paths that run the model: refused while draining (probes, metrics and metadata keep answering)."""
    return path.startswith(("/v1/", *OPENAI_PATHS)) or (path.startswith("/v2/models/") and path.endswith("/infer"))


class RequestContext:
    """Pure ASGI (not BaseHTTPMiddleware), so it adds no task per request on the hot path."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, state: Any) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = headers.get(REQUEST_ID.encode(), b"").decode("latin-1")[:128] or uuid.uuid4().hex
        path = scope["path"]
        status = 500
        held: Message | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, held
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
                # Held back until the body is ready, so that head and body leave in the same event-loop
                # turn: a replica that dies mid-response must not leave a proxy with headers it cannot retry.
                held = message
                return
            if held is not None:
                start, held = held, None
                await send(start)
            await send(message)

        async def reply(code: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
            await protocol_error(path, code, kind, message, headers)(scope, receive, send_with_id)

        try:
            if self.state.draining and takes_work(path):
                await reply(503, "draining", DRAINING, {"Retry-After": "1"})
                return
            body_or_none = await self._read_body(headers, receive)
            if body_or_none is None:
                await reply(413, "body_too_large", f"request body is larger than MAX_BODY_BYTES={self.max_body_bytes}")
                return
            body = body_or_none
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if sent:
                    return await receive()  # after the body: wait for the disconnect as usual
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            # The matched route's template keeps label values bounded, whatever paths clients send.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            log.debug("%s %s %d %.1fms id=%s", scope["method"], path, status, elapsed * 1000, request_id)

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes | None:
        """The whole body, or None when it is over the limit (checked before reading when declared)."""
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

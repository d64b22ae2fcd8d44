"""ASGI middleware: request ids, the body size limit, draining, and per-route metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import context, trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.access import bearer_matches
from service.api.budget import BUDGET_KEY, Reservation, ResponseBudget
from service.api.deps import LEASES_KEY, LOG_KEY, new_request_id, release_leases
from service.api.plugin import Protocol
from service.api.spans import start_server_span
from service.server.connection import SCOPE_KEY
from service.server.logs import ACCESS
from service.server.metrics import Metrics

log = logging.getLogger(__name__)

REQUEST_ID = "x-request-id"
DRAINING = "the server is shutting down; retry on another replica"
TRACE_HEADERS = (b"traceparent", b"tracestate")


class RequestContext:
    """Pure ASGI (not BaseHTTPMiddleware), so it adds no task per request on the hot path.

    Per request: the request id, the drain and auth checks, the body limit, the response-bytes
    reservation, a 500 for anything unhandled, and the metrics, timed to the last byte written.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        settings: Any,
        state: Any,
        budget: ResponseBudget,
        protocols: Sequence[Protocol],
        tracer: Any = None,
    ) -> None:
        self.app = app
        self.tracer = tracer
        self.access_log = settings.access_log
        # The first protocol is the default: it answers for every path that no other one owns.
        self.default, self.protocols = protocols[0], protocols[1:]
        self.takes_work = [p.takes_work for p in protocols]
        self.changes_server = [p.changes_server for p in protocols]
        self.lean = [route for p in protocols for route in p.lean]
        self.admin_keys = [k.encode() for k in settings.admin_key_list()]
        self.metrics = metrics
        self.max_body_bytes = settings.max_body_bytes
        self.state = state
        self.budget = budget
        # The access rule (docs/operations.md, "Authentication"): with API_KEYS set every route but the
        # open ones needs a key; an admin key is a valid key wherever one is asked. With either set, the
        # routes that change what the server serves need an admin key: a user key gets 403, and with
        # API_KEYS alone, every key.
        self.keys = [k.encode() for k in settings.api_key_list()]
        self.all_keys = self.keys + self.admin_keys
        self.open_paths = public_paths(settings) + tuple(path for p in protocols for path in p.public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = headers.get(REQUEST_ID.encode(), b"").decode("latin-1")[:128] or new_request_id()
        path = scope["path"]
        status = 500
        held: Message | None = None
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, held, response_started
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
                response_started = True
                await send(start)
            await send(message)

        async def reply(code: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
            owner = next((p for p in self.protocols if p.owns(path)), self.default)
            await owner.render_error(code, kind, message, headers)(scope, receive, send_with_id)

        held_bytes = Reservation(self.budget)
        scope[BUDGET_KEY] = held_bytes
        scope[LEASES_KEY] = []
        fields: dict[str, Any] = {}  # what the protocols add to this request's access line
        scope[LOG_KEY] = fields
        span: Any = None
        token: Any = None
        if self.tracer is not None:
            span, token = self._start_span(scope, headers, request_id)
        connection = scope.get(SCOPE_KEY)
        try:
            if sum(1 for name, _ in scope["headers"] if name == b"authorization") > 1:
                # Proxies differ in which of several they forward, so none of them is taken.
                await reply(400, "invalid_request", "the request has more than one Authorization header")
                return
            changes_server = (self.keys or self.admin_keys) and any(f(path) for f in self.changes_server)
            if (self.keys and not self._open(path)) or changes_server:
                if not self._authorized(headers, self.all_keys):
                    await reply(401, "unauthorized", UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
                    return
                if changes_server and not self._authorized(headers, self.admin_keys):
                    await reply(403, "forbidden", FORBIDDEN)
                    return
            if self.state.draining and any(f(path) for f in self.takes_work):
                await reply(503, "draining", DRAINING, {"Retry-After": "1"})
                return
            body = await self._read_body(headers, receive)
            if body is TOO_LARGE:
                await reply(413, "body_too_large", f"request body is larger than MAX_BODY_BYTES={self.max_body_bytes}")
                return
            if body is GONE:
                status = 408 if connection is not None and connection.body_timed_out else 499
                return
            assert isinstance(body, bytes)
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if sent:
                    return await receive()  # after the body: wait for the disconnect as usual
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            for lean in self.lean if body else ():
                params = lean.match(scope["method"], path)
                if params is None:
                    continue
                scope["path_params"] = params
                try:
                    response = await lean.handler(scope, headers, body, self.state)
                except Exception:
                    log.exception("unhandled error, id=%s", request_id)
                    await reply(500, "internal_error", "internal error; see the server log")
                    return
                if response is None:  # not a request the lean handler takes: the framework answers it
                    del scope["path_params"]
                    break
                scope["route"] = LeanRoute(lean.path)  # the metrics' label, as the framework's route gives it
                await response(scope, replay, send_with_id)
                if connection is not None and not await connection.flushed():
                    status = 499
                return
            try:
                await self.app(scope, replay, send_with_id)
            except Exception:
                # Here rather than in an app handler, so that the 500 carries its X-Request-ID too.
                log.exception("unhandled error, id=%s", request_id)
                if response_started:
                    raise
                await reply(500, "internal_error", "internal error; see the server log")
            if connection is not None and not await connection.flushed():
                status = 499  # the client left, or was dropped for not reading, before the last byte
        finally:
            held_bytes.release()
            model = release_leases(scope)  # a swapped-out version is freed after its last request
            elapsed = time.perf_counter() - started
            # The matched route's template keeps label values bounded, whatever paths clients send.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status), model, "http").inc()
            self.metrics.latency.labels(route, model, "http").observe(elapsed)
            if self.access_log:
                access = {"request_id": request_id, "method": scope["method"], "path": path, "route": route}
                access.update(status=status, duration_ms=round(elapsed * 1000, 3), model=model)
                if "first_token" in fields:
                    fields["ttft_ms"] = round((fields.pop("first_token") - started) * 1000, 3)
                ACCESS.info("%s %s %d", scope["method"], path, status, extra={**access, **fields})
            if span is not None:
                span.update_name(f"{scope['method']} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if model:
                    span.set_attribute("attnserve.model", model)
                if status >= 500:
                    span.set_status(trace.StatusCode.ERROR)
                span.end()
                context.detach(token)

    def _start_span(self, scope: Scope, headers: dict[bytes, bytes], request_id: str) -> tuple[Any, Any]:
        """The request's server span (service/api/spans.py), from its traceparent and tracestate headers."""
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items() if k in TRACE_HEADERS}
        attributes = {
            "http.request.method": scope["method"],
            "url.path": scope["path"],
            "attnserve.request_id": request_id,
        }
        return start_server_span(self.tracer, f"{scope['method']} {scope['path']}", carrier, attributes)

    def _open(self, path: str) -> bool:
        return path.startswith(self.open_paths) or (path == "/" and "/explorer" in self.open_paths)

    @staticmethod
    def _authorized(headers: dict[bytes, bytes], keys: list[bytes]) -> bool:
        return bearer_matches(headers.get(b"authorization", b""), keys)

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes | object:
        """The whole body; TOO_LARGE past the limit (checked before reading when declared); GONE when
        the client left or its body timed out before it was complete."""
        declared = headers.get(b"content-length")
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > self.max_body_bytes:
            return TOO_LARGE
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return GONE
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return TOO_LARGE
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


TOO_LARGE, GONE = object(), object()


class LeanRoute:
    """What scope["route"] holds for a lean handler: its path, as a framework route has."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


UNAUTHORIZED = "a valid API key is needed: send it as 'Authorization: Bearer KEY'"
FORBIDDEN = "changing the models needs an admin key (ADMIN_API_KEYS)"


def public_paths(settings: Any) -> tuple[str, ...]:
    """The server's paths that never need a key (probes), and those that the settings open; the
    protocols add their own probes (Protocol.public_paths)."""
    paths = ["/healthz", "/health", "/readyz"]
    if not settings.metrics_need_key:
        paths.append("/metrics")
    if not settings.docs_need_key:
        paths += ["/docs", "/openapi.json", "/redoc"]
    if not settings.explorer_need_key:
        paths.append("/explorer")
    return tuple(paths)

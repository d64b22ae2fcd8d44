"""What every gRPC call goes through, as every HTTP request does in the middleware (service/server/
middleware.py): the request id, the API keys (from the `authorization` metadata), drain, a lease on the
model and a share of the answer budget held for the call, the W3C `traceparent` continued, the
metrics (with protocol="grpc") and the JSON access line; and each error as the gRPC status Triton
would answer with, its message naming what was wrong.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc
from opentelemetry import context, trace

from service.api.access import bearer_matches
from service.api.budget import BUDGET_KEY, AnswerTooLargeError, Reservation
from service.api.deps import LEASES_KEY, LOG_KEY, new_request_id, release_leases
from service.api.kserve.codec import V2Error
from service.api.plugin import core_problem
from service.api.spans import start_server_span

log = logging.getLogger(__name__)
ACCESS = logging.getLogger("attnserve.access")  # the access lines' logger, as HTTP's (service/server/logs.py)
SERVICE = "inference.GRPCInferenceService"
Code = grpc.StatusCode

# A core error's class (service.api.plugin.Problem) -> the status Triton answers with.
GRPC_CODE = {
    "invalid": Code.INVALID_ARGUMENT,
    "not_found": Code.NOT_FOUND,
    "overloaded": Code.UNAVAILABLE,
    "draining": Code.UNAVAILABLE,
    "timeout": Code.DEADLINE_EXCEEDED,
}
# The HTTP status the same failure gets, for the metrics' status label: dashboards and alerts on
# attnserve_requests_total (5xx rates, 503s) read both protocols alike.
HTTP_STATUS = {
    Code.OK: 200,
    Code.INVALID_ARGUMENT: 400,
    Code.RESOURCE_EXHAUSTED: 400,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.NOT_FOUND: 404,
    Code.CANCELLED: 499,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
}
DRAINING = "the server is shutting down; retry on another replica"
UNAUTHENTICATED = "a valid API key is needed: send it as the metadata 'authorization: Bearer KEY'"
FORBIDDEN = "changing the models needs an admin key (ADMIN_API_KEYS)"

T = TypeVar("T")


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message for an error raised while answering a call."""
    if isinstance(exc, Refused):
        return exc.code, str(exc)
    if isinstance(exc, AnswerTooLargeError):
        return Code.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, V2Error):
        return Code.INVALID_ARGUMENT, str(exc)
    problem = core_problem(exc)
    if problem is not None:
        return GRPC_CODE[problem.kind], problem.message
    log.error("unhandled error in a gRPC call", exc_info=exc)
    return Code.INTERNAL, "internal error; see the server log"


class Call:
    """One call's state while it runs: the scope its handler gets, and its outcome."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope
        self.code, self.message = Code.OK, ""

    def failed(self, exc: BaseException) -> None:
        self.code, self.message = status_of(exc)


class CallRules:
    """The rules, made once from the app's state; `run` applies them to a call, `stream` to each
    request of a stream."""

    def __init__(self, state: Any) -> None:
        settings = state.settings
        self.state = state
        self.metrics = state.metrics
        self.budget = state.budget
        self.tracer = state.tracer
        self.access_log = settings.access_log
        self.keys = [k.encode() for k in settings.api_key_list()]
        self.admin_keys = [k.encode() for k in settings.admin_key_list()]

    async def run(
        self,
        method: str,
        ctx: grpc.aio.ServicerContext,
        handler: Callable[[dict[str, Any]], Awaitable[T]],
        *,
        work: bool = False,
        admin: bool = False,
        probe: bool = False,
    ) -> T:
        """Answer one call with handler(scope): `work`, a call that runs a model (refused while
        draining); `admin`, one that changes the models (an admin key, when keys are set); `probe`,
        a health call that never needs a key. The scope holds the call's leases, reservation and
        access-line fields, as an HTTP request's ASGI scope does."""
        metadata = _metadata(ctx)
        async with self._observed(method, metadata) as call:
            try:
                self._check(metadata, admin, probe)
                if work and self.state.draining:
                    raise Refused(Code.UNAVAILABLE, DRAINING)
                return await handler(call.scope)
            except asyncio.CancelledError:
                call.code, call.message = Code.CANCELLED, "the client cancelled the call"
                raise
            except Exception as e:
                call.failed(e)
        await ctx.abort(call.code, call.message)
        raise AssertionError("abort() raises")  # for the type checker: abort never returns

    async def stream(
        self,
        method: str,
        ctx: grpc.aio.ServicerContext,
        requests: AsyncIterator[Any],
        answer: Callable[[Any, dict[str, Any]], AsyncIterator[Any]],
        error: Callable[[Any, str], Any],
    ) -> AsyncIterator[Any]:
        """A bidirectional stream (Triton's decoupled mode): each request is answered by its own
        task, whose responses (answer(request, scope)) interleave with the others' as they come; a
        request that fails gets one response, error(request, message), and the stream goes on. The
        key is checked once, for the stream; the rest of the rules apply to each request."""
        metadata = _metadata(ctx)
        try:
            self._check(metadata, admin=False, probe=False)
        except Refused as e:
            await ctx.abort(e.code, str(e))
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()
        tasks: set[asyncio.Task[None]] = set()

        async def one(request: Any) -> None:
            async with self._observed(method, metadata) as call:
                try:
                    if self.state.draining:
                        raise Refused(Code.UNAVAILABLE, DRAINING)
                    async for response in answer(request, call.scope):
                        await queue.put(response)
                except asyncio.CancelledError:
                    call.code, call.message = Code.CANCELLED, "the client cancelled the call"
                    raise
                except Exception as e:
                    call.failed(e)
                    await queue.put(error(request, call.message))

        async def read() -> None:
            async for request in requests:
                task = asyncio.create_task(one(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
            await queue.put(done)

        reader = asyncio.create_task(read())
        try:
            while (item := await queue.get()) is not done:
                yield item
        finally:  # the client closed the stream or went away: nothing more is generated for it
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    @asynccontextmanager
    async def _observed(self, method: str, metadata: dict[str, str]) -> AsyncIterator[Call]:
        """What every call and every request of a stream holds and leaves: the scope (leases, the
        answer budget, access-line fields), its span, its metrics and its access line."""
        started = time.perf_counter()
        request_id = metadata.get("x-request-id", "")[:128] or new_request_id()
        route = f"/{SERVICE}/{method}"
        held = Reservation(self.budget)
        call = Call({BUDGET_KEY: held, LEASES_KEY: [], LOG_KEY: {}})
        span: Any = None
        token: Any = None
        if self.tracer is not None:
            span, token = self._start_span(route, metadata, request_id)
        try:
            yield call
        finally:
            held.release()
            model = release_leases(call.scope)
            self._observe(route, request_id, call.code, started, model, call.scope[LOG_KEY])
            if span is not None:
                span.set_attribute("rpc.grpc.status_code", call.code.value[0])
                if model:
                    span.set_attribute("attnserve.model", model)
                if call.code not in (Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND):
                    span.set_status(trace.StatusCode.ERROR, call.message)
                span.end()
                context.detach(token)

    def _check(self, metadata: dict[str, str], admin: bool, probe: bool) -> None:
        """The access rule of docs/operations.md, as HTTP applies it."""
        changes_server = admin and bool(self.keys or self.admin_keys)
        if (self.keys and not probe) or changes_server:
            given = metadata.get("authorization", "").encode("latin-1", "replace")
            if not bearer_matches(given, self.keys + self.admin_keys):
                raise Refused(Code.UNAUTHENTICATED, UNAUTHENTICATED)
            if changes_server and not bearer_matches(given, self.admin_keys):
                raise Refused(Code.PERMISSION_DENIED, FORBIDDEN)

    def _observe(
        self, route: str, request_id: str, code: grpc.StatusCode, started: float, model: str, fields: dict[str, Any]
    ) -> None:
        elapsed = time.perf_counter() - started
        status = HTTP_STATUS.get(code, 500)
        self.metrics.requests.labels(route, str(status), model, "grpc").inc()
        self.metrics.latency.labels(route, model, "grpc").observe(elapsed)
        if self.access_log:
            access: dict[str, Any] = {"request_id": request_id, "path": route, "route": route, "protocol": "grpc"}
            access.update(status=status, grpc_status=code.name, duration_ms=round(elapsed * 1000, 3), model=model)
            ACCESS.info("gRPC %s %s", route, code.name, extra={**access, **fields})

    def _start_span(self, route: str, metadata: dict[str, str], request_id: str) -> tuple[Any, Any]:
        """The call's server span (service/api/spans.py), from its traceparent and tracestate metadata."""
        carrier = {k: v for k, v in metadata.items() if k in ("traceparent", "tracestate")}
        attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "attnserve.request_id": request_id}
        return start_server_span(self.tracer, route.lstrip("/"), carrier, attributes)


def _metadata(ctx: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in ctx.invocation_metadata() or () if isinstance(v, str)}

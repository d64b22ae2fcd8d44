"""The FastAPI application: create_app() loops over the protocol plug-ins, and a lifespan owns the
model registry (load at start, poll when asked, stop at the end).

The server's own routes (liveness, readiness, metrics: service/server/ops.py) are on this floor, not
in a protocol. Each protocol renders its own errors (its route class); the handlers here answer for
what no protocol's route saw (unknown paths, wrong methods) with the first protocol's renderer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import __version__
from service.api.budget import ResponseBudget
from service.api.plugin import Protocol
from service.api.problems import summary
from service.api.protocols import PROTOCOLS
from service.api.schema import fill_bounds, model_bounds
from service.core.bundle import Bundle, load_bundle
from service.core.errors import LoadError
from service.core.registry import ModelRegistry
from service.server import ops
from service.server.metrics import Metrics
from service.server.middleware import RequestContext
from service.server.settings import Settings
from service.server.tracing import TraceIds, setup_tracing, stop_tracing
from service.server.workers import METRICS_DIR_ENV, WorkerMetrics, worker_index

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def make_registry(settings: Settings, metrics: Metrics, checked: Bundle | None = None) -> ModelRegistry:
    """MODEL_DIR (one bundle) when it is set, else the repository. `checked`: MODEL_DIR's bundle,
    already opened and verified at start, so that it is not read and hashed again."""

    def open_bundle(path: Path) -> Bundle:
        return checked if checked is not None and path == checked.path else load_bundle(path)

    return ModelRegistry(
        settings,
        metrics,
        repository=None if settings.model_dir else settings.model_repository,
        single=settings.model_dir,
        default_model=settings.default_model,
        max_loaded=settings.max_loaded_models,
        retire_grace_s=settings.request_timeout_s,
        open_bundle=open_bundle,
    )


def create_app(
    settings: Settings, protocols: tuple[Protocol, ...] = PROTOCOLS, checked: Bundle | None = None
) -> FastAPI:
    tracing = setup_tracing(__version__)
    if tracing is not None:
        for handler in logging.getLogger().handlers:
            handler.addFilter(TraceIds())
    tracer = tracing.get_tracer("attnserve") if tracing else None
    metrics = Metrics(tracer=tracer)
    registry = make_registry(settings, metrics, checked)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await registry.load_all()
        if settings.model_dir is not None and not registry.serving:
            # One bundle was asked for and it cannot serve: that is a failed start, not an empty server.
            raise LoadError(registry.index()[0].reason if registry.index() else f"no bundle in {settings.model_dir}")
        default = registry.default_name()
        if default not in registry.serving:
            loaded = ", ".join(sorted(registry.serving)) or "none"
            why = f"the default model {default!r} is not loaded (loaded: {loaded})"
            if settings.model_control_mode == "none":
                raise LoadError(f"{why}; nothing would ever make the server ready (DEFAULT_MODEL)")
            log.warning("%s: not ready until it is (DEFAULT_MODEL)", why)
        poller = (
            asyncio.create_task(_poll(registry, settings.repository_poll_s))
            if settings.model_control_mode == "poll"
            else None
        )
        publisher = asyncio.create_task(app.state.workers.publish()) if app.state.workers is not None else None
        listeners = contextlib.AsyncExitStack()
        for protocol in protocols:
            if protocol.serve is not None:
                await listeners.enter_async_context(protocol.serve(app))
        # What the start made (the models, tokenizers, routes, schemas) leaves the garbage collector's
        # view: each full pass scanned all of it and stalled the event loop for tens of ms, the cause of
        # the p99 tail (short prompt, 64 clients: p99 125-131 ms before, 74-96 ms after, alternated runs).
        gc.collect()
        gc.freeze()
        app.state.ready = True
        for served in registry.ready():
            log.info("ready: serving %s version %s on %s", served.name, served.version, served.instance.provider)
        _log_access_rule(settings)
        host = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
        log.info("attention explorer: http://%s:%d/explorer/", host, settings.port)
        yield
        app.state.ready = False
        app.state.draining = True
        await listeners.aclose()  # their calls in flight finish first
        for task in (poller, publisher):
            if task is not None:
                task.cancel()
        await registry.stop(grace_s=settings.request_timeout_s)
        if tracing is not None:
            stop_tracing(tracing)  # sends the last spans
        log.info("stopped")

    docs = settings.docs_enabled
    app = FastAPI(
        # FastAPI's built-in OpenTelemetry hooks ask on every request whether a provider is set up;
        # the service has its own Prometheus metrics, so they are off.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        title="attnserve",
        summary="Next-token prediction, attention weights and generation from a self-attention language model.",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.ready = False
    app.state.stopping = False  # SIGTERM came: not ready, but still serving (DRAIN_DELAY_S)
    app.state.draining = False  # the listener is closing: work is refused
    app.state.metrics = metrics
    app.state.tracer = tracer  # for the listeners that are not HTTP (Protocol.serve)
    index = worker_index()
    directory = os.environ.get(METRICS_DIR_ENV)
    # Under WORKERS > 1, /metrics answers for every worker (service/server/workers.py).
    app.state.workers = (
        WorkerMetrics(index, Path(directory), metrics.registry) if index is not None and directory else None
    )
    app.state.settings = settings
    app.state.registry = registry
    for protocol in protocols:
        if protocol.state is not None:
            setattr(app.state, protocol.name, protocol.state(registry))
    metrics.queue_capacity.set(settings.max_queue_rows)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.state.budget = ResponseBudget(settings.max_inflight_bytes, metrics.inflight_bytes.set)
    # The routes go onto the app's own router, not through include_router: FastAPI matches an included
    # router's routes twice per request (once to choose the router, once inside it) and walks every
    # router before the one that matches, a tenth of a short request's event-loop time.
    for router in (ops.router, *(r for protocol in protocols for r in protocol.routers)):
        app.router.routes.extend(router.routes)
    # The attention explorer: static files, no build step; the root leads to it.
    app.mount("/explorer", StaticFiles(directory=WEB_DIR, html=True), name="explorer")

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> RedirectResponse:
        query = request.url.query  # a shared link to the root keeps its view
        return RedirectResponse("/explorer/" + (f"?{query}" if query else ""))

    app.add_middleware(
        RequestContext,
        metrics=metrics,
        settings=settings,
        state=app.state,
        budget=app.state.budget,
        protocols=protocols,
        tracer=tracer,
    )
    origins = settings.origins()
    if origins:
        # Outside RequestContext, so that a preflight needs no key and every answer carries the headers.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Content-Encoding",
                "Inference-Header-Content-Length",
                "X-Request-ID",
            ],  # fmt: skip
            expose_headers=["Inference-Header-Content-Length", "X-Request-ID", "Retry-After"],
            max_age=600,
        )

    # Errors outside the protocols' own route classes (unknown paths, wrong methods), in the shape of
    # the first protocol, which answers for every path that no other one owns.
    render = protocols[0].render_error

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers) if exc.headers else None
        return render(exc.status_code, "http_error", str(exc.detail), headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        return render(422, "invalid_request", summary(exc.errors()), None)

    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the bounds that only the served bundle knows (token ids, layers...):
    the default model's, the model a request gets when it names none."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)  # builds and keeps app.openapi_schema
        registry = app.state.registry
        default = registry.serving.get(registry.default_name() or "")
        if default is None:
            app.openapi_schema = None  # not started: kept only once the bounds are known
            return schema
        b = default.instance.bundle
        fill_bounds(schema, model_bounds(b.vocab_size, b.arch.n_layer, b.arch.n_head, b.arch.d_model))
        return schema
    return app.openapi_schema


def _log_access_rule(settings: Settings) -> None:
    """Say at start who may change the models, where the keys make it less than obvious."""
    users, admins = settings.api_key_list(), settings.admin_key_list()
    if admins and not users:
        log.info("ADMIN_API_KEYS is set: the repository API needs an admin key; the other routes need no key")
    elif users and not admins and settings.model_control_mode == "explicit":
        log.warning("API_KEYS is set without ADMIN_API_KEYS: the repository API refuses every key (403)")


async def _poll(registry: ModelRegistry, every_s: float) -> None:
    """MODEL_CONTROL_MODE=poll: read the repository again every REPOSITORY_POLL_S."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await registry.poll()
        except Exception:  # a bad repository read must not end polling
            log.exception("polling the model repository failed")

"""The FastAPI application: create_app() plus a lifespan that owns the core; the protocols side by side.

The exception handlers here render attnserve's native error shape; the OpenAI routes render their
own (service.api.openai.routes.OpenAIRoute).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import __version__
from service.api import ops
from service.api.kserve.routes import router as kserve
from service.api.kserve.serving import V2Serving
from service.api.native.routes import router as native
from service.api.openai.routes import router as openai
from service.api.openai.serving import OpenAIServing
from service.api.schema import fill_bounds, model_bounds
from service.budget import ResponseBudget
from service.core.bundle import Bundle, load_bundle
from service.core.errors import DrainingError, InferenceTimeoutError, InputError, QueueFullError
from service.core.inference import InferenceCore
from service.metrics import Metrics
from service.middleware import RequestContext
from service.problems import message_of, summary
from service.responses import error_response
from service.settings import Settings

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).resolve().parent / "web"


def create_app(settings: Settings, bundle: Bundle | None = None) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = bundle or load_bundle(settings.model_dir)
        core = InferenceCore(loaded, settings, metrics)
        core.warm_up()
        core.start()
        app.state.core = core
        app.state.openai = OpenAIServing(core)
        app.state.v2 = V2Serving(core)
        app.state.ready = True
        log.info("ready: serving %s on %s", loaded.name, core.provider)
        host = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
        log.info("attention explorer: http://%s:%d/explorer/", host, settings.port)
        yield
        app.state.ready = False
        app.state.draining = True
        await core.stop(grace_s=settings.request_timeout_s)
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
    metrics.queue_capacity.set(settings.max_queue_rows)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.state.budget = ResponseBudget(settings.max_inflight_bytes, metrics.inflight_bytes.set)
    app.include_router(native)
    app.include_router(openai)
    app.include_router(kserve)
    app.include_router(ops.router)
    # The attention explorer: static files, no build step; the root leads to it.
    app.mount("/explorer", StaticFiles(directory=WEB_DIR, html=True), name="explorer")

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> RedirectResponse:
        query = request.url.query  # a shared link to the root keeps its view
        return RedirectResponse("/explorer/" + (f"?{query}" if query else ""))

    app.add_middleware(RequestContext, metrics=metrics, settings=settings, state=app.state, budget=app.state.budget)
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

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        errors = [{"loc": list(e.get("loc", ())), "msg": message_of(e), "type": e.get("type", "")} for e in problems]
        invalid = [e for e in problems if e.get("type") == "json_invalid"]
        if invalid:
            why = invalid[0].get("ctx", {}).get("error", "")
            return error_response(
                400, "malformed_json", f"the request body is not valid JSON: {why}".rstrip(": "), errors
            )
        return error_response(422, "invalid_request", summary(problems), errors)

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        return error_response(422, "invalid_input", str(exc))

    @app.exception_handler(QueueFullError)
    async def queue_full(_: Request, exc: QueueFullError) -> JSONResponse:
        return error_response(503, "overloaded", str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(DrainingError)
    async def draining(_: Request, exc: DrainingError) -> JSONResponse:
        return error_response(503, "draining", str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(InferenceTimeoutError)
    async def timeout(_: Request, exc: InferenceTimeoutError) -> JSONResponse:
        return error_response(504, "timeout", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http_error", str(exc.detail), headers=getattr(exc, "headers", None))

    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the bounds that only the served bundle knows (token ids, layers...)."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)  # builds and keeps app.openapi_schema
        core = getattr(app.state, "core", None)
        if core is None:
            app.openapi_schema = None  # not started: kept only once the bounds are known
            return schema
        b = core.bundle
        fill_bounds(schema, model_bounds(b.vocab_size, b.arch.n_layer, b.arch.n_head))
        return schema
    return app.openapi_schema

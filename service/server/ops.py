"""The server's own routes, whatever protocols it speaks: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import not_ready
from service.api.responses import ErrorResponse, error_response

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "Starting or draining"}
}


# /health is the path that vLLM's and TGI's benchmark clients wait on before they start; it answers
# as readiness does, since those clients mean "can it serve yet?".
@router.get("/health", responses=READY_RESPONSES)
@router.get("/readyz", responses=READY_RESPONSES)
async def readyz(request: Request) -> Response:
    """Readiness: 200 while the default model is loaded and warmed up; 503 while starting or draining,
    and while the default model is not loaded (unloaded, or gone from a polled repository)."""
    problem = not_ready(request.app.state)
    if problem is not None:
        return error_response(503, *problem)
    return Response(orjson.dumps({"status": "ready"}), media_type="application/json")


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (every worker's, each with a `worker` label, under WORKERS > 1)."""
    state = request.app.state
    body = state.workers.exposition() if state.workers is not None else generate_latest(state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)

"""HTTP routes: thin wrappers over InferenceService."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.inference import InferenceService
from service.responses import error_response
from service.schemas import (
    AttentionRequest,
    AttentionResponse,
    ErrorResponse,
    ModelsResponse,
    NextTokenRequest,
    NextTokenResponse,
    ScoreRequest,
    ScoreResponse,
)


def get_service(request: Request) -> InferenceService:
    return request.app.state.service


Service = Annotated[InferenceService, Depends(get_service)]

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed JSON"},
    413: {"model": ErrorResponse, "description": "Body larger than MAX_BODY_BYTES"},
    422: {"model": ErrorResponse, "description": "Invalid input; the message says what was wrong"},
    503: {"model": ErrorResponse, "description": "Queue full or draining; see Retry-After"},
    504: {"model": ErrorResponse, "description": "No answer within REQUEST_TIMEOUT_S"},
}

v1 = APIRouter(prefix="/v1", tags=["model"], responses=ERRORS)
health = APIRouter(tags=["operations"])


@v1.post("/next-token", response_model=NextTokenResponse)
async def next_token(body: NextTokenRequest, service: Service) -> NextTokenResponse:
    """Top-k next tokens, with probabilities, for each input."""
    return await service.next_token(body)


@v1.post("/attention", response_model=AttentionResponse)
async def attention(body: AttentionRequest, service: Service) -> Response:
    """Softmax attention weights per layer and head, aligned to the input's tokens."""
    result = await service.attention(body)
    # orjson writes numpy arrays directly: a full-context answer holds millions of floats.
    return Response(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


@v1.post("/score", response_model=ScoreResponse)
async def score(body: ScoreRequest, service: Service) -> ScoreResponse:
    """Log-probability of each token given the ones before it."""
    return await service.score(body)


@v1.get("/models", response_model=ModelsResponse)
async def models(service: Service) -> ModelsResponse:
    """The model being served and how it is batched."""
    return ModelsResponse(models=[service.info()])


@health.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@health.get("/readyz", responses={503: {"model": ErrorResponse, "description": "Starting or draining"}})
async def readyz(request: Request) -> Response:
    """Readiness: 200 once the model is loaded and warmed up, 503 while starting or draining."""
    state = request.app.state
    if state.draining:
        return error_response(503, "draining", "shutting down")
    if not state.ready:
        return error_response(503, "starting", "model not loaded yet")
    return Response(orjson.dumps({"status": "ready"}), media_type="application/json")


@health.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

"""attnserve's own routes: thin wrappers over the core, with native error bodies (see service.app)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from service.api.deps import Core
from service.api.native import serving
from service.api.native.protocol import (
    AttentionRequest,
    AttentionResponse,
    ErrorResponse,
    NextTokenRequest,
    NextTokenResponse,
    ScoreRequest,
    ScoreResponse,
)
from service.api.strict import StrictJSONRoute
from service.budget import reservation
from service.core.inference import off_loop

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed JSON"},
    413: {"model": ErrorResponse, "description": "Body larger than MAX_BODY_BYTES"},
    422: {"model": ErrorResponse, "description": "Invalid input; the message says what was wrong"},
    503: {"model": ErrorResponse, "description": "Queue full or draining; see Retry-After"},
    504: {"model": ErrorResponse, "description": "No answer within REQUEST_TIMEOUT_S"},
}

router = APIRouter(prefix="/v1", tags=["model"], responses=ERRORS, route_class=StrictJSONRoute)


@router.post("/next-token", response_model=NextTokenResponse)
async def next_token(body: NextTokenRequest, core: Core) -> Response:
    """Top-k next tokens, with probabilities, for each input."""
    return Response(await serving.next_token(core, body), media_type="application/json")


@router.post("/attention", response_model=AttentionResponse)
async def attention(body: AttentionRequest, core: Core, request: Request) -> Response:
    """Softmax attention weights per layer and head, aligned to the input's tokens."""
    result = await serving.attention(core, body, reservation(request.scope))
    # A full-context answer is tens of MB of JSON: written in a thread, one map at a time, so that
    # the event loop gets the interpreter between maps (orjson holds it while it writes).
    content = await off_loop(serving.attention_json, result)
    return Response(content, media_type="application/json")


@router.post("/score", response_model=ScoreResponse)
async def score(body: ScoreRequest, core: Core) -> ScoreResponse:
    """Log-probability of each token given the ones before it."""
    return await serving.score(core, body)

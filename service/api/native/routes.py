"""attnserve's own routes: thin wrappers over the model, with native error bodies (service.api.native.errors)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from service.api.budget import reservation
from service.api.deps import lease, note
from service.api.native import lean, serving
from service.api.native.errors import error_response, render_error
from service.api.native.protocol import (
    AttentionRequest,
    AttentionResponse,
    HeadImportanceRequest,
    HeadImportanceResponse,
    LogitLensRequest,
    LogitLensResponse,
    NextTokenRequest,
    NextTokenResponse,
    ScoreRequest,
    ScoreResponse,
)
from service.api.plugin import Protocol
from service.api.responses import ErrorResponse
from service.api.strict import ProtocolRoute
from service.core.threads import off_loop

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed JSON"},
    404: {"model": ErrorResponse, "description": "The model named is not loaded"},
    413: {"model": ErrorResponse, "description": "Body larger than MAX_BODY_BYTES"},
    422: {"model": ErrorResponse, "description": "Invalid input; the message says what was wrong"},
    503: {"model": ErrorResponse, "description": "Queue full or draining; see Retry-After"},
    504: {"model": ErrorResponse, "description": "No answer within REQUEST_TIMEOUT_S"},
}


class NativeRoute(ProtocolRoute):
    """Every error in attnserve's own shape."""

    render = staticmethod(error_response)


router = APIRouter(prefix="/v1", tags=["model"], responses=ERRORS, route_class=NativeRoute)


@router.post("/next-token", response_model=NextTokenResponse)
async def next_token(body: NextTokenRequest, request: Request) -> Response:
    """Top-k next tokens, with probabilities, for each input."""
    return await lean.answer_next_token(request.scope, request.app.state, body)


@router.post("/attention", response_model=AttentionResponse)
async def attention(body: AttentionRequest, request: Request) -> Response:
    """Softmax attention weights per layer and head, aligned to the input's tokens."""
    model = lease(request, body.model)
    note(request)["rows"] = body.count
    result = await serving.attention(model, body, reservation(request.scope))
    # A full-context answer is tens of MB of JSON: written in a thread, one map at a time, so that
    # the event loop gets the interpreter between maps (orjson holds it while it writes).
    content = await off_loop(serving.attention_json, result)
    return Response(content, media_type="application/json")


@router.post("/score", response_model=ScoreResponse)
async def score(body: ScoreRequest, request: Request) -> ScoreResponse:
    """Log-probability of each token given the ones before it."""
    note(request)["rows"] = body.count
    return await serving.score(lease(request, body.model), body)


@router.post("/logit-lens", response_model=LogitLensResponse)
async def logit_lens(body: LogitLensRequest, request: Request) -> Response:
    """What each layer predicts: the residual stream after the embeddings and after every block,
    read through the final LayerNorm and the unembedding, top k per layer and position."""
    model = lease(request, body.model)
    note(request)["rows"] = body.count
    return Response(await serving.logit_lens(model, body, reservation(request.scope)), media_type="application/json")


@router.post("/head-importance", response_model=HeadImportanceResponse)
async def head_importance(body: HeadImportanceRequest, request: Request) -> HeadImportanceResponse:
    """How much each head matters to each input: the change in mean log p(next token) when that head
    alone is ablated (every head in turn, batched as rows of the score graph)."""
    model = lease(request, body.model)
    note(request)["rows"] = body.count
    return await serving.head_importance(model, body)


# Every other path's errors take the native shape too (the default protocol); everything under /v1/
# that is not OpenAI's runs a model, and /v1/models is refused while draining with the rest of /v1/.
protocol = Protocol(
    "native",
    [router],
    render_error,
    takes_work=lambda path: path.startswith("/v1/"),
    lean=lean.LEAN,
)

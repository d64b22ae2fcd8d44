"""attnserve's own routes: thin wrappers over the model, with native error bodies (service.api.native.errors)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from service.api.budget import reservation
from service.api.deps import lease, note
from service.api.native import interventions, lean, serving
from service.api.native.errors import error_response, render_error
from service.api.native.protocol import (
    ActivationsRequest,
    ActivationsResponse,
    AttentionRequest,
    AttentionResponse,
    HeadImportanceRequest,
    HeadImportanceResponse,
    LogitAttributionRequest,
    LogitAttributionResponse,
    LogitLensRequest,
    LogitLensResponse,
    NextTokenRequest,
    NextTokenResponse,
    PatchRequest,
    PatchResponse,
    ScoreRequest,
    ScoreResponse,
    SteeringVectorRequest,
    SteeringVectorResponse,
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


@router.post("/activations", response_model=ActivationsResponse, tags=["interventions"])
async def activations(body: ActivationsRequest, request: Request) -> Response:
    """What the residual stream and its parts held, per site, layer and position (TransformerLens's
    run_with_cache, served)."""
    model = lease(request, body.model)
    note(request)["rows"] = body.count
    content = await interventions.activations(model, body, reservation(request.scope))
    return Response(content, media_type="application/json")


@router.post("/patch", response_model=PatchResponse, tags=["interventions"])
async def patch(body: PatchRequest, request: Request) -> dict[str, Any]:
    """Activation patching: the answer's logit difference with one activation taken from the other
    run, for every head and for every layer and position of each site, batched."""
    model = lease(request, body.model)
    note(request)["rows"] = 2
    return await interventions.patching(model, body, reservation(request.scope))


@router.post("/steering-vector", response_model=SteeringVectorResponse, tags=["interventions"])
async def steering_vector(body: SteeringVectorRequest, request: Request) -> dict[str, Any]:
    """The steering vector two texts make at a layer: the difference of their mean residual streams."""
    note(request)["rows"] = 2
    return await interventions.steering_vector(lease(request, body.model), body)


@router.post("/logit-attribution", response_model=LogitAttributionResponse, tags=["interventions"])
async def logit_attribution(body: LogitAttributionRequest, request: Request) -> dict[str, Any]:
    """Direct logit attribution: a token's logit split into the embeddings, each head, each MLP and
    the biases, through the final LayerNorm with its scale frozen."""
    note(request)["rows"] = body.count
    return await interventions.attribution(lease(request, body.model), body)


# Every other path's errors take the native shape too (the default protocol); everything under /v1/
# that is not OpenAI's runs a model, and /v1/models is refused while draining with the rest of /v1/.
protocol = Protocol(
    "native",
    [router],
    render_error,
    takes_work=lambda path: path.startswith("/v1/"),
    lean=(lean.LEAN,),
)

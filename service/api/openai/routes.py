"""The OpenAI-compatible routes. Errors are rendered in OpenAI's shape by the router's own route class."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from service.api.budget import reservation
from service.api.deps import Registry, lease, note
from service.api.openai.errors import error_response, plain_error
from service.api.openai.protocol import (
    Completion,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)
from service.api.openai.serving import CompletionRun, model_card
from service.api.plugin import Protocol
from service.api.strict import ProtocolRoute
from service.core.inputs import check_ids


class OpenAIRoute(ProtocolRoute):
    """Every error in OpenAI's shape."""

    render = staticmethod(error_response)


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request; the message says what was wrong"},
    404: {"model": ErrorResponse, "description": "Unknown model"},
    503: {"model": ErrorResponse, "description": "Overloaded or draining; see Retry-After"},
    504: {"model": ErrorResponse, "description": "No token within REQUEST_TIMEOUT_S"},
}

router = APIRouter(tags=["openai"], route_class=OpenAIRoute, responses=ERRORS)


# A streamed answer is server-sent events: one `data: {Completion chunk}` line per event, then `data: [DONE]`.
STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "data": {"type": "string", "description": "A completion chunk or an error, as JSON; or [DONE]"}
                    },
                    "required": ["data"],
                }
            }
        }
    }
}


@router.post("/v1/completions", response_model=Completion, responses=STREAM)
async def completions(body: CompletionRequest, request: Request) -> Response:
    """Continue each prompt (OpenAI's completions API); `stream: true` answers with server-sent events."""
    run = CompletionRun(lease(request, body.model), note(request))
    rows = await run.prompts(body)
    if body.stream:
        # Queued before the response starts, so that a full queue is still a 503 and not a broken stream.
        choices, streams = run.start(body, rows, reservation(request.scope))
        return StreamingResponse(run.stream(body, rows, choices, streams), media_type="text/event-stream")
    completion = await run.complete(body, rows, reservation(request.scope))
    return Response(completion.model_dump_json(), media_type="application/json")


@router.get("/v1/models", response_model=ModelList)
async def models(registry: Registry) -> ModelList:
    """Every loaded model, in OpenAI's list shape, with its version, facts, resident size and batching."""
    return ModelList(data=[model_card(served) for served in registry.ready()])


@router.get("/v1/models/{model}", response_model=ModelCard)
async def model(model: str, request: Request) -> ModelCard:
    """One loaded model, by name; 404 for any other name."""
    lease(request, model)
    return model_card(request.app.state.registry.serving[model])


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    """Text to token ids (the shape evaluation harnesses' remote tokenizers call)."""
    model = lease(request, body.model)
    (ids,) = model.encode([body.prompt])
    strs = [model.token_text[t] for t in ids] if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=model.bundle.context_length, tokens=ids, token_strs=strs)


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    """Token ids to text."""
    model = lease(request, body.model)
    check_ids(model, [body.tokens], "tokens")
    return DetokenizeResponse(prompt=model.decode(body.tokens))


@router.get("/tokenizer_info", response_model=TokenizerInfo)
async def tokenizer_info(request: Request, model: str | None = None) -> TokenizerInfo:
    """The tokenizer's facts (of `?model=`, else the default model): byte-level BPE, no special tokens."""
    bundle = lease(request, model).bundle
    return TokenizerInfo(
        tokenizer_class="ByteLevelBPETokenizer",
        model_max_length=bundle.context_length,
        vocab_size=bundle.vocab_size,
    )


# The paths whose errors take OpenAI's shape, and which of them run a model.
PATHS = ("/v1/completions", "/v1/models", "/tokenize", "/detokenize", "/tokenizer_info")
protocol = Protocol(
    "openai",
    [router],
    plain_error,
    owns=lambda path: path.startswith(PATHS),
    takes_work=lambda path: path.startswith(("/v1/completions", "/tokenize", "/detokenize")),
)

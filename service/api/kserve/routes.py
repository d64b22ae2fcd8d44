"""The Open Inference Protocol (KServe v2) routes, as Triton serves them, with the protocol's error shape.

Errors are {"error": "message"}: 400 for a request the model cannot take, 404 for an unknown model
or version, 503 with Retry-After when overloaded or draining, 504 past REQUEST_TIMEOUT_S.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from service.api.budget import reservation
from service.api.deps import LOG_KEY, Registry, not_ready
from service.api.kserve.codec import HEADER_LENGTH, InferRequestHeader, V2Error, decompress, parse_request
from service.api.kserve.jobs import MODELS
from service.api.kserve.serving import Target, V2Serving
from service.api.kserve.v2model import MAX_INPUT_RANK
from service.api.plugin import RETRY_AFTER, Lean, Protocol, core_problem
from service.api.problems import summary
from service.api.strict import ProtocolRoute
from service.core.errors import ControlError

log = logging.getLogger(__name__)


# A core error's class -> the v2 status. A load that fails, or a change the control mode does not
# allow, is a 400, as Triton answers them.
V2_STATUS = {"invalid": 400, "not_found": 404, "overloaded": 503, "draining": 503, "timeout": 504}


def error_body(exc: BaseException) -> tuple[int, str, dict[str, str] | None]:
    """Status, message and headers for an exception raised while answering a v2 request."""
    if isinstance(exc, V2Error):
        return 400, str(exc), None
    if isinstance(exc, RequestValidationError):
        return 400, summary(exc.errors()), None
    problem = core_problem(exc)
    if problem is not None:
        return V2_STATUS[problem.kind], problem.message, RETRY_AFTER if problem.retry else None
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail), getattr(exc, "headers", None)
    log.error("unhandled error in a KServe v2 route", exc_info=exc)
    return 500, "internal error; see the server log", None


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": message}), status_code=status, headers=headers, media_type="application/json"
    )


class V2Route(ProtocolRoute):
    """Every error in the protocol's own shape."""

    render = staticmethod(lambda e: error_response(*error_body(e)))


async def get_v2(request: Request) -> V2Serving:
    return request.app.state.kserve


V2 = Annotated[V2Serving, Depends(get_v2)]
ERROR = {"content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "A request the model cannot take; the message says why", **ERROR},
    404: {"description": "Unknown model or version", **ERROR},
    503: {"description": "Starting, overloaded or draining; see Retry-After", **ERROR},
}
router = APIRouter(prefix="/v2", tags=["kserve-v2"], route_class=V2Route, responses=ERRORS)


def _ready(request: Request) -> bool:
    return not_ready(request.app.state) is None


@router.get("")
async def server_metadata(s: V2) -> dict[str, Any]:
    """The server's name, version and the protocol extensions it supports."""
    return s.server_metadata()


EMPTY: dict[int | str, dict[str, Any]] = {200: {"description": "Yes (no body)", "content": {}}}
ModelName = Annotated[str, Path(examples=list(MODELS))]


@router.get("/health/live", response_class=Response, responses=EMPTY)
async def live() -> Response:
    """200 while the process answers."""
    return Response(status_code=200)


@router.get("/health/ready", response_class=Response, responses=EMPTY)
async def ready(request: Request) -> Response:
    """200 while the default model is loaded and warmed up; 503 while starting or draining, or without it."""
    return Response(status_code=200 if _ready(request) else 503)


@router.post("/repository/index")
async def repository_index(registry: Registry) -> list[dict[str, str]]:
    """Every model of the repository: name, version, state (READY, UNAVAILABLE, LOADING, UNLOADING)
    and, when it is not READY, the reason."""
    out = []
    for m in registry.index():
        entry = {"name": m.name, "version": m.version, "state": str(m.state)}
        if m.reason:
            entry["reason"] = m.reason
        out.append(entry)
    return out


RepositoryModel = Annotated[str, Path(description="The repository's model name (its directory)")]


@router.post("/repository/models/{name}/load", response_class=Response, responses=EMPTY)
async def repository_load(name: RepositoryModel, request: Request) -> Response:
    """Load a model's highest version, or swap to it when another version serves (explicit mode only).
    A failed load is a 400 with the reason, and what served before still serves."""
    check_control_mode(request.app.state.settings, "load")
    await request.app.state.registry.load(name)
    return Response(status_code=200)


@router.post("/repository/models/{name}/unload", response_class=Response, responses=EMPTY)
async def repository_unload(name: RepositoryModel, request: Request) -> Response:
    """Unload a model (explicit mode only): new requests get 404; requests already running finish."""
    check_control_mode(request.app.state.settings, "unload")
    await request.app.state.registry.unload(name)
    return Response(status_code=200)


def check_control_mode(settings: Any, action: str) -> None:
    """Loading and unloading need MODEL_CONTROL_MODE=explicit (over HTTP and gRPC alike)."""
    mode = settings.model_control_mode
    if mode != "explicit":
        raise ControlError(f"cannot {action} models: MODEL_CONTROL_MODE is {mode!r}; it must be 'explicit'")


async def get_model(request: Request, name: ModelName) -> Target:
    """The model the path names, at the version it names when it names one (else 404)."""
    return request.app.state.kserve.target(request.scope, name, request.path_params.get("version"))


async def _version(version: Annotated[str, Path(examples=["1"])]) -> None:
    """Declares the path's version for the OpenAPI document; get_model reads and checks it."""


Model = Annotated[Target, Depends(get_model)]


async def model_metadata(m: Model, request: Request) -> dict[str, Any]:
    """A model's inputs and outputs with their datatypes and shapes (-1: variable)."""
    return request.app.state.kserve.model_metadata(m)


async def model_config(m: Model, request: Request) -> dict[str, Any]:
    """Triton's model configuration: inputs (all optional; give text or input_ids), outputs, batching."""
    return request.app.state.kserve.model_config(m)


async def model_ready(m: Model, request: Request) -> Response:
    """200 when the model can take requests."""
    return Response(status_code=200 if _ready(request) else 503)


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """The schema with its $defs references written out, so that it stands alone in the OpenAPI document."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


_schema = InferRequestHeader.model_json_schema()
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline(_schema, _schema.get("$defs", {}))},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "The JSON header (Inference-Header-Content-Length bytes), then the binary inputs",
            },
        },
    }
}


async def infer(m: Model, request: Request) -> Response:
    """Run a model on JSON or binary tensors (the binary tensor data extension)."""
    return await _answer(request.scope, request.app.state, m, dict(request.scope["headers"]), await request.body())


async def lean_infer(
    scope: MutableMapping[str, Any], headers: dict[bytes, bytes], body: bytes, state: Any
) -> Response | None:
    """The infer route without the framework (plugin.Lean): the same answer and the same errors. It takes
    what v2 clients send (JSON, binary tensors, or no content type, as tritonclient); a body of another
    content type goes through the framework's route, which reads it the same way."""
    if headers.get(b"content-type", b"application/json").split(b";")[0].strip() not in LEAN_TYPES:
        return None
    try:
        params = scope["path_params"]
        target = state.kserve.target(scope, params["name"], params.get("version"))
        return await _answer(scope, state, target, headers, body)
    except Exception as e:  # noqa: BLE001 (every error is answered in the v2 shape, as the route's class does)
        return error_response(*error_body(e))


async def _answer(
    scope: MutableMapping[str, Any], state: Any, m: Target, headers: dict[bytes, bytes], body: bytes
) -> Response:
    """The one infer path, from the raw headers and body: the route and the lean handler both end here."""
    body = decompress(body, _header(headers, b"content-encoding"), state.settings.max_body_bytes)
    parsed = parse_request(body, _header(headers, HEADER_LENGTH_KEY), MAX_INPUT_RANK)
    content, header_length = await state.kserve.infer(m, parsed, reservation(scope), scope.setdefault(LOG_KEY, {}))
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(header_length)}
    )


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")  # as Starlette decodes them


HEADER_LENGTH_KEY = HEADER_LENGTH.encode("latin-1")
LEAN_TYPES = (b"application/json", b"application/octet-stream")


INFER_PATHS = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")


def _add_model_routes() -> None:
    """Each model route twice, without and with /versions/{version}, flat on the router: an included
    sub-router is matched anew on every request, which costs the hot path."""
    for base in ("/models/{name}", "/models/{name}/versions/{version}"):
        versioned = [Depends(_version)] if "{version}" in base else []
        router.add_api_route(base, model_metadata, methods=["GET"], dependencies=versioned)
        router.add_api_route(base + "/config", model_config, methods=["GET"], dependencies=versioned)
        router.add_api_route(
            base + "/ready",
            model_ready,
            methods=["GET"],
            dependencies=versioned,
            response_class=Response,
            responses=EMPTY,
        )
        router.add_api_route(base + "/infer", infer, methods=["POST"], dependencies=versioned, openapi_extra=INFER_BODY)


_add_model_routes()


def render_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return error_response(status, message, headers)  # v2 errors carry no code: {"error": message}


protocol = Protocol(
    "kserve",
    [router],
    render_error,
    owns=lambda path: path.startswith("/v2/"),
    takes_work=lambda path: path.startswith("/v2/models/") and path.endswith("/infer"),
    lean=tuple(Lean("POST", path, lean_infer) for path in INFER_PATHS),
    changes_server=lambda path: path.startswith("/v2/repository/models/"),
    public_paths=("/v2/health/",),
    state=V2Serving,
)

"""The next-token route without the framework's layers: the hot path of the service.

Starlette's routing, FastAPI's exit stacks, exception and body-limit middleware cost the event loop
more than the rest of a next-token request does (BENCHMARKS.md, "The HTTP-bound regime"). The server's
one middleware hands a plain JSON POST to /v1/next-token straight to `next_token` here, which reads,
validates and answers it exactly as the FastAPI route does: the same strict JSON, the same request
model, the same errors in the same shape. Any other request (another content type, an empty body)
goes through FastAPI, whose route validates it and then takes the same path (answer_next_token).
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response

from service.api.budget import reservation
from service.api.deps import LOG_KEY, lease_in
from service.api.native import serving
from service.api.native.errors import error_response
from service.api.native.protocol import NextTokenRequest
from service.api.plugin import Lean
from service.api.strict import loads_strict


async def next_token(
    scope: MutableMapping[str, Any], headers: dict[bytes, bytes], body: bytes, state: Any
) -> Response | None:
    """The answer, or None for a body that is not a JSON object (the framework answers those, in its words)."""
    if not headers.get(b"content-type", b"").startswith(b"application/json"):
        return None
    try:
        data = loads_strict(body)
    except json.JSONDecodeError as e:  # what FastAPI makes of the same body
        invalid = {"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error", "ctx": {"error": e.msg}}
        return error_response(RequestValidationError([invalid]))
    if not isinstance(data, dict):
        return None
    try:
        req = NextTokenRequest.model_validate(data)
    except ValidationError as e:
        return error_response(RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]))
    try:
        return await answer_next_token(scope, state, req)
    except Exception as e:  # noqa: BLE001 (every error is answered in the native shape, as the route's class does)
        return error_response(e)


async def answer_next_token(scope: MutableMapping[str, Any], state: Any, req: NextTokenRequest) -> Response:
    """The one next-token path, after validation: the lean handler and the FastAPI route both end here."""
    model = lease_in(scope, state.registry, req.model)
    scope.setdefault(LOG_KEY, {})["rows"] = req.count
    return Response(await serving.next_token(model, req, reservation(scope)), media_type="application/json")


LEAN = Lean("POST", "/v1/next-token", next_token)

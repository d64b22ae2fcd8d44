"""What every protocol's routes depend on: the registry, and a lease on the model a request names.

A request holds a lease on the model version it got until its answer has left (the middleware gives
every lease back at the end, streams included), so that a version being swapped out finishes the
work it took before it is released.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import MutableMapping
from typing import Annotated, Any

from fastapi import Depends, Request

from service.core.instance import ModelInstance
from service.core.registry import Lease, ModelRegistry

LEASES_KEY = "attnserve.leases"
# A request that brings no X-Request-ID gets 32 hex digits, as uuid4().hex has, made from a random
# prefix per process and a counter: unique across processes and replicas, with no system call per
# request (uuid4's os.urandom was 3% of the toy model's request path).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()
LOG_KEY = "attnserve.log"  # a request's fields for its access line (rows, tokens, first_token)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def note(request: Request) -> dict[str, Any]:
    """This request's access-line fields, for the protocols to add to (the middleware writes the line)."""
    return request.scope.setdefault(LOG_KEY, {})


def lease(request: Request, name: str | None, version: str | None = None) -> ModelInstance:
    """The serving version of the named model (the default model when None), held for this request;
    raises ModelNotFoundError (each protocol renders it as its own 404)."""
    return lease_in(request.scope, request.app.state.registry, name, version)


def lease_in(
    scope: MutableMapping[str, Any], registry: ModelRegistry, name: str | None, version: str | None = None
) -> ModelInstance:
    """lease() for a handler that has the ASGI scope rather than a Request."""
    return hold(scope, registry, name, version).instance


def hold(scope: MutableMapping[str, Any], registry: ModelRegistry, name: str | None, version: str | None) -> Lease:
    """The lease itself (its served version says which version answers), held until the answer has left."""
    held = registry.lease(name, version)
    scope.setdefault(LEASES_KEY, []).append(held)
    return held


def release_leases(scope: MutableMapping[str, Any]) -> str:
    """Give back every lease of a request; returns the model it used ("" for none)."""
    leases: list[Lease] = scope.get(LEASES_KEY) or []
    for held in leases:
        held.release()
    return leases[0].served.name if leases else ""


def not_ready(state: Any) -> tuple[str, str] | None:
    """Why the server is not ready, as (code, message); None when it is. Ready means started, not
    draining, and the default model loaded: the one rule of /readyz, /health and v2's health/ready."""
    if state.stopping or state.draining:
        return "draining", "shutting down"
    if not state.ready:
        return "starting", "model not loaded yet"
    default = state.registry.default_name()
    if default not in state.registry.serving:
        return "not_ready", f"the default model {default!r} is not loaded"
    return None


# async, so FastAPI calls it on the event loop instead of handing each request to its thread pool.
async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


Registry = Annotated[ModelRegistry, Depends(get_registry)]

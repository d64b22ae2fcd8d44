"""A protocol as a plug-in: what create_app and the middleware need to know of it, and nothing else.

Each protocol package (native, openai, kserve, kserve_grpc) exposes one Protocol, and service.api.protocols lists
them: adding a protocol is a package plus one line there. create_app puts each protocol's routes on the app
and makes its app-wide state (app.state.<name>) with the protocol's own factory; the middleware asks
the protocols which one owns a path (for the error shape of the answers it writes itself), whether a
path runs the model (refused while draining), whether it changes the server (needs an admin key) and
which paths are probes that never need a key; the lifespan runs each protocol's own listener, if it
has one (gRPC). Neither names a protocol.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response
from starlette.routing import compile_path

from service.core.errors import (
    ControlError,
    DrainingError,
    InferenceTimeoutError,
    InputError,
    LoadError,
    ModelNotFoundError,
    QueueFullError,
)
from service.core.registry import ModelRegistry

# (status, code, message, headers) -> a response in the protocol's error shape
ErrorRenderer = Callable[[int, str, str, "dict[str, str] | None"], Response]
# (scope, headers, body, app state) -> the answer, or None for a request the framework should answer
LeanHandler = Callable[[MutableMapping[str, Any], dict[bytes, bytes], bytes, Any], Awaitable["Response | None"]]


@dataclass(frozen=True)
class Lean:
    """A hot route answered without the framework's layers (routing, dependencies, exit stacks), which
    cost the event loop more than a short request's own work. The protocol still declares the route on
    its router, for the OpenAPI document and for the requests the handler gives back (None)."""

    method: str
    path: str  # the route's template, as on the router: "/v2/models/{name}/infer"; the metrics' label
    handler: LeanHandler
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", compile_path(self.path)[0])

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The path's parameters when this route takes the request, else None."""
        if method != self.method:
            return None
        m = self.regex.match(path)
        return m.groupdict() if m else None


@dataclass(frozen=True)
class Protocol:
    name: str
    routers: Sequence[APIRouter]
    render_error: ErrorRenderer
    owns: Callable[[str], bool] = lambda path: False  # paths whose errors take this protocol's shape
    takes_work: Callable[[str], bool] = lambda path: False  # paths that run a model
    changes_server: Callable[[str], bool] = lambda path: False  # paths that need an admin key
    lean: Sequence[Lean] = ()  # hot routes the middleware answers without the framework
    public_paths: tuple[str, ...] = ()  # path prefixes that never need a key (the protocol's health probes)
    # The protocol's app-wide state, made from the model registry at start (app.state.<name>)
    state: Callable[[ModelRegistry], Any] | None = None
    # A listener of the protocol's own beside HTTP (gRPC), given the app: entered once the models
    # are loaded, left once the server drains, before the models stop.
    serve: Callable[[Any], AbstractAsyncContextManager[None]] | None = None


@dataclass(frozen=True)
class Problem:
    """A core error, classified once for every protocol: each maps `kind` to its own status."""

    kind: str  # "invalid", "not_found", "overloaded", "draining", "timeout"
    message: str
    retry: bool = False  # answer with Retry-After: 1
    field: str | None = None  # the request field to blame, when there is one


def core_problem(exc: BaseException) -> Problem | None:
    """The class of a core error, or None for anything else."""
    if isinstance(exc, InputError):
        return Problem("invalid", str(exc), field=exc.field)
    if isinstance(exc, LoadError | ControlError):
        return Problem("invalid", str(exc))
    if isinstance(exc, ModelNotFoundError):
        return Problem("not_found", str(exc.args[0] if exc.args else exc))
    if isinstance(exc, QueueFullError):
        return Problem("overloaded", str(exc), retry=True)
    if isinstance(exc, DrainingError):
        return Problem("draining", str(exc), retry=True)
    if isinstance(exc, InferenceTimeoutError):
        return Problem("timeout", str(exc))
    return None


RETRY_AFTER = {"Retry-After": "1"}

"""Route classes: JSON bodies read strictly, and errors in each protocol's shape.

JSON bodies are read strictly: a key given twice, or bytes that are not UTF-8, are malformed JSON.

A number with no fractional part (`2.0`, `1e3`) is an integer, as JSON Schema (and so the OpenAPI
document) defines one; otherwise the strict request models would refuse `"top_k": 2.0` that the
document calls valid. Numbers with a fraction stay floats.

Nesting is bounded (MAX_DEPTH) before the parser sees the body: Python's json recurses once per
level and a body of 100,000 brackets would end in a RecursionError. No request here nests deeper
than a few levels.

Python's json keeps the last of duplicate keys silently, so `{"top_k": 1, "top_k": 50}` would
mean whatever the parser chose. FastAPI reads the body through Request.json(), so a route class
that hands it this request makes both cases the same 400 as any other malformed body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import Request, Response
from fastapi.routing import APIRoute

MAX_DEPTH = 32
_STRING = re.compile(r'"(?:[^"\\]|\\.)*+"')  # possessive: an unterminated string cannot backtrack
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def nesting_depth(text: str) -> int:
    """How deep the text's arrays and objects nest, found without recursion (brackets inside strings
    do not count). Cheap for the usual body: with fewer brackets than MAX_DEPTH it cannot be deeper."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0
    chars = np.frombuffer(_STRING.sub("", text).encode(), np.uint8)
    steps = np.isin(chars, _OPEN).astype(np.int32) - np.isin(chars, _CLOSE)
    return int(np.cumsum(steps).max(initial=0))


# One decoder for every body: json.loads with hooks builds a new one per call (2% of a request).
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_float=_number)


def loads_strict(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise json.JSONDecodeError(f"the body is not UTF-8 ({e.reason} at byte {e.start})", "", e.start) from e
    if nesting_depth(text) > MAX_DEPTH:
        raise json.JSONDecodeError(f"arrays and objects nest deeper than {MAX_DEPTH} levels", "", 0)
    try:
        return _DECODER.decode(text)
    except ValueError as e:
        if isinstance(e, json.JSONDecodeError):
            raise
        raise json.JSONDecodeError(str(e), text, 0) from e


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_strict(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return handle


class ProtocolRoute(StrictJSONRoute):
    """A route that answers every error its handler raises, request validation included, in its
    protocol's own shape: subclasses set `render` (exception -> response)."""

    render: Callable[[Exception], Response]

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        render = type(self).render

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as e:
                return render(e)

        return handle

"""schemathesis hooks: the request rules that JSON Schema cannot state, so that a generated request
that the schema calls valid but the server rightly refuses is not generated as a "valid" one.

Each rule is one the server documents and that depends on something outside the request's own
shape: how many tokens a text has (the bundle's tokenizer against its context), a position against
an input's length, a comparison of two fields, how many rows a request needs against the queue, or
a tensor's data against its shape.
Everything else is in the OpenAPI document.
Set ATTNSERVE_BUNDLE to the served bundle's directory.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import schemathesis
from tokenizers import Tokenizer

BUNDLE = Path(os.environ["ATTNSERVE_BUNDLE"])
TOKENIZER = Tokenizer.from_file(str(BUNDLE / "tokenizer.json"))
ARCHITECTURE = json.loads((BUNDLE / "manifest.json").read_text())["architecture"]
CONTEXT, LAYERS, HEADS = ARCHITECTURE["context_length"], ARCHITECTURE["n_layer"], ARCHITECTURE["n_head"]


def _tokens(text: str) -> int:
    return len(TOKENIZER.encode(text).ids)


def _fits(body: dict[str, Any]) -> bool:
    """Native routes: without truncate, every input fits the context."""
    if body.get("truncate"):
        return True
    texts = body.get("texts") if isinstance(body.get("texts"), list) else []
    ids = body.get("token_ids") if isinstance(body.get("token_ids"), list) else []
    return all(_tokens(t) <= CONTEXT for t in texts if isinstance(t, str)) and all(
        len(row) <= CONTEXT for row in ids if isinstance(row, list)
    )


def _importance_fits(body: dict[str, Any]) -> bool:
    """Head importance: every input has two tokens or more, and its n_layer x n_head + 1 score rows per
    input fit the queue (MAX_QUEUE_ROWS, 256 by default)."""
    inputs = body.get("texts") if isinstance(body.get("texts"), list) else body.get("token_ids")
    if not isinstance(inputs, list):
        return True
    sizes = [_tokens(x) if isinstance(x, str) else len(x) for x in inputs if isinstance(x, str | list)]
    return all(n >= 2 for n in sizes) and len(inputs) * (LAYERS * HEADS + 1) <= 256


def _completion_fits(body: dict[str, Any]) -> bool:
    """Completions: every prompt plus max_tokens fits the context; best_of is null or n; min_tokens is
    at most max_tokens."""
    if body.get("best_of") not in (None, body.get("n", 1)):
        return False
    min_tokens, max_tokens = body.get("min_tokens", 0), body.get("max_tokens", 16)
    if isinstance(min_tokens, int) and isinstance(max_tokens, int) and min_tokens > max_tokens:
        return False
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not isinstance(prompt, list):
        return True
    budget = CONTEXT - body.get("max_tokens", 16) if isinstance(body.get("max_tokens", 16), int) else CONTEXT
    sizes = [_tokens(p) if isinstance(p, str) else len(p) for p in prompt if isinstance(p, str | list)]
    return all(n <= budget for n in sizes)


def _steer_fits(body: dict[str, Any]) -> bool:
    """Steering entries given as texts: each text fits the context (the vectors' own length is in the schema)."""
    steer = body.get("steer") if isinstance(body.get("steer"), list) else []
    texts = [e["vector"] for e in steer if isinstance(e, dict) and isinstance(e.get("vector"), dict)]
    return all(_tokens(t[k]) <= CONTEXT for t in texts for k in ("add", "subtract") if isinstance(t.get(k), str))


def _lengths(body: dict[str, Any]) -> list[int]:
    inputs = body.get("texts") if isinstance(body.get("texts"), list) else body.get("token_ids")
    inputs = inputs if isinstance(inputs, list) else []
    return [min(_tokens(x), CONTEXT) if isinstance(x, str) else len(x) for x in inputs if isinstance(x, str | list)]


def _positions_fit(body: dict[str, Any]) -> bool:
    """Activations, attribution and attention: asked positions (and queries) lie within every input; a
    target text is one token."""
    positions = body.get("positions") if isinstance(body.get("positions"), list) else []
    if isinstance(body.get("queries"), list):
        positions = body["queries"]
    if isinstance(body.get("position"), int):
        positions = [body["position"]]
    if isinstance(body.get("target"), str) and _tokens(body["target"]) != 1:
        return False
    return all(p < n for n in _lengths(body) for p in positions if isinstance(p, int))


def _tensors_agree(body: dict[str, Any]) -> bool:
    """KServe v2: each tensor's data holds as many elements as its shape says."""
    inputs = body.get("inputs")
    for t in inputs if isinstance(inputs, list) else []:
        if not isinstance(t, dict) or not isinstance(t.get("shape"), list):
            continue
        data = t.get("data")
        flat = list(_flatten(data)) if data is not None else None
        if flat is not None and all(isinstance(d, int) for d in t["shape"]) and len(flat) != math.prod(t["shape"]):
            return False
    return True


def _flatten(data: Any) -> Any:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _as_server_reads(value: Any) -> Any:
    """Integral floats as ints, as the server's JSON reader takes them (JSON Schema's integers)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_as_server_reads(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_server_reads(v) for k, v in value.items()}
    return value


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    body = _as_server_reads(case.body)
    if not isinstance(body, dict):
        return True
    path = case.operation.path
    if path in ("/v1/next-token", "/v1/score", "/v1/logit-lens"):
        return _fits(body) and _steer_fits(body)
    if path in ("/v1/attention", "/v1/activations", "/v1/logit-attribution"):
        return _fits(body) and _steer_fits(body) and _positions_fit(body)
    if path == "/v1/steering-vector":
        return all(_tokens(body[k]) <= CONTEXT for k in ("add", "subtract") if isinstance(body.get(k), str))
    if path == "/v1/head-importance":
        return _fits(body) and _importance_fits(body)
    if path == "/v1/completions":
        return _completion_fits(body) and _steer_fits(body)
    if path.endswith("/infer"):
        return _tensors_agree(body)
    return True

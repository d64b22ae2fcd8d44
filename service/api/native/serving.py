"""From native requests to the core's jobs, and from their results to native responses."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from service.api.budget import ATTENTION_JSON_BYTES, LENS_JSON_BYTES, OFF_LOOP_BYTES, Reservation
from service.api.native.protocol import (
    AttentionRequest,
    HeadImportanceRequest,
    HeadImportanceResponse,
    HeadImportanceResult,
    Inputs,
    Intervenable,
    LogitLensRequest,
    NextTokenRequest,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
)
from service.core import jobs
from service.core.inputs import Interventions, Row, input_rows
from service.core.instance import ModelInstance
from service.core.jobs import NextTokens
from service.core.steering import interventions
from service.core.threads import off_loop


async def rows(model: ModelInstance, req: Inputs) -> list[Row]:
    return await input_rows(model, req.texts, req.token_ids, req.truncate)


def tokens(model: ModelInstance, ids: np.ndarray) -> dict[str, list]:
    """A row's "tokens" (each decoded to text) and "token_ids", as every native answer gives them."""
    listed = ids.tolist()
    return {"tokens": [model.token_text[t] for t in listed], "token_ids": listed}


async def edits(model: ModelInstance, req: Intervenable) -> Interventions:
    return await interventions(model, req.ablate, req.steer_specs())


async def next_token(model: ModelInstance, req: NextTokenRequest, reservation: Reservation | None = None) -> bytes:
    """The JSON answer, written directly: the hot path skips building and re-validating response models
    (NextTokenResponse stays the documented shape; tests/service/test_schemathesis.py checks answers against it).
    A top_k as large as the vocabulary makes a large answer: its bytes are reserved like the others'."""
    inputs = await rows(model, req)
    size = len(inputs) * min(req.top_k, model.bundle.vocab_size) * LENS_JSON_BYTES
    if reservation is not None:
        reservation.take(size)
    results = await jobs.next_token(model, inputs, req.top_k, req.temperature, await edits(model, req))
    if size < OFF_LOOP_BYTES:
        return _next_token_json(model, results)
    return await off_loop(_next_token_json, model, results)


def _next_token_json(model: ModelInstance, results: list[NextTokens]) -> bytes:
    text = model.token_text
    return orjson.dumps(
        {
            "model": model.name,
            "results": [
                {
                    "n_tokens": len(r.row.ids),
                    "truncated": r.row.truncated,
                    "top": [
                        {"token": text[t], "token_id": t, "prob": math.exp(lp), "logprob": lp}
                        for t, lp in zip(r.token_ids.tolist(), r.logprobs.tolist(), strict=True)
                    ],
                }
                for r in results
            ],
        }
    )


async def attention(
    model: ModelInstance, req: AttentionRequest, reservation: Reservation | None = None
) -> dict[str, Any]:
    """Plain data with numpy arrays, for orjson: a response can hold millions of floats."""
    reserve = (lambda n: reservation.take(n * ATTENTION_JSON_BYTES)) if reservation is not None else None
    results = await jobs.attention(
        model, await rows(model, req), req.layers, req.heads, reserve, await edits(model, req), req.queries
    )
    out = [
        {**tokens(model, r.row.ids), "layers": r.layers, "heads": r.heads, "queries": r.queries, "attention": r.weights}
        for r in results
    ]
    return {"model": model.name, "results": out}


def attention_json(answer: dict[str, Any]) -> bytes:
    """orjson's encoding of the attention answer, written one (query x key) map per call."""
    results = []
    for r in answer["results"]:
        weights = r["attention"]
        head = orjson.dumps({k: v for k, v in r.items() if k != "attention"})
        layers = b",".join(
            b"[" + b",".join(orjson.dumps(m, option=orjson.OPT_SERIALIZE_NUMPY) for m in layer) + b"]"
            for layer in weights
        )
        results.append(head[:-1] + b',"attention":[' + layers + b"]}")
    return orjson.dumps({"model": answer["model"]})[:-1] + b',"results":[' + b",".join(results) + b"]}"


async def score(model: ModelInstance, req: ScoreRequest) -> ScoreResponse:
    results = await jobs.score(model, await rows(model, req), await edits(model, req))
    text = model.token_text
    out = []
    for r in results:
        ids = r.row.ids.tolist()
        values = r.logprobs.tolist()
        out.append(
            ScoreResult(
                tokens=[text[t] for t in ids],
                token_ids=ids,
                logprobs=[None, *values],
                total_logprob=float(sum(values)),
                n_tokens=len(ids),
                truncated=r.row.truncated,
            )
        )
    return ScoreResponse(model=model.name, results=out)


async def logit_lens(model: ModelInstance, req: LogitLensRequest, reservation: Reservation | None = None) -> bytes:
    """The answer's bytes are reserved before anything runs, and a large answer is written off the event
    loop, one row at a time, so that no row's entries exist as Python objects all at once."""
    inputs = await rows(model, req)
    changes = await edits(model, req)
    entries = sum(len(_lens_positions(r, req)) for r in inputs) * (model.bundle.arch.n_layer + 1) * req.top_k
    if reservation is not None:
        reservation.take(entries * LENS_JSON_BYTES)
    lens = await jobs.logit_lens(model, inputs, req.top_k, changes)
    if entries * LENS_JSON_BYTES < OFF_LOOP_BYTES:
        return _lens_json(model, req, inputs, lens)
    return await off_loop(_lens_json, model, req, inputs, lens)


def _lens_positions(row: Row, req: LogitLensRequest) -> list[int]:
    n = len(row.ids)
    return list(range(n)) if req.positions == "all" else [n - 1]


def _lens_json(
    model: ModelInstance, req: LogitLensRequest, inputs: list[Row], lens: list[tuple[np.ndarray, np.ndarray]]
) -> bytes:
    text = model.token_text
    # One join at the end: each copy of a 100 MB answer holds the interpreter (and so the event loop).
    parts = [orjson.dumps({"model": model.name})[:-1], b',"results":[']
    for i, (row, (logprobs, ids)) in enumerate(zip(inputs, lens, strict=True)):
        positions = _lens_positions(row, req)
        layers = [
            [
                [
                    {"token": text[t], "token_id": t, "prob": math.exp(lp), "logprob": lp}
                    for t, lp in zip(ids[layer, p].tolist(), logprobs[layer, p].tolist(), strict=True)
                ]
                for p in positions
            ]
            for layer in range(logprobs.shape[0])
        ]
        token_ids = row.ids.tolist()
        tokens = [text[t] for t in token_ids]
        parts += [b","] if i else []
        parts.append(orjson.dumps({"tokens": tokens, "token_ids": token_ids, "positions": positions, "lens": layers}))
    parts.append(b"]}")
    return b"".join(parts)


async def head_importance(model: ModelInstance, req: HeadImportanceRequest) -> HeadImportanceResponse:
    inputs = await rows(model, req)
    out = []
    for row, (mean, importance) in zip(inputs, await jobs.head_importance(model, inputs), strict=True):
        ids = row.ids.tolist()
        out.append(
            HeadImportanceResult(
                tokens=[model.token_text[t] for t in ids],
                token_ids=ids,
                mean_logprob=mean,
                importance=importance.tolist(),
            )
        )
    return HeadImportanceResponse(model=model.name, results=out)

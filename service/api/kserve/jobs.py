"""attnserve's reading jobs as Open Inference Protocol (KServe v2) models (interventions.py has the
intervention jobs): each job's outputs, parameters and the call on the model that answers it.
serving.py maps model names and requests onto MODELS."""

from __future__ import annotations

from typing import Any

import numpy as np

from bundlespec.graphs import LENS_TOP
from service.api.budget import Reservation
from service.api.kserve import generate, interventions
from service.api.kserve.codec import Output, V2Error
from service.api.kserve.v2model import (
    COMMON_PARAMS,
    LENGTHS,
    PAD_ID,
    TOKEN_IDS,
    Param,
    TensorMeta,
    V2Model,
    edits,
    index_list,
    lengths,
    token_ids,
)
from service.core import jobs
from service.core.inputs import Row
from service.core.instance import ModelInstance


async def _next_token(
    model: ModelInstance, rows: list[Row], params: dict[str, Any], wanted: set[str], _: Reservation | None
) -> list[Output]:
    temperature = params.get("temperature", 1.0)
    if not 1e-3 <= temperature <= 100:
        raise V2Error(f"parameter 'temperature' must be between 0.001 and 100, not {temperature}")
    rows_logprobs = await jobs.next_token_logprobs(model, rows, temperature, await edits(model, params))
    logprobs = np.array(rows_logprobs, dtype=np.float32)  # one copy; np.stack then astype made two
    return [Output("next_token_logprobs", "FP32", logprobs, logprobs.shape), lengths(rows)]


# Bytes held per weight of the padded answer: the float32 array, then its binary or JSON form.
ATTENTION_BYTES = 4 + 10


async def _attention(
    model: ModelInstance, rows: list[Row], params: dict[str, Any], wanted: set[str], held: Reservation | None
) -> list[Output]:
    layers, heads, queries = (index_list(params.get(p), p) for p in ("layers", "heads", "queries"))
    width = max(len(r.ids) for r in rows)
    query_axis = width if queries is None else len(queries)  # every query, padded like the keys, or the asked ones

    def reserve(returned: int) -> None:
        if held is not None and "attention_weights" in wanted:
            per_map = sum(len(r.ids) * (len(r.ids) if queries is None else len(queries)) for r in rows)
            held.take(returned // per_map * len(rows) * query_axis * width * ATTENTION_BYTES)

    maps = await jobs.attention(model, rows, layers, heads, reserve, await edits(model, params), queries)
    layers_, heads_ = maps[0].layers, maps[0].heads
    out = [lengths(rows), token_ids(rows, width)]
    out.append(Output("layers", "INT64", np.array(layers_, dtype=np.int64), (len(layers_),)))
    out.append(Output("heads", "INT64", np.array(heads_, dtype=np.int64), (len(heads_),)))
    if "attention_weights" in wanted:
        weights = np.zeros((len(rows), len(layers_), len(heads_), query_axis, width), dtype=np.float32)
        for i, m in enumerate(maps):
            n = len(m.row.ids)
            weights[i, :, :, : len(m.queries), :n] = m.weights
        out.insert(0, Output("attention_weights", "FP32", weights, weights.shape))
    return out


async def _score(
    model: ModelInstance, rows: list[Row], params: dict[str, Any], wanted: set[str], _: Reservation | None
) -> list[Output]:
    scores = await jobs.score(model, rows, await edits(model, params))
    width = max(len(r.ids) for r in rows)
    logprobs = np.zeros((len(rows), max(width - 1, 0)), dtype=np.float32)
    for i, s in enumerate(scores):
        logprobs[i, : len(s.logprobs)] = s.logprobs
    return [Output("token_logprobs", "FP32", logprobs, logprobs.shape), lengths(rows), token_ids(rows, width)]


async def _logit_lens(
    model: ModelInstance, rows: list[Row], params: dict[str, Any], wanted: set[str], _: Reservation | None
) -> list[Output]:
    top_k = params.get("top_k", 5)
    lens = await jobs.logit_lens(model, rows, top_k, await edits(model, params))
    width = max(len(r.ids) for r in rows)
    depth = lens[0][0].shape[0]
    logprobs = np.zeros((len(rows), depth, width, top_k), dtype=np.float32)
    ids = np.full((len(rows), depth, width, top_k), PAD_ID, dtype=np.int64)
    for i, (lp, top) in enumerate(lens):
        n = lp.shape[1]
        logprobs[i, :, :n], ids[i, :, :n] = lp, top
    return [
        Output("lens_logprobs", "FP32", logprobs, logprobs.shape),
        Output("lens_token_ids", "INT64", ids, ids.shape),
        lengths(rows),
    ]


def _vocab_values(model: ModelInstance, rows: list[Row], params: dict[str, Any]) -> dict[str, int]:
    return {"next_token_logprobs": len(rows) * model.bundle.vocab_size}


def _score_values(model: ModelInstance, rows: list[Row], params: dict[str, Any]) -> dict[str, int]:
    width = max(len(r.ids) for r in rows)
    return {"token_logprobs": len(rows) * (width - 1), "token_ids": len(rows) * width}


def _attention_values(model: ModelInstance, rows: list[Row], params: dict[str, Any]) -> dict[str, int]:
    return {"token_ids": len(rows) * max(len(r.ids) for r in rows)}


def _lens_values(model: ModelInstance, rows: list[Row], params: dict[str, Any]) -> dict[str, int]:
    top_k = params.get("top_k", 5)
    if not 1 <= top_k <= LENS_TOP:
        raise V2Error(f"parameter 'top_k' must be from 1 to {LENS_TOP}, not {top_k}")
    n = len(rows) * (model.bundle.arch.n_layer + 1) * max(len(r.ids) for r in rows) * top_k
    return {"lens_logprobs": n, "lens_token_ids": n}


MODELS: dict[str, V2Model] = {
    m.name: m
    for m in (
        V2Model(
            "next_token",
            "log-probabilities of the next token after each row",
            [
                TensorMeta("next_token_logprobs", "FP32", [-1, -2], "log p(next token) over the vocabulary"),
                LENGTHS,
            ],
            [*COMMON_PARAMS, Param("temperature", (int, float), "softmax temperature (0.001 to 100)")],
            _next_token,
            _vocab_values,
            classified="next_token_logprobs",
        ),
        V2Model(
            "attention",
            "softmax attention weights per layer and head, aligned to each row's tokens",
            [
                TensorMeta(
                    "attention_weights",
                    "FP32",
                    [-1, -1, -1, -1, -1],
                    "[row, layer, head, query, key]: each real query row sums to 1; keys after the query are 0 "
                    "(the query axis holds the asked queries, when the parameter is given)",
                ),
                LENGTHS,
                TOKEN_IDS,
                TensorMeta("layers", "INT64", [-1], "the layer index of each entry of the layer axis"),
                TensorMeta("heads", "INT64", [-1], "the head index of each entry of the head axis"),
            ],
            [
                *COMMON_PARAMS,
                Param("layers", (str, int), 'layer indices, as an int or "0,2"; all by default'),
                Param("heads", (str, int), 'head indices, as an int or "0,2"; all by default'),
                Param("queries", (str, int), 'query positions (the maps\' rows), as an int or "0,9"; all by default'),
            ],
            _attention,
            _attention_values,
        ),
        V2Model(
            "score",
            "log p(token t+1 | tokens <= t) for each row",
            [
                TensorMeta("token_logprobs", "FP32", [-1, -1], "[row, position]: lengths - 1 values per row, then 0"),
                LENGTHS,
                TOKEN_IDS,
            ],
            COMMON_PARAMS,
            _score,
            _score_values,
        ),
        V2Model(
            "logit_lens",
            "each layer's prediction: the residual stream after the embeddings and after every block, read "
            "through the final LayerNorm and the unembedding (the top k per layer and position)",
            [
                TensorMeta(
                    "lens_logprobs",
                    "FP32",
                    [-1, -1, -1, -1],
                    "[row, layer (0: embeddings .. n_layer: the output), position, k]: log-probs, most likely "
                    "first; positions past a row's length are 0",
                ),
                TensorMeta(
                    "lens_token_ids", "INT64", [-1, -1, -1, -1], f"the tokens of lens_logprobs ({PAD_ID}: padding)"
                ),
                LENGTHS,
            ],
            [*COMMON_PARAMS, Param("top_k", (int,), f"tokens per layer and position, 1 to {LENS_TOP} (default 5)")],
            _logit_lens,
            _lens_values,
        ),
        *interventions.MODELS,
        generate.MODEL,
    )
}

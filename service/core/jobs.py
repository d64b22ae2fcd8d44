"""The jobs a model instance does, one function each: rows and options in, domain objects out.

A job checks what only it knows (a top_k against the vocabulary, the size of its answer), submits
rows to the instance's batchers or sequences to its scheduler, and shapes the outputs. Protocols
(service/api/*) call these and render the results; a new job is a new function here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bundlespec.graphs import LENS_TOP
from service.core.errors import InputError
from service.core.generation import GenerationParams, GenerationStream
from service.core.inputs import Row, layer_head_indices
from service.core.instance import ModelInstance
from service.core.runner import Job
from service.core.sampling import log_softmax, top_indices


@dataclass(frozen=True)
class NextTokens:
    """The most likely next tokens after one row, most likely first."""

    row: Row
    token_ids: np.ndarray  # (k,)
    logprobs: np.ndarray  # (k,) float64, after temperature


@dataclass(frozen=True)
class AttentionMaps:
    row: Row
    layers: list[int]
    heads: list[int]
    weights: np.ndarray  # (layers, heads, n, n) float32


@dataclass(frozen=True)
class TokenScores:
    row: Row
    logprobs: np.ndarray  # (n-1,): log p(token t+1 | tokens <= t)
    top_logprobs: np.ndarray  # (n-1, K) the K most likely tokens at each position
    top_ids: np.ndarray  # (n-1, K)


async def _run(model: ModelInstance, graph: str, rows: list[Row], head_mask: np.ndarray | None) -> list:
    return await model.submit(graph, [Job(r.ids, head_mask) for r in rows])


async def next_token_logprobs(
    model: ModelInstance, rows: list[Row], temperature: float = 1.0, head_mask: np.ndarray | None = None
) -> list[np.ndarray]:
    """Each row's next-token log-probabilities over the whole vocabulary, (vocab,) float64."""
    outputs = await _run(model, "next_token", rows, head_mask)
    return [log_softmax(logprobs, temperature) for logprobs in outputs]


async def next_token(
    model: ModelInstance, rows: list[Row], top_k: int, temperature: float = 1.0, head_mask: np.ndarray | None = None
) -> list[NextTokens]:
    if top_k > model.bundle.vocab_size:
        raise InputError(f"top_k={top_k} is larger than the vocabulary ({model.bundle.vocab_size})")
    results = []
    for row, lp in zip(rows, await next_token_logprobs(model, rows, temperature, head_mask), strict=True):
        top = top_indices(lp, top_k)
        results.append(NextTokens(row, top, lp[top]))
    return results


async def attention(
    model: ModelInstance,
    rows: list[Row],
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    reserve: Callable[[int], None] | None = None,
    head_mask: np.ndarray | None = None,
) -> list[AttentionMaps]:
    """`reserve` is called with the number of weights returned before any work is done (the
    protocol takes the answer's bytes from the in-flight budget there, or raises)."""
    arch, config = model.bundle.arch, model.config
    layers, heads = layer_head_indices(arch, layers, heads)
    squares = sum(len(r.ids) ** 2 for r in rows)
    values = len(layers) * len(heads) * squares
    if values > config.max_attention_values:
        raise InputError(
            f"the answer would hold {values:,} attention weights, more than MAX_ATTENTION_VALUES="
            f"{config.max_attention_values:,}; ask for fewer layers, heads or inputs"
        )
    computed = arch.n_layer * arch.n_head * squares
    if computed > config.max_attention_compute:
        raise InputError(
            f"these inputs need {computed:,} attention weights computed (every layer and head of each, "
            f"whatever is returned), more than MAX_ATTENTION_COMPUTE={config.max_attention_compute:,}; "
            "send fewer or shorter inputs per request"
        )
    if reserve is not None:
        reserve(values)
    outputs = await _run(model, "attention", rows, head_mask)
    return [
        AttentionMaps(row, layers, heads, np.ascontiguousarray(w[np.ix_(layers, heads)], dtype=np.float32))
        for row, w in zip(rows, outputs, strict=True)
    ]


async def score(model: ModelInstance, rows: list[Row], head_mask: np.ndarray | None = None) -> list[TokenScores]:
    outputs = await _run(model, "score", rows, head_mask)
    return [TokenScores(row, *out) for row, out in zip(rows, outputs, strict=True)]


async def logit_lens(
    model: ModelInstance, rows: list[Row], top_k: int, head_mask: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each row's (L+1, n, top_k) log-probs and token ids: the residual stream after the
    embeddings and after every block, read through the final LayerNorm and the unembedding."""
    if not 1 <= top_k <= LENS_TOP:
        raise InputError(f"top_k must be from 1 to {LENS_TOP} for the logit lens, not {top_k}")
    outputs = await _run(model, "logit_lens", rows, head_mask)
    return [(lp[:, :, :top_k], ids[:, :, :top_k]) for lp, ids in outputs]


async def head_importance(model: ModelInstance, rows: list[Row]) -> list[tuple[float, np.ndarray]]:
    """Each row's mean log p(next token) with every head on, and its (L, nh) importance: the same
    mean with that one head ablated, minus it. The L x nh ablated copies and the plain one
    run as rows of the score batcher, so they share batches (with each other and other requests)."""
    arch, limit = model.bundle.arch, model.config.max_queue_rows
    L, nh = arch.n_layer, arch.n_head
    copies = L * nh + 1
    if len(rows) * copies > limit:
        raise InputError(
            f"{len(rows)} inputs need {len(rows) * copies} score rows ({copies} each: every head ablated in "
            f"turn, and none), more than MAX_QUEUE_ROWS={limit} can ever hold"
        )
    if any(len(r.ids) < 2 for r in rows):
        raise InputError("every input needs at least two tokens: importance is measured on predicting the next")
    masks: list[np.ndarray | None] = [None]
    for layer in range(L):
        for head in range(nh):
            m = np.ones((L, nh), dtype=np.float32)
            m[layer, head] = 0.0
            masks.append(m)
    outputs = await model.submit("score", [Job(r.ids, m) for r in rows for m in masks])
    out = []
    for i in range(len(rows)):
        means = np.array([float(o[0].mean()) for o in outputs[i * copies : (i + 1) * copies]])  # (copies,)
        out.append((float(means[0]), (means[1:] - means[0]).reshape(L, nh)))
    return out


def generate(model: ModelInstance, requests: Sequence[tuple[Row, GenerationParams]]) -> list[GenerationStream]:
    """Start generating for each (prompt, params); the caller reads and finally cancels each stream."""
    context = model.bundle.context_length
    for i, (row, params) in enumerate(requests):
        if len(row.ids) + params.max_tokens > context:
            raise InputError(
                f"prompt {i} has {len(row.ids)} tokens and max_tokens is {params.max_tokens}: together more "
                f"than the context of {context} tokens; shorten the prompt or lower max_tokens"
            )
    return model.start_sequences([(row.ids, params) for row, params in requests])

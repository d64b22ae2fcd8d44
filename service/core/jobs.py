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
from service.core.inputs import NONE, Interventions, Row, layer_head_indices
from service.core.instance import ModelInstance
from service.core.runner import Job, attention_held
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
    queries: list[int]  # the query positions (rows of each map) returned
    weights: np.ndarray  # (layers, heads, queries, n) float32


@dataclass(frozen=True)
class TokenScores:
    row: Row
    logprobs: np.ndarray  # (n-1,): log p(token t+1 | tokens <= t)
    top_logprobs: np.ndarray  # (n-1, K) the K most likely tokens at each position
    top_ids: np.ndarray  # (n-1, K)


async def _run(model: ModelInstance, graph: str, rows: list[Row], edits: Interventions) -> list:
    return await model.submit(graph, [edits.job(r.ids) for r in rows])


async def next_token_logprobs(
    model: ModelInstance, rows: list[Row], temperature: float = 1.0, edits: Interventions = NONE
) -> list[np.ndarray]:
    """Each row's next-token log-probabilities over the whole vocabulary, (vocab,) float64."""
    outputs = await _run(model, "next_token", rows, edits)  # normalised in float64 at temperature 1
    if temperature == 1.0:
        return outputs
    return [log_softmax(logprobs, temperature) for logprobs in outputs]


async def next_token(
    model: ModelInstance, rows: list[Row], top_k: int, temperature: float = 1.0, edits: Interventions = NONE
) -> list[NextTokens]:
    if top_k > model.bundle.vocab_size:
        raise InputError(f"top_k={top_k} is larger than the vocabulary ({model.bundle.vocab_size})")
    results = []
    for row, lp in zip(rows, await next_token_logprobs(model, rows, temperature, edits), strict=True):
        top = top_indices(lp, top_k)
        results.append(NextTokens(row, top, lp[top]))
    return results


async def attention(
    model: ModelInstance,
    rows: list[Row],
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    reserve: Callable[[int], None] | None = None,
    edits: Interventions = NONE,
    queries: Sequence[int] | None = None,
) -> list[AttentionMaps]:
    """`queries`: the query positions to return (every one by default), the same for every row.
    `reserve` is called with the number of weights returned before any work is done (the protocol
    takes the answer's bytes from the in-flight budget there, or raises)."""
    arch, config = model.bundle.arch, model.config
    layers, heads = layer_head_indices(arch, layers, heads)
    picked = [list(range(len(r.ids))) if queries is None else list(queries) for r in rows]
    for i, (row, asked) in enumerate(zip(rows, picked, strict=True)):
        bad = [q for q in asked if not 0 <= q < len(row.ids)]
        if bad:
            raise InputError(f"queries {bad} are outside input {i}, which has {len(row.ids)} tokens", "queries")
    squares = sum(len(r.ids) ** 2 for r in rows)
    values = len(layers) * len(heads) * sum(len(r.ids) * len(q) for r, q in zip(rows, picked, strict=True))
    if values > config.max_attention_values:
        raise InputError(
            f"the answer would hold {values:,} attention weights, more than MAX_ATTENTION_VALUES="
            f"{config.max_attention_values:,}; ask for fewer layers, heads, queries or inputs"
        )
    # The graph returns the asked-for maps, ascending (bundlespec), and holds one layer's at a time.
    maps = sorted({layer * arch.n_head + head for layer in layers for head in heads})
    held = attention_held(arch.n_head, len(maps), squares)
    if held > config.max_attention_compute:
        raise InputError(
            f"these inputs need {held:,} attention weights held at once (the {len(maps)} maps asked for, "
            f"plus one layer's {arch.n_head} while it runs, at every query and key), more than "
            f"MAX_ATTENTION_COMPUTE={config.max_attention_compute:,}; ask for fewer layers or heads, "
            "or send fewer or shorter inputs per request"
        )
    if reserve is not None:
        reserve(values)
    outputs = await model.submit("attention", [edits.job(r.ids, tuple(maps)) for r in rows])
    where = np.searchsorted(maps, [[layer * arch.n_head + head for head in heads] for layer in layers])
    return [
        AttentionMaps(row, layers, heads, q, np.ascontiguousarray(w[where][:, :, q], dtype=np.float32))
        for row, q, w in zip(rows, picked, outputs, strict=True)
    ]


async def score(model: ModelInstance, rows: list[Row], edits: Interventions = NONE) -> list[TokenScores]:
    outputs = await _run(model, "score", rows, edits)
    return [TokenScores(row, *out) for row, out in zip(rows, outputs, strict=True)]


async def logit_lens(
    model: ModelInstance, rows: list[Row], top_k: int, edits: Interventions = NONE
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each row's (L+1, n, top_k) log-probs and token ids: the residual stream after the
    embeddings and after every block, read through the final LayerNorm and the unembedding."""
    if not 1 <= top_k <= LENS_TOP:
        raise InputError(f"top_k must be from 1 to {LENS_TOP} for the logit lens, not {top_k}")
    outputs = await _run(model, "logit_lens", rows, edits)
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


SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out", "z")


@dataclass(frozen=True)
class ActivationSet:
    """What one row's stream held at the asked sites, layers and positions."""

    row: Row
    layers: list[int]
    positions: list[int]
    sites: dict[str, np.ndarray]  # site -> (layers, positions, C) float32, z: (layers, positions, nh, hs)


def site_values(model: ModelInstance, site: str) -> int:
    """Numbers one layer and position of a site holds."""
    arch = model.bundle.arch
    return arch.n_head * arch.d_head if site == "z" else arch.d_model


def activation_positions(row: Row, positions: str | Sequence[int], what: str = "positions") -> list[int]:
    """ "all", "last" or a list of positions, checked against the row's length."""
    n = len(row.ids)
    if positions == "all":
        return list(range(n))
    if positions == "last":
        return [n - 1]
    assert not isinstance(positions, str), f"unknown positions {positions!r}"
    bad = [p for p in positions if not 0 <= p < n]
    if bad:
        raise InputError(f"{what} {bad} are outside an input of {n} tokens (0..{n - 1})", what)
    return list(positions)


async def activations(
    model: ModelInstance,
    rows: list[Row],
    sites: Sequence[str],
    layers: list[int] | None = None,
    positions: str | Sequence[int] = "all",
    reserve: Callable[[int], None] | None = None,
    edits: Interventions = NONE,
) -> list[ActivationSet]:
    """The residual stream and its parts at the asked sites (SITES; TransformerLens's names), layers
    and positions. `reserve` is called with the count of float32s to return before anything runs."""
    unknown = [s for s in sites if s not in SITES]
    if unknown or not sites:
        raise InputError(f"sites must be some of {', '.join(SITES)}; not {unknown or 'none'}", "sites")
    layers, _ = layer_head_indices(model.bundle.arch, layers, None)
    picked = [activation_positions(row, positions) for row in rows]
    values = sum(len(p) for p in picked) * len(layers) * sum(site_values(model, s) for s in sites)
    if reserve is not None:
        reserve(values)
    outputs = await _run(model, "activations", rows, edits)
    results = []
    for row, at, (resid, attn_out, mlp_out, z) in zip(rows, picked, outputs, strict=True):
        # resid holds the stream before each block and after the last: resid_pre[l] and resid_post[l - 1].
        arrays = {"resid_pre": resid[:-1], "resid_post": resid[1:], "attn_out": attn_out, "mlp_out": mlp_out, "z": z}
        pick = np.ix_(layers, at)
        results.append(ActivationSet(row, layers, at, {s: np.ascontiguousarray(arrays[s][pick]) for s in sites}))
    return results


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

"""Activation patching: which activations carry the difference between two inputs.

Two inputs of the same length, `clean` and `corrupted`, and an answer: a correct and an incorrect
next token. The logit difference (correct minus incorrect, at the last position) is measured with
one activation taken from the other run: the clean one put into the corrupted run (denoise), or
the corrupted one into the clean run (noise). Each cell reports that logit difference and its
normalised score, (patched - corrupted) / (clean - corrupted): 0 is the corrupted run's, 1 the
clean run's, whichever the direction.

A cell is one row of the resume graph (bundlespec): the base run's residual stream at the patched
point, with the patch applied there, run on from that point only, since nothing below a patch
changes. The cells run as rows of shared batches, a chunk at a time, never a request each.

Sites: `heads` (one cell per layer and head: its output at every position, through its slice of
W_O), `resid_pre` (the stream before a block), `attn_out` and `mlp_out` (an attention layer's and
an MLP's output), the last three one cell per layer and position.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from service.core.errors import InputError
from service.core.inputs import Row
from service.core.instance import ModelInstance
from service.core.runner import Job, Resumed

SITES = ("heads", "resid_pre", "attn_out", "mlp_out")
DIRECTIONS = ("denoise", "noise")
# A chunk's residual streams take at most this many bytes; two chunks are in flight at a time, so
# that the next one waits in the queue while one runs.
CHUNK_BYTES = 32 * 1024 * 1024
CHUNKS_IN_FLIGHT = 2


@dataclass(frozen=True)
class Cells:
    """One site's cells: (layers, heads) for heads, (layers, positions) for the others."""

    logit_diff: np.ndarray
    score: np.ndarray


@dataclass(frozen=True)
class Patching:
    answer: tuple[int, int]  # (correct, incorrect) token ids
    clean_logit_diff: float
    corrupted_logit_diff: float
    sites: dict[str, Cells]


@dataclass(frozen=True)
class _Run:
    """What one run's stream held: resid (L+1, n, C), attn_out, mlp_out (L, n, C), z (L, n, nh, hs),
    and mid (L, n, C), the stream after each block's attention output is added."""

    resid: np.ndarray
    attn_out: np.ndarray
    mlp_out: np.ndarray
    z: np.ndarray
    mid: np.ndarray


def cell_count(model: ModelInstance, n_tokens: int, sites: Sequence[str]) -> int:
    arch = model.bundle.arch
    return sum(arch.n_layer * (arch.n_head if s == "heads" else n_tokens) for s in sites)


async def patch(
    model: ModelInstance,
    clean: Row,
    corrupted: Row,
    answer: tuple[int, int] | None = None,
    sites: Sequence[str] = SITES,
    direction: str = "denoise",
    reserve: Callable[[int], None] | None = None,
) -> Patching:
    """`reserve` is called with the bytes the request holds at its peak before anything runs."""
    n = len(clean.ids)
    if len(corrupted.ids) != n:
        raise InputError(
            f"clean has {n} tokens and corrupted has {len(corrupted.ids)}: patching needs the same count "
            "in both, position for position",
            "corrupted",
        )
    unknown = [s for s in sites if s not in SITES]
    if unknown or not sites:
        raise InputError(f"sites must be some of {', '.join(SITES)}; not {unknown or 'none'}", "sites")
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}", "direction")
    arch = model.bundle.arch
    stream_bytes = n * arch.d_model * 4
    chunk = max(1, min(4 * model.config.max_batch_size, CHUNK_BYTES // stream_bytes))
    if reserve is not None:
        activations = 2 * (arch.n_layer * 4 + 1) * stream_bytes  # resid, attn_out, mlp_out, z, mid per run
        reserve(activations + CHUNKS_IN_FLIGHT * chunk * stream_bytes + 16 * cell_count(model, n, sites))

    runs = await model.submit("activations", [Job(clean.ids), Job(corrupted.ids)])
    clean_run, corrupted_run = (_Run(r, a, m, z, r[:-1] + a) for r, a, m, z in runs)
    # The two runs' own answers through the graph the cells go through: each resumed from its embeddings.
    clean_lp, corrupted_lp = await model.submit("resume", [Resumed(r.resid[0], 0) for r in (clean_run, corrupted_run)])
    if answer is None:
        answer = (int(clean_lp.argmax()), int(corrupted_lp.argmax()))
        if answer[0] == answer[1]:
            raise InputError(
                f"both runs predict token {answer[0]} next, so there is no logit difference to restore; "
                "give the answer to measure",
                "answer",
            )
    correct, incorrect = answer
    vocab = model.bundle.vocab_size
    if not (0 <= correct < vocab and 0 <= incorrect < vocab) or correct == incorrect:
        raise InputError(f"the answer must be two different token ids in [0, {vocab}), not {list(answer)}", "answer")
    clean_ld = float(clean_lp[correct] - clean_lp[incorrect])
    corrupted_ld = float(corrupted_lp[correct] - corrupted_lp[incorrect])
    if clean_ld == corrupted_ld:
        raise InputError(
            f"the answer's logit difference is {clean_ld:.6g} in both runs: there is nothing to restore, and "
            "scores would divide by zero; choose another answer",
            "answer",
        )

    base, source = (corrupted_run, clean_run) if direction == "denoise" else (clean_run, corrupted_run)
    cells = list(_cells(model, n, sites))
    diffs = np.empty(len(cells), dtype=np.float64)
    chunks = [range(i, min(i + chunk, len(cells))) for i in range(0, len(cells), chunk)]
    gate = asyncio.Semaphore(CHUNKS_IN_FLIGHT)

    async def run(part: range) -> None:
        async with gate:  # streams are built when a chunk's turn comes, so at most two exist at once
            streams = [_patched(model, base, source, *cells[i]) for i in part]
            for i, lp in zip(part, await model.submit("resume", streams), strict=True):
                diffs[i] = lp[correct] - lp[incorrect]

    await asyncio.gather(*(run(part) for part in chunks))
    out, start = {}, 0
    for site in sites:
        shape = (arch.n_layer, arch.n_head if site == "heads" else n)
        ld = diffs[start : start + shape[0] * shape[1]].reshape(shape)
        start += ld.size
        out[site] = Cells(ld, (ld - corrupted_ld) / (clean_ld - corrupted_ld))
    return Patching(answer, clean_ld, corrupted_ld, out)


def _cells(model: ModelInstance, n: int, sites: Sequence[str]) -> Iterator[tuple[str, int, int]]:
    """(site, layer, head or position) for every cell, in the answer's order."""
    arch = model.bundle.arch
    for site in sites:
        for layer in range(arch.n_layer):
            for index in range(arch.n_head if site == "heads" else n):
                yield site, layer, index


def _patched(model: ModelInstance, base: _Run, source: _Run, site: str, layer: int, index: int) -> Resumed:
    """The base run's stream at the cell's point, with the source run's activation put in there."""
    if site == "heads":
        d_head = model.bundle.arch.d_head
        head = slice(index * d_head, (index + 1) * d_head)
        w_o = model.bundle.weight(f"blocks.{layer}.attn.w_o.weight")[:, head]  # (C, hs): the head's slice of W_O
        change = (source.z[layer, :, index] - base.z[layer, :, index]) @ w_o.T  # (n, C)
        return Resumed(base.mid[layer] + change, 2 * layer + 1)
    if site == "resid_pre":
        stream, entry = base.resid[layer].copy(), 2 * layer
        stream[index] = source.resid[layer, index]
    elif site == "attn_out":
        stream, entry = base.mid[layer].copy(), 2 * layer + 1
        stream[index] = base.resid[layer, index] + source.attn_out[layer, index]
    else:  # mlp_out: the stream after the block, its MLP's part taken from the source run
        stream, entry = base.resid[layer + 1].copy(), 2 * layer + 2
        stream[index] = base.mid[layer, index] + source.mlp_out[layer, index]
    return Resumed(stream, entry)

"""Timing helpers shared by the benchmarks: medians, the machine's matmul peak, FLOP counts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np


def median_seconds(fn: Callable[[], object], min_time: float = 0.4, min_reps: int = 3, max_reps: int = 200) -> float:
    fn()  # warm-up: first calls allocate
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - started < min_time and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak_gflops() -> float:
    """The machine's own float32 matrix-multiply rate: the ceiling for this model's arithmetic."""
    import torch

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(10))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def forward_flops(cfg: dict, batch: int, length: int, kind: str) -> float:
    """Floating-point operations (2 per multiply-add) of one call of a graph.

    Attention is counted over the full T x T square that is computed. The next-token graph runs its
    last block for the last position only: keys and values for every token, the rest for one.
    """
    c, n_layer, vocab, t = cfg["d_model"], cfg["n_layer"], cfg["vocab_size"], length
    qkvo, mlp, attn = 2 * 4 * c * c, 2 * 8 * c * c, 2 * 2 * t * c  # per token and layer
    if kind == "next_token":
        last_block = t * 2 * 2 * c * c + (2 * 2 * c * c + mlp + attn)
        per_row = (n_layer - 1) * t * (qkvo + mlp + attn) + last_block + 2 * c * vocab
    elif kind == "score":
        per_row = n_layer * t * (qkvo + mlp + attn) + (t - 1) * 2 * c * vocab
    else:
        per_row = n_layer * t * (qkvo + mlp + attn)
    return batch * per_row


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"

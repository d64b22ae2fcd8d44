"""Choosing tokens from log-probabilities: temperature, top-k, top-p and a seeded generator.

Used by next-token (temperature and the top-k listing) and by generation (drawing each token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def log_softmax(logprobs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """log softmax(logits / T) over the last axis, in float64, from log-probs (or logits).

    Log-probs and logits differ by a constant per row, so either gives the same answer.
    """
    lp = logprobs.astype(np.float64)
    lp = (lp - lp.max(axis=-1, keepdims=True)) / temperature
    return lp - np.logaddexp.reduce(lp, axis=-1, keepdims=True)


def top_indices(lp: np.ndarray, k: int) -> np.ndarray:
    """The k most likely token ids of a (V,) vector, most likely first (ties keep id order)."""
    k = min(k, lp.shape[-1])
    top = np.argpartition(-lp, k - 1)[:k]
    return top[np.argsort(-lp[top], kind="stable")]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches top_p
    top_k: int = 0  # keep the k most likely tokens; 0 keeps all


class Sampler:
    """Draws tokens for one sequence. Its generator is its own, so with the same seed the same
    request gives the same tokens whatever else runs in the batch."""

    def __init__(self, params: SamplingParams, seed: int | tuple[int, ...] | None) -> None:
        self.params = params
        self.rng = np.random.default_rng(seed)

    def choose(self, logprobs: np.ndarray) -> int:
        p = self.params
        if p.temperature == 0:
            return int(np.argmax(logprobs))
        lp = log_softmax(logprobs, p.temperature)
        order = top_indices(lp, p.top_k) if p.top_k else np.argsort(-lp, kind="stable")
        probs = np.exp(lp[order])
        if p.top_p < 1.0:
            # Keep tokens until the probability before each one reaches top_p (the first always stays).
            before = np.cumsum(probs) - probs
            keep = before < p.top_p
            order, probs = order[keep], probs[keep]
        cumulative = np.cumsum(probs)
        u = self.rng.random() * cumulative[-1]
        return int(order[min(int(np.searchsorted(cumulative, u, side="right")), len(order) - 1)])

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
    # After the shift every term is <= 0 and the largest is exp(0) = 1, so the plain sum neither
    # overflows nor underflows; np.logaddexp.reduce gives the same to 1e-14 at ten times the cost
    # (about 75 us against 7 for 2,048 tokens), and this runs on the event loop for every request.
    return lp - np.log(np.exp(lp).sum(axis=-1, keepdims=True))


# Up to this k, top_indices takes k passes of argmax (about 1 us each over 2,048 tokens) rather than
# argpartition (about 20 us whatever the k): the usual top 5 of a next-token request runs on the event loop.
ARGMAX_UP_TO = 8


def top_indices(lp: np.ndarray, k: int) -> np.ndarray:
    """The k most likely token ids of a (V,) vector, most likely first (ties keep id order)."""
    k = min(k, lp.shape[-1])
    if k <= ARGMAX_UP_TO:
        rest = lp.copy()
        top = np.empty(k, dtype=np.intp)
        for n in range(k):
            top[n] = i = rest.argmax()  # the first of equal maxima: the lowest id
            if rest[i] == -np.inf:
                break  # only -inf is left: the general case below orders those
            rest[i] = -np.inf
        else:
            return top
    kth = -np.partition(-lp, k - 1)[k - 1]  # the k-th largest value
    top = np.flatnonzero(lp >= kth)  # every id at or above it, in id order, so ties at the k-th stay in order
    return top[np.argsort(-lp[top], kind="stable")][:k]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches top_p
    top_k: int = 0  # keep the k most likely tokens; 0 keeps all
    min_p: float = 0.0  # drop tokens less likely than min_p times the most likely one
    # > 1 discourages tokens already in the prompt or the text: their log-probs (all <= 0) are
    # multiplied by it before choosing, as HF and vLLM do to negative logits. 1 is off.
    repetition_penalty: float = 1.0


class Sampler:
    """Draws tokens for one sequence. Its generator is its own, so with the same seed the same
    request gives the same tokens whatever else runs in the batch."""

    def __init__(
        self, params: SamplingParams, seed: int | tuple[int, ...] | None, prompt: np.ndarray | None = None
    ) -> None:
        self.params = params
        self.rng = np.random.default_rng(seed)
        # The token ids seen so far (prompt and text), kept only when a repetition penalty needs them.
        self.seen: set[int] | None = None
        if params.repetition_penalty != 1.0:
            self.seen = set() if prompt is None else {int(t) for t in prompt}

    def choose(self, logprobs: np.ndarray) -> int:
        token = self._choose(logprobs)
        if self.seen is not None:
            self.seen.add(token)
        return token

    def _choose(self, logprobs: np.ndarray) -> int:
        p = self.params
        if self.seen:
            logprobs = logprobs.copy()  # the caller reports the model's own log-probs
            seen = np.fromiter(self.seen, dtype=np.int64, count=len(self.seen))
            logprobs[seen] *= p.repetition_penalty
        if p.temperature == 0:
            return int(np.argmax(logprobs))
        lp = log_softmax(logprobs, p.temperature)
        order = top_indices(lp, p.top_k) if p.top_k else np.argsort(-lp, kind="stable")
        probs = np.exp(lp[order])
        if p.min_p > 0.0:
            keep = probs >= p.min_p * probs[0]  # probs[0] is the most likely token's
            order, probs = order[keep], probs[keep]
        if p.top_p < 1.0:
            # Keep tokens until the probability before each one reaches top_p (the first always stays).
            before = np.cumsum(probs) - probs
            keep = before < p.top_p
            order, probs = order[keep], probs[keep]
        cumulative = np.cumsum(probs)
        u = self.rng.random() * cumulative[-1]
        return int(order[min(int(np.searchsorted(cumulative, u, side="right")), len(order) - 1)])

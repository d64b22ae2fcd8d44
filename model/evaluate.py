"""Validation figures in nats per character, comparable across tokenizers."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from model.transformer import AttentionLM


@torch.no_grad()
def total_nll(model: AttentionLM, tokens: np.ndarray, context: int, batch_size: int = 16) -> float:
    """Sum of -log p(token | preceding tokens) over tokens[1:], in nats.

    The stream is cut into windows of `context` predictions that overlap by one token, so every
    token after the first is predicted exactly once, with up to `context` tokens before it.
    """
    was_training = model.training
    model.eval()
    ids = torch.from_numpy(tokens.astype(np.int64))
    starts = list(range(0, len(ids) - 1, context))
    total = 0.0
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        n = max(min(context, len(ids) - 1 - s) for s in chunk)
        x = torch.zeros(len(chunk), n, dtype=torch.long)
        y = torch.full((len(chunk), n), -100, dtype=torch.long)  # -100: ignored by cross_entropy
        for row, s in enumerate(chunk):
            m = min(context, len(ids) - 1 - s)
            x[row, :m] = ids[s : s + m]
            y[row, :m] = ids[s + 1 : s + 1 + m]
        # Short rows are right padded; causality keeps the padding from affecting real positions.
        logits, _ = model(x)
        total += F.cross_entropy(
            logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-100, reduction="sum"
        ).item()
    model.train(was_training)
    return total


def bigram_nll(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int, alpha: float = 0.1) -> float:
    """Count-based bigram baseline with add-alpha smoothing: sum of -log p over val_tokens[1:]."""
    counts = np.zeros((vocab_size, vocab_size), dtype=np.float64)
    np.add.at(counts, (train_tokens[:-1], train_tokens[1:]), 1.0)
    probs = (counts + alpha) / (counts.sum(axis=1, keepdims=True) + alpha * vocab_size)
    return float(-np.log(probs[val_tokens[:-1], val_tokens[1:]]).sum())

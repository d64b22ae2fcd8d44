"""How a batch of token rows is laid out for the prompt graphs: right padded, with a mask."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad(rows: Sequence[np.ndarray], min_length: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token rows into input_ids and attention_mask, both (B, T) int64, T at least min_length."""
    ids = np.zeros((len(rows), max(min_length, *(len(r) for r in rows))), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask

"""How a batch of token rows is laid out for the prompt graphs: right padded, with a mask, in length groups.

The grouping lives here, beside the padding, so that the benchmark's Triton peer batches exactly
as the service does (benchmarks/peers/triton_server.py).
"""

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


def group_by_length(lengths: Sequence[int], max_padding: float) -> list[list[int]]:
    """Split a batch into groups of row indices whose padding stays small.

    Padding every row to the batch's longest wastes most of the work when short and long inputs
    arrive together (a 250-token prompt pads thirty 10-token ones to 250). Rows are taken longest
    first; a group closes when adding the next row would make its padded size exceed
    (1 + max_padding) times its real tokens. max_padding=inf gives one group (plain padding).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    real = 0
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= (1 + max_padding) * (real + lengths[i]):
            groups[-1].append(i)
            real += lengths[i]
        else:
            groups.append([i])
            real = lengths[i]
    return groups

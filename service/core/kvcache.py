"""KV-cache storage for the generating sequences: allocated once, written in place, never copied per step.

Slots, not paged blocks. A sequence takes one row of every layer's key and value storage for its
life, as long as the model's context. Paging (vLLM's block tables) pays off when contexts are long
and most sequences are short of them; here the context is a few hundred tokens, and reading a
block table's scattered blocks would take a gather inside the decode graph, which copies every
cache again: exactly the per-step copy this storage exists to avoid. With rows, a decode step
hands ONNX Runtime each layer's storage as it lies in memory (IO binding to the buffer itself),
and the graph writes the step's new keys and values into it (its present outputs are bound to the
same buffers).

Two choices keep every step's inputs contiguous, so that they can be bound without a copy:
- The live sequences hold rows 0..n-1. One that leaves hands its row to the last one (a single
  row moved, once), so a step's batch is always a prefix of the storage.
- Each buffer is laid out as (rows, heads, capacity, d_head), with a capacity that follows the
  longest live sequence in powers of two (at least MIN_CAPACITY, at most the context). Attention
  reads every position up to the capacity, so a fixed capacity of the whole context would make a
  step read (and mask) up to eight times the keys it needs: reading the cache is what a decode
  step's time goes to. Growing re-lays the live rows once per doubling; shrinking waits until the
  longest row fits a quarter, so a sequence never re-lays more than a few times in its life.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import numpy as np

MIN_CAPACITY = 16
Owner = TypeVar("Owner")


class KVCache(Generic[Owner]):
    def __init__(self, n_layer: int, n_head: int, d_head: int, rows: int, context: int) -> None:
        self.n_layer, self.n_head, self.d_head = n_layer, n_head, d_head
        self.context = context
        self.max_rows = rows
        # Keys of every layer, then values of every layer: the decode graph's input order.
        self._buffers = [np.zeros(rows * n_head * context * d_head, dtype=np.float32) for _ in range(2 * n_layer)]
        self.capacity = self._tier(1)
        self.owners: list[Owner] = []  # owners[i] holds row i
        self._row: dict[int, int] = {}  # id(owner) -> row

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers)

    def row(self, owner: Owner) -> int | None:
        return self._row.get(id(owner))

    def views(self, rows: int | None = None) -> list[np.ndarray]:
        """Each layer's keys, then each layer's values, for the first rows (all live ones by default):
        (rows, nh, capacity, hs) views of the storage itself (writing to them writes the cache)."""
        n = len(self.owners) if rows is None else rows
        shape = (n, self.n_head, self.capacity, self.d_head)
        return [b[: n * self.n_head * self.capacity * self.d_head].reshape(shape) for b in self._buffers]

    def add(self, owner: Owner, keys: np.ndarray, values: np.ndarray) -> int:
        """A new sequence's prompt: keys and values (L, nh, n, hs) go to the next free row."""
        if len(self.owners) >= self.max_rows:
            raise RuntimeError(f"the KV cache has no free row (all {self.max_rows} are held)")
        n = keys.shape[2]
        self.owners.append(owner)
        row = len(self.owners) - 1
        self._row[id(owner)] = row
        if self._tier(n) > self.capacity:
            self._relayout(self._tier(n))
        views = self.views()
        for layer in range(self.n_layer):
            views[layer][row, :, :n] = keys[layer]
            views[self.n_layer + layer][row, :, :n] = values[layer]
        return row

    def remove(self, owner: Owner) -> None:
        """Free the owner's row (if it holds one): the last row moves into it."""
        row = self._row.pop(id(owner), None)
        if row is None:
            return
        last = len(self.owners) - 1
        if row != last:
            moved = self.owners[last]
            for view in self.views():
                view[row] = view[last]
            self.owners[row] = moved
            self._row[id(moved)] = row
        self.owners.pop()

    def fit(self, longest: int) -> None:
        """Before a step: make room for positions 0..longest (the step writes at each row's length,
        the longest being longest): grow to the next power of two, or shrink when the rows fit a quarter."""
        need = self._tier(longest + 1)
        if need > self.capacity or need * 4 <= self.capacity:
            self._relayout(need if need > self.capacity else 2 * need)

    def _tier(self, positions: int) -> int:
        tier = MIN_CAPACITY
        while tier < positions:
            tier *= 2
        return min(tier, self.context)

    def _relayout(self, capacity: int) -> None:
        keep = min(capacity, self.capacity)
        old = [v[:, :, :keep].copy() for v in self.views()]  # the live rows only
        self.capacity = capacity
        for view, kept in zip(self.views(), old, strict=True):
            view[:, :, :keep] = kept

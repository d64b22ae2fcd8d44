"""KV-cache storage for the generating sequences: allocated once, written in place, never copied per step.

Slots, not paged blocks. A sequence takes one row of every layer's key and value storage for its
life, as long as the model's context. Paging (vLLM's block tables) pays off when contexts are long
and most sequences are short of them; here the context is a few hundred tokens, and reading a
block table's scattered blocks would take a gather inside the decode graph, which copies every
cache again: exactly the per-step copy this storage exists to avoid. With rows, a decode step
hands ONNX Runtime each layer's storage as it lies in memory (IO binding to the buffer itself),
and the graph writes the step's new keys and values into it (its present outputs are bound to the
same buffers).

The storage lives where the decode graph runs: ONNX Runtime OrtValues on the session's device
(`cpu` or `cuda`), bound by address. A step therefore moves nothing between host and device. The
writes outside a step (a new prompt's row, a row that moves, a change of capacity) happen once per
sequence event, not per token: on the CPU they write the storage directly (an OrtValue's numpy view
is its own memory); on a GPU they read the storage to the host, change it there and write it back,
which costs a copy per such event and none per step.

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

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import onnxruntime as ort

MIN_CAPACITY = 16
Owner = TypeVar("Owner")


@dataclass(frozen=True)
class Bound:
    """What the decode graph is bound to: every layer's keys, then values, as (rows, nh, capacity,
    hs) float32 blocks at these addresses on this device."""

    device: str
    shape: tuple[int, int, int, int]
    addresses: tuple[int, ...]


class KVCache(Generic[Owner]):
    def __init__(self, n_layer: int, n_head: int, d_head: int, rows: int, context: int, device: str = "cpu") -> None:
        self.n_layer, self.n_head, self.d_head = n_layer, n_head, d_head
        self.context = context
        self.max_rows = rows
        self.device = device
        size = rows * n_head * context * d_head
        # Keys of every layer, then values of every layer: the decode graph's input order.
        self._storage = [
            ort.OrtValue.ortvalue_from_numpy(np.zeros(size, dtype=np.float32), device, 0) for _ in range(2 * n_layer)
        ]
        self.capacity = self._tier(1)
        self.owners: list[Owner] = []  # owners[i] holds row i
        self._row: dict[int, int] = {}  # id(owner) -> row
        self._grouping = False  # inside changes()
        self._held: list[np.ndarray] | None = None  # host arrays read inside changes(), written back at its end

    @property
    def nbytes(self) -> int:
        return sum(v.tensor_size_in_bytes() for v in self._storage)

    @property
    def addresses(self) -> list[int]:
        """Where each buffer lies: fixed for the cache's life."""
        return [v.data_ptr() for v in self._storage]

    def row(self, owner: Owner) -> int | None:
        return self._row.get(id(owner))

    def bound(self, rows: int | None = None) -> Bound:
        """The first rows (all live ones by default), for the decode graph: a prefix of each buffer."""
        n = len(self.owners) if rows is None else rows
        return Bound(self.device, (n, self.n_head, self.capacity, self.d_head), tuple(self.addresses))

    def read(self) -> list[np.ndarray]:
        """The live rows as host arrays (rows, nh, capacity, hs): the storage itself on the CPU, a
        copy from a GPU."""
        with self._host() as flat:
            return self._shaped(flat)

    def add(self, owner: Owner, keys: np.ndarray, values: np.ndarray) -> int:
        """A new sequence's prompt: keys and values (L, nh, n, hs) go to the next free row."""
        if len(self.owners) >= self.max_rows:
            raise RuntimeError(f"the KV cache has no free row (all {self.max_rows} are held)")
        n = keys.shape[2]
        with self._host() as flat:
            if self._tier(n) > self.capacity:
                self._relayout(flat, self._tier(n))
            self.owners.append(owner)
            row = len(self.owners) - 1
            self._row[id(owner)] = row
            views = self._shaped(flat)
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
            with self._host() as flat:
                for view in self._shaped(flat):
                    view[row] = view[last]
            self.owners[row] = moved
            self._row[id(moved)] = row
        self.owners.pop()

    def fit(self, longest: int) -> None:
        """Before a step: make room for positions 0..longest (the step writes at each row's length,
        the longest being longest): grow to the next power of two, or shrink when the rows fit a quarter."""
        need = self._tier(longest + 1)
        if need > self.capacity or need * 4 <= self.capacity:
            with self._host() as flat:
                self._relayout(flat, need if need > self.capacity else 2 * need)

    def _tier(self, positions: int) -> int:
        tier = MIN_CAPACITY
        while tier < positions:
            tier *= 2
        return min(tier, self.context)

    @contextmanager
    def changes(self) -> Iterator[None]:
        """Group the changes between two steps (rows leaving, prompts joining, a new capacity), so
        that a GPU's storage goes to the host and back at most once for all of them, and not at all
        when nothing changes."""
        if self._grouping:
            yield
            return
        self._grouping = True
        try:
            yield
        finally:
            self._grouping = False
            held, self._held = self._held, None
            if held is not None:
                self._write_back(held)

    @contextmanager
    def _host(self) -> Iterator[list[np.ndarray]]:
        """The flat buffers as host arrays, for a change outside a step; written back from a GPU."""
        if self._held is not None:
            yield self._held
            return
        flat = [v.numpy() for v in self._storage]  # on the CPU, views of the storage itself
        if self._grouping:
            self._held = flat  # written back when changes() ends
            yield flat
            return
        yield flat
        self._write_back(flat)

    def _write_back(self, flat: list[np.ndarray]) -> None:
        for value, array in zip(self._storage, flat, strict=True):
            if array.ctypes.data != value.data_ptr():  # a copy (from a GPU)
                value.update_inplace(array)

    def _shaped(self, flat: list[np.ndarray]) -> list[np.ndarray]:
        n = len(self.owners)
        size = n * self.n_head * self.capacity * self.d_head
        return [b[:size].reshape(n, self.n_head, self.capacity, self.d_head) for b in flat]

    def _relayout(self, flat: list[np.ndarray], capacity: int) -> None:
        keep = min(capacity, self.capacity)
        old = [v[:, :, :keep].copy() for v in self._shaped(flat)]  # the live rows only
        self.capacity = capacity
        for view, kept in zip(self._shaped(flat), old, strict=True):
            view[:, :, :keep] = kept

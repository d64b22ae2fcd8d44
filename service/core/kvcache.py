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
(`cpu` or `cuda`), bound by address, and it never goes to the host. The writes outside a step run
on the device too, through the bundle's two helper graphs bound to places in the storage: a new
prompt's row is one copy per layer's keys and values from the prefill's output; a row that moves is
one device-to-device copy each; a change of capacity is a resize into a scratch buffer and a copy
back, per buffer. The same calls run on the CPU, so the tests run the GPU's code path.

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

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np
import onnxruntime as ort

MIN_CAPACITY = 16
FLOAT = 4  # bytes
Owner = TypeVar("Owner")


@dataclass(frozen=True)
class Bound:
    """What the decode graph is bound to: every layer's keys, then values, as (rows, nh, capacity,
    hs) float32 blocks at these addresses on this device."""

    device: str
    shape: tuple[int, int, int, int]
    addresses: tuple[int, ...]


class DeviceCopies(Protocol):
    """Copies on the device (the runner runs them with the bundle's helper graphs)."""

    @property
    def device(self) -> str: ...

    def copy(self, target: int, size: int, source: np.ndarray | int) -> None: ...

    def resize(self, source: int, shape: tuple[int, int, int, int], target: int, capacity: int) -> None: ...


class KVCache(Generic[Owner]):
    def __init__(self, n_layer: int, n_head: int, d_head: int, rows: int, context: int, ops: DeviceCopies) -> None:
        self.n_layer, self.n_head, self.d_head = n_layer, n_head, d_head
        self.context = context
        self.max_rows = rows
        self.ops = ops
        self.device = ops.device
        size = rows * n_head * context * d_head

        def buffer() -> ort.OrtValue:
            return ort.OrtValue.ortvalue_from_numpy(np.zeros(size, dtype=np.float32), self.device, 0)

        # Keys of every layer, then values of every layer: the decode graph's input order.
        self._storage = [buffer() for _ in range(2 * n_layer)]
        self._scratch = buffer()  # where a buffer's rows are laid out anew when the capacity changes
        self.capacity = self._tier(1)
        self.owners: list[Owner] = []  # owners[i] holds row i
        self._row: dict[int, int] = {}  # id(owner) -> row

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
        """The live rows as host arrays (rows, nh, capacity, hs), for inspection: the storage itself
        on the CPU, a copy from a GPU."""
        n = len(self.owners)
        size = n * self.n_head * self.capacity * self.d_head
        return [v.numpy()[:size].reshape(n, self.n_head, self.capacity, self.d_head) for v in self._storage]

    def add(self, owner: Owner, keys: np.ndarray, values: np.ndarray) -> int:
        """A new sequence's prompt: keys and values (L, nh, n, hs) go to the next free row."""
        if len(self.owners) >= self.max_rows:
            raise RuntimeError(f"the KV cache has no free row (all {self.max_rows} are held)")
        n = keys.shape[2]
        if self._tier(n) > self.capacity:
            self._relayout(self._tier(n))
        self.owners.append(owner)
        row = len(self.owners) - 1
        self._row[id(owner)] = row
        # One whole row per buffer (positions past the prompt are zeros): a single contiguous copy.
        staged = np.zeros((self.n_head, self.capacity, self.d_head), dtype=np.float32)
        for address, source in zip(self.addresses, (*keys, *values), strict=True):
            staged[:, :n] = source
            self.ops.copy(address + row * self._row_bytes, staged.size, staged)
        return row

    def remove(self, owner: Owner) -> None:
        """Free the owner's row (if it holds one): the last row moves into it."""
        row = self._row.pop(id(owner), None)
        if row is None:
            return
        last = len(self.owners) - 1
        if row != last:
            moved = self.owners[last]
            size = self._row_bytes // FLOAT
            for address in self.addresses:
                self.ops.copy(address + row * self._row_bytes, size, address + last * self._row_bytes)
            self.owners[row] = moved
            self._row[id(moved)] = row
        self.owners.pop()

    def fit(self, longest: int) -> None:
        """Before a step: make room for positions 0..longest (the step writes at each row's length,
        the longest being longest): grow to the next power of two, or shrink when the rows fit a quarter."""
        need = self._tier(longest + 1)
        if need > self.capacity or need * 4 <= self.capacity:
            self._relayout(need if need > self.capacity else 2 * need)

    @property
    def _row_bytes(self) -> int:
        return self.n_head * self.capacity * self.d_head * FLOAT

    def _tier(self, positions: int) -> int:
        tier = MIN_CAPACITY
        while tier < positions:
            tier *= 2
        return min(tier, self.context)

    def _relayout(self, capacity: int) -> None:
        n = len(self.owners)
        old = (n, self.n_head, self.capacity, self.d_head)
        self.capacity = capacity
        if n == 0:
            return
        scratch = self._scratch.data_ptr()
        for address in self.addresses:
            self.ops.resize(address, old, scratch, capacity)
            self.ops.copy(address, n * self._row_bytes // FLOAT, scratch)

"""Giving freed memory back to the system, so that the process's RSS shows what it really holds."""

from __future__ import annotations

import contextlib
import ctypes

# Past this many bytes freed at once (a large answer, a vocabulary-wide run), the heap is trimmed.
TRIM_AFTER_BYTES = 32_000_000


def trim_heap() -> None:
    """glibc keeps freed heap pages for reuse; malloc_trim hands them back (a no-op elsewhere). ctypes
    lets other threads run while it works."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)

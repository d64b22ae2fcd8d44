"""The process's resident memory: measuring it, and giving freed memory back so that it shows what
the process really holds."""

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


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:  # not Linux: sizes are reported as 0
        return 0

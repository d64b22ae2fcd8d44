"""The threads beside the event loop: work too big for it, at a priority below it."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


# Inference threads run at a lower priority than the event loop (nice +5: about a third of its CPU
# share when both want a core), so that probes and new requests are answered at once while every
# core computes. Raising a thread's nice value needs no privilege.
INFERENCE_NICE = 5


# Work too big for the event loop (serialising tens of MB, tokenizing a megabyte) runs here, at the
# inference threads' lower priority.
_OFF_LOOP = ThreadPoolExecutor(
    max_workers=2, thread_name_prefix="off-loop", initializer=lambda: yield_to_event_loop([None])
)


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_OFF_LOOP, functools.partial(fn, *args))


def yield_to_event_loop(threads: Iterable[str | None]) -> None:
    """Lower the priority of these threads (Linux thread ids; None: the calling thread)."""
    if not hasattr(os, "setpriority") or not os.path.isdir("/proc/self/task"):
        return
    for t in threads:
        tid = threading.get_native_id() if t is None else int(t)
        try:
            os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), INFERENCE_NICE))
        except OSError:  # the thread has ended, or the platform forbids it: priority is an optimisation
            log.debug("could not lower the priority of thread %s", tid)

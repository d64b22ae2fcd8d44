"""Dynamic batching: rows from concurrent requests go to the model together.

Each row waits in a bounded queue as a small item holding its input and a future. One consumer
task per endpoint takes the first waiting row, then keeps taking rows until the batch is full or
MAX_BATCH_DELAY_MS has passed since that first row arrived. That wait is only worth paying when the
server is busy: if no row was waiting when the previous batch finished, the next row runs at once
(a lone client would otherwise pay the full delay on every request); rows whose caller has gone are dropped
before the model runs. The model call goes to a dedicated executor so the event loop keeps
answering health checks and taking requests while a batch runs.

A row that has no answer within timeout_s fails with InferenceTimeoutError, whether it still waits
or its batch runs. One timer per batcher does this, not one per request: rows are queued in time
order, so their deadlines are too, and the timer only ever looks at the oldest unanswered row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from service.core.errors import DrainingError, InferenceTimeoutError, QueueFullError

log = logging.getLogger(__name__)

RunBatch = Callable[[Sequence[Any]], Sequence[Any]]


@dataclass
class _Row:
    payload: Any
    future: asyncio.Future
    origin: Any = None  # the observer's origin() of the request (a trace context), or None
    enqueued: float = field(default_factory=time.perf_counter)


def _resolve(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    # A caller that timed out or disconnected has cancelled its future; setting it would raise.
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class BatchObserver:
    """Hooks for metrics and traces; the default does nothing."""

    def queue_depth(self, rows: int) -> None: ...

    def batch_done(self, size: int, queue_waits: list[float], inference_s: float) -> None: ...

    def origin(self) -> Any:
        """Called in the caller's own context when it queues its rows: what a trace of the batch links
        back to (None: nothing to link, and batch_traced is not called for those rows)."""
        return None

    def batch_traced(self, origins: list[Any], enqueued: list[float], started: float, finished: float) -> None:
        """A batch ran: each row's origin and perf_counter() times (queued, batch start and end)."""


class DynamicBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        executor: Executor,
        max_batch_size: int,
        max_delay_s: float,
        max_queue_rows: int,
        name: str = "batcher",
        observer: BatchObserver | None = None,
        cost: Callable[[Any], int] | None = None,
        max_batch_cost: int | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self._run_batch = run_batch
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_rows = max_queue_rows
        self.name = name
        self._observer = observer or BatchObserver()
        self._queue: asyncio.Queue[_Row] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._running: list[_Row] = []  # rows taken from the queue and not yet answered
        self._busy = False  # rows were waiting when the last batch finished: worth waiting for company
        # A batch also closes before its rows' summed cost passes max_batch_cost (attention: its work
        # grows with the square of the length), so that one heavy batch cannot hold the single
        # inference worker for long while other endpoints' batches wait behind it.
        self._cost = cost
        self.max_batch_cost = max_batch_cost
        self._carry: _Row | None = None  # the row that would have passed the cost: first in the next batch
        self.timeout_s = timeout_s
        self._unanswered: deque[_Row] = deque()  # rows in the order queued, so in deadline order
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._consume(), name=f"{self.name}-consumer")

    async def submit(self, payloads: Sequence[Any]) -> list[Any]:
        """Queue the rows of one request and wait for their results, in order.

        Raises QueueFullError at once when the rows do not fit, DrainingError after stop() began,
        and whatever the model raised for this batch. Cancelling the caller drops its rows.
        """
        if self._closing:
            raise DrainingError("the server is shutting down")
        if self._queue.qsize() + len(payloads) > self.max_queue_rows:
            raise QueueFullError(
                f"the {self.name} queue is full ({self._queue.qsize()} of {self.max_queue_rows} rows waiting)"
            )
        loop = asyncio.get_running_loop()
        origin = self._observer.origin()
        rows = [_Row(p, loop.create_future(), origin) for p in payloads]
        for row in rows:
            self._queue.put_nowait(row)
        self._observer.queue_depth(self._queue.qsize())
        pending = self._unanswered
        while pending and pending[0].future.done():  # answered, mostly in the order queued
            pending.popleft()
        pending.extend(rows)
        if self._timer is None:
            self._timer = loop.call_at(loop.time() + self.timeout_s, self._expire)
        try:
            if len(rows) == 1:  # most requests: no gather to build
                return [await rows[0].future]
            return list(await asyncio.gather(*(r.future for r in rows)))
        finally:
            for row in rows:
                row.future.cancel()  # no-op for finished rows; frees queued ones when the caller left

    def _expire(self) -> None:
        """Fail the rows past their deadline; then sleep until the oldest unanswered row's."""
        self._timer = None
        now = time.perf_counter()
        pending = self._unanswered
        while pending and (pending[0].future.done() or pending[0].enqueued + self.timeout_s <= now):
            row = pending.popleft()
            _resolve(row.future, error=InferenceTimeoutError(f"no answer within REQUEST_TIMEOUT_S={self.timeout_s:g}s"))
        if pending:
            loop = asyncio.get_running_loop()
            wait = pending[0].enqueued + self.timeout_s - now
            self._timer = loop.call_at(loop.time() + wait, self._expire)

    async def _collect(self) -> list[_Row]:
        if self._carry is not None:
            first, self._carry = self._carry, None
        else:
            first = await self._queue.get()
        batch = [first]
        self._running = batch  # taken rows count as running, so stop() waits for them
        spent = self._cost(first.payload) if self._cost else 0
        deadline = first.enqueued + (self.max_delay_s if self._busy else 0.0)
        while len(batch) < self.max_batch_size:
            try:
                row = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                # Not wait_for(queue.get()): on Python 3.11 it can drop an item it already took when the
                # timeout fires, which would leave that caller waiting forever.
                getter = asyncio.ensure_future(self._queue.get())
                done, _ = await asyncio.wait({getter}, timeout=remaining)
                if getter not in done:
                    getter.cancel()  # Queue.get leaves the item in the queue when cancelled
                    break
                row = getter.result()
            if self._cost is not None and self.max_batch_cost is not None:
                cost = self._cost(row.payload)
                if spent + cost > self.max_batch_cost:
                    self._carry = row
                    break
                spent += cost
            batch.append(row)
        return batch

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self._observer.queue_depth(self._queue.qsize())
            live = [r for r in batch if not r.future.done()]
            if not live:
                self._running = []
                continue
            started = time.perf_counter()
            self._running = live
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, [r.payload for r in live])
                if len(results) != len(live):
                    raise RuntimeError(f"{self.name}: model returned {len(results)} results for {len(live)} rows")
            except Exception as e:  # every waiter must hear about the failure, not only the first
                log.exception("%s: batch of %d rows failed", self.name, len(live))
                for r in live:
                    _resolve(r.future, error=e)
                continue
            finally:
                self._running = []
                self._busy = self._queue.qsize() > 0 or self._carry is not None
            finished = time.perf_counter()
            for r, result in zip(live, results, strict=True):
                _resolve(r.future, result)
            try:
                self._observer.batch_done(len(live), [started - r.enqueued for r in live], finished - started)
                traced = [r for r in live if r.origin is not None]
                if traced:
                    origins = [r.origin for r in traced]
                    self._observer.batch_traced(origins, [r.enqueued for r in traced], started, finished)
            except Exception:  # an observer's failure must never stop the batcher
                log.exception("%s: an observer failed", self.name)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new rows, let queued and running rows finish for up to grace_s, then fail the rest."""
        self._closing = True
        give_up = time.perf_counter() + grace_s
        while (self._queue.qsize() or self._running or self._carry) and time.perf_counter() < give_up:
            await asyncio.sleep(0.01)
        unanswered = list(self._running)  # read before cancelling: the consumer clears it on exit
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        unanswered += [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        if self._carry is not None:
            unanswered.append(self._carry)
        for row in unanswered:
            _resolve(row.future, error=DrainingError("the server shut down"))
        self._unanswered.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

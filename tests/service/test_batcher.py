"""The dynamic batcher on its own, with a recording stand-in for the model call."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.core.batcher import DynamicBatcher
from service.core.errors import DrainingError, InferenceTimeoutError, QueueFullError


class Recorder:
    """Doubles every input and remembers the batches it was given."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail = fail
        self.started = threading.Event()

    def __call__(self, rows):
        self.started.set()
        self.batches.append(list(rows))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        return [r * 2 for r in rows]


def run(coro):
    return asyncio.run(coro)


def make(recorder, **kw) -> DynamicBatcher:
    opts = {"max_batch_size": 4, "max_delay_s": 0.05, "max_queue_rows": 100}
    opts.update(kw)
    return DynamicBatcher(recorder, ThreadPoolExecutor(1), **opts)


def test_a_full_batch_runs_without_waiting_for_the_deadline():
    rec = Recorder()

    async def main():
        b = make(rec, max_delay_s=10.0)
        b.start()
        started = time.perf_counter()
        results = await asyncio.gather(*(b.submit([i]) for i in range(4)))
        assert time.perf_counter() - started < 2.0
        await b.stop()
        return results

    assert run(main()) == [[0], [2], [4], [6]]
    assert rec.batches == [[0, 1, 2, 3]]


def test_when_busy_a_partial_batch_waits_for_company_until_the_deadline():
    rec = Recorder(delay=0.05)

    async def main():
        b = make(rec, max_batch_size=8, max_delay_s=0.3)
        b.start()
        started = time.perf_counter()
        first = asyncio.create_task(b.submit([0]))  # idle: runs at once
        await asyncio.sleep(0.01)
        second = asyncio.create_task(b.submit([1]))  # waiting when [0] finishes: the batcher is busy
        await asyncio.sleep(0.1)
        third = asyncio.create_task(b.submit([2, 3]))  # joins [1] before its deadline
        results = [await first, await second, await third]
        waited = time.perf_counter() - started
        await b.stop()
        return results, waited

    results, waited = run(main())
    assert results == [[0], [2], [4, 6]]
    assert rec.batches == [[0], [1, 2, 3]]
    assert 0.25 <= waited < 2.0


def test_when_idle_a_lone_row_does_not_wait_for_the_deadline():
    rec = Recorder()

    async def main():
        b = make(rec, max_batch_size=8, max_delay_s=10.0)
        b.start()
        started = time.perf_counter()
        result = await b.submit([7])
        waited = time.perf_counter() - started
        await b.stop()
        return result, waited

    result, waited = run(main())
    assert result == [14] and waited < 1.0


def test_results_come_back_in_order_across_batches():
    rec = Recorder()

    async def main():
        b = make(rec, max_batch_size=3, max_delay_s=0.01)
        b.start()
        results = await asyncio.gather(*(b.submit(list(range(i, i + 5))) for i in range(0, 50, 5)))
        await b.stop()
        return results

    results = run(main())
    assert results == [[2 * x for x in range(i, i + 5)] for i in range(0, 50, 5)]
    assert max(len(batch) for batch in rec.batches) == 3


def test_a_cancelled_caller_is_dropped_and_others_are_answered():
    rec = Recorder(delay=0.2)

    async def main():
        b = make(rec, max_batch_size=1, max_delay_s=0.0)
        b.start()
        first = asyncio.create_task(b.submit([1]))  # occupies the model for 0.2 s
        await asyncio.sleep(0.05)
        leaving = asyncio.create_task(b.submit([2]))
        staying = asyncio.create_task(b.submit([3]))
        await asyncio.sleep(0.01)
        leaving.cancel()
        results = await first, await staying
        await b.stop()
        return results

    assert run(main()) == ([2], [6])
    assert [2] not in rec.batches  # the cancelled row never reached the model


def test_an_exception_reaches_every_waiter_of_the_batch_and_the_batcher_survives():
    rec = Recorder(fail=True)

    async def main():
        b = make(rec, max_batch_size=8, max_delay_s=0.05)
        b.start()
        outcomes = await asyncio.gather(b.submit([1]), b.submit([2, 3]), return_exceptions=True)
        rec.fail = False
        after = await b.submit([5])
        await b.stop()
        return outcomes, after

    outcomes, after = run(main())
    assert all(isinstance(o, RuntimeError) and "exploded" in str(o) for o in outcomes)
    assert after == [10]


def test_a_full_queue_refuses_at_once():
    rec = Recorder(delay=0.3)

    async def main():
        b = make(rec, max_batch_size=1, max_delay_s=0.0, max_queue_rows=2)
        b.start()
        busy = asyncio.create_task(b.submit([1]))
        await asyncio.sleep(0.05)  # [1] is in the model, the queue is empty
        queued = asyncio.create_task(b.submit([2, 3]))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await b.submit([4])
        results = await busy, await queued
        await b.stop()
        return results

    assert run(main()) == ([2], [4, 6])


def test_stop_finishes_accepted_rows_then_refuses_new_ones():
    rec = Recorder(delay=0.1)

    async def main():
        b = make(rec, max_batch_size=2, max_delay_s=0.0)
        b.start()
        accepted = [asyncio.create_task(b.submit([i])) for i in range(5)]
        await asyncio.sleep(0.01)
        await b.stop(grace_s=5)
        with pytest.raises(DrainingError):
            await b.submit([9])
        return [t.result() for t in accepted]

    assert run(main()) == [[0], [2], [4], [6], [8]]


def test_rows_past_the_timeout_fail_whether_waiting_or_running_and_later_ones_still_answer():
    rec = Recorder(delay=0.3)

    async def main():
        b = make(rec, max_batch_size=1, timeout_s=0.1)
        b.start()
        running = asyncio.ensure_future(b.submit([1]))  # its batch takes 0.3 s
        await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(b.submit([2]))  # queued behind it
        for task in (running, waiting):
            with pytest.raises(InferenceTimeoutError, match="REQUEST_TIMEOUT_S=0.1s"):
                await task
        await asyncio.sleep(0.3)  # the first batch ends; the second row is dropped, not run
        rec.delay = 0.0
        assert await b.submit([3]) == [6]
        await b.stop()
        return b

    b = run(main())
    assert rec.batches == [[1], [3]]
    assert not b._unanswered and b._timer is None

"""Continuous batching for generation, with a KV cache per sequence.

A sequence waits in a bounded queue until there is room: fewer than MAX_ACTIVE_SEQUENCES are
running and its cache (prompt plus max_tokens, reserved up front so that it can never run out
mid-way) fits in KV_CACHE_TOKENS. The scheduler's loop then repeats one step:
  1. new sequences run their prompts through the prefill graph together (their first token);
  2. every running sequence advances by one token in a single decode call.
A sequence that finishes, or whose caller goes away, leaves before the next step and frees its
cache. The cache is storage allocated once (service/core/kvcache.py): a sequence keeps a row of
it for its life, and each decode step writes its new keys and values there in place. Each caller
reads its own stream of steps. The model work, token choice and detokenization
run on the inference executor, so the event loop only hands steps out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from service.core.errors import DrainingError, InferenceTimeoutError, InputError, QueueFullError
from service.core.kvcache import KVCache
from service.core.runner import Job, ModelRunner
from service.core.sampling import Sampler, SamplingParams, top_indices
from service.core.text import TextTracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    sampling: SamplingParams = SamplingParams()
    seed: int | tuple[int, ...] | None = None  # entropy for the sequence's own generator
    stop: tuple[str, ...] = ()
    min_tokens: int = 0  # stop strings are not looked for before this many tokens (vLLM's min_tokens)
    top_logprobs: int = 0  # alternatives to report per token
    attention: tuple[list[int], list[int]] | None = None  # (layers, heads) to report per token
    head_mask: np.ndarray | None = None  # (L, nh): 0 where a head is ablated at every step
    steering: np.ndarray | None = None  # (L, C): added to the residual stream before each block, every step


@dataclass
class Step:
    """One generated token."""

    token_id: int
    text: str  # text that this token makes final (held back while a character or a stop string is incomplete)
    logprob: float  # under the model, before temperature
    top: list[tuple[int, float]]  # (token id, log-prob), most likely first
    # (layers, heads, n): how the position that predicted this token attended to the n tokens before it
    attention: np.ndarray | None
    finish_reason: str | None = None  # "stop" or "length" on the last step


class GenerationStream:
    """One sequence's steps, read by its caller: `async for step in stream`; cancel() when done."""

    def __init__(self, scheduler: Scheduler, prompt: np.ndarray, params: GenerationParams, tokenizer: Tokenizer):
        self.prompt = prompt
        self.params = params
        self.sampler = Sampler(params.sampling, params.seed, prompt)
        self.text = TextTracker(tokenizer, params.stop, params.min_tokens)
        self.reserved = len(prompt) + params.max_tokens  # cache tokens held while it runs
        self.length = 0  # cache positions filled
        self.pending_attention: np.ndarray | None = None  # (L, nh, n) of the next token to choose
        self.finished = False  # the caller has been handed the last step
        self.exhausted = False  # the last step is chosen (set on the executor, ahead of delivery)
        self.cancelled = False
        self.admitted = False  # holds its cache reservation
        self.submitted = time.perf_counter()
        self._scheduler = scheduler
        self._events: asyncio.Queue[Step | BaseException] = asyncio.Queue()

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> Step:
        if self.finished and self._events.empty():
            raise StopAsyncIteration
        try:
            if not self._events.empty():  # steps arrive in bursts: most reads need no timer
                item = self._events.get_nowait()
            else:
                async with asyncio.timeout(self._scheduler.step_timeout_s):
                    item = await self._events.get()
        except TimeoutError as e:
            self.cancel()
            raise InferenceTimeoutError(f"no token within REQUEST_TIMEOUT_S={self._scheduler.step_timeout_s:g}s") from e
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        return item

    def cancel(self) -> None:
        """The caller is gone: leave the batch before the next step and free the cache."""
        if not self.cancelled:
            self.cancelled = True
            self._scheduler.wake()

    def _deliver(self, item: Step | BaseException) -> None:
        if isinstance(item, Step) and item.finish_reason is not None:
            self.finished = True
        self._events.put_nowait(item)


class GenerationObserver:
    """Hooks for metrics; the default does nothing."""

    def state(self, active: int, waiting: int, reserved_tokens: int) -> None: ...

    def step_done(self, prefilled: int, decode_widths: list[int], seconds: float) -> None:
        """After one hand-off: prompts prefilled, and the batch width of each decode step run."""

    def first_token(self, seconds: float) -> None: ...


class Scheduler:
    def __init__(
        self,
        runner: ModelRunner,
        executor: Executor,
        tokenizer: Tokenizer,
        max_active: int,
        kv_cache_tokens: int,
        max_waiting: int,
        step_timeout_s: float,
        observer: GenerationObserver | None = None,
        burst_s: float = 0.005,
        prefill_tokens_per_step: int = 512,
    ) -> None:
        self.runner = runner
        self.executor = executor
        self.tokenizer = tokenizer
        self.max_active = max_active
        self.kv_cache_tokens = kv_cache_tokens
        self.max_waiting = max_waiting
        self.step_timeout_s = step_timeout_s
        self.observer = observer or GenerationObserver()
        # Decode steps run back to back on the executor for up to burst_s while nothing new waits:
        # one hand-off to the event loop per burst instead of per token (it costs more than a
        # one-row decode step on a CPU).
        self.burst_s = burst_s
        # New prompts start a few at a time, so that running sequences never wait for a whole
        # queue's prefill between two tokens (a per-step token budget, as vLLM's max_num_batched_tokens).
        self.prefill_tokens_per_step = prefill_tokens_per_step
        arch = runner.bundle.arch
        self.cache: KVCache[GenerationStream] = KVCache(
            arch.n_layer, arch.n_head, arch.d_head, max_active, arch.context_length, runner
        )
        self.waiting: deque[GenerationStream] = deque()
        self.active: list[GenerationStream] = []
        self.reserved_tokens = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False

    # -- the callers' side -------------------------------------------------------------------------

    def submit(self, requests: Sequence[tuple[np.ndarray, GenerationParams]]) -> list[GenerationStream]:
        """Queue sequences (all or none) and return their streams."""
        if self._closing:
            raise DrainingError("the server is shutting down")
        for prompt, params in requests:
            if len(prompt) + params.max_tokens > self.kv_cache_tokens:
                raise InputError(
                    f"this sequence needs {len(prompt) + params.max_tokens} cache tokens, more than "
                    f"KV_CACHE_TOKENS={self.kv_cache_tokens}"
                )
        if len(requests) > self.max_waiting:
            # Not "retry later": this request would not fit even an idle server's queue.
            raise InputError(
                f"the request has {len(requests)} sequences (prompts x n), more than MAX_WAITING_SEQUENCES="
                f"{self.max_waiting} can ever hold; send fewer prompts or a smaller n"
            )
        if len(self.waiting) + len(requests) > self.max_waiting:
            raise QueueFullError(
                f"the generation queue is full ({len(self.waiting)} of {self.max_waiting} sequences waiting)"
            )
        streams = [GenerationStream(self, prompt, params, self.tokenizer) for prompt, params in requests]
        self.waiting.extend(streams)
        self._report()
        self.wake()
        return streams

    def wake(self) -> None:
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="generation-scheduler")

    async def stop(self, grace_s: float) -> None:
        """Take no new sequences, let running ones finish for up to grace_s, then end the rest."""
        self._closing = True
        give_up = time.perf_counter() + grace_s
        while (self.waiting or self.active) and time.perf_counter() < give_up:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for stream in [*self.waiting, *self.active]:
            stream._deliver(DrainingError("the server shut down"))
        self.waiting.clear()
        self.active.clear()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                self._leave_cancelled()
                admitted = self._admit()
                if not admitted and not self.active:
                    break
                decoding = list(self.active)
                started = time.perf_counter()
                try:
                    steps, widths = await loop.run_in_executor(self.executor, self._step, admitted)
                except Exception as e:  # every sequence in the step must hear about it
                    log.exception("generation step failed")
                    for s in admitted + decoding:
                        s._deliver(e)
                        self._release(s)
                    continue
                self.observer.step_done(len(admitted), widths, time.perf_counter() - started)
                for s in admitted:
                    self.observer.first_token(time.perf_counter() - s.submitted)
                self.active.extend(admitted)
                # Delivered here, on the event loop: asyncio queues are not thread-safe.
                for s, step in steps:
                    s._deliver(step)
                for s in [s for s in self.active if s.finished]:
                    self._release(s)
                self._report()
                await asyncio.sleep(0)  # let callers read their steps and new requests arrive

    def _leave_cancelled(self) -> None:
        for s in [s for s in self.active if s.cancelled]:
            self._release(s)
        if any(s.cancelled for s in self.waiting):
            self.waiting = deque(s for s in self.waiting if not s.cancelled)
        self._report()

    def _admit(self) -> list[GenerationStream]:
        """First come, first served: the head of the queue waits for room rather than being overtaken."""
        admitted: list[GenerationStream] = []
        prompt_tokens = 0
        while self.waiting and len(self.active) + len(admitted) < self.max_active:
            head = self.waiting[0]
            if self.reserved_tokens + head.reserved > self.kv_cache_tokens:
                break
            prompt_tokens += len(head.prompt)
            if admitted and prompt_tokens > self.prefill_tokens_per_step:
                break
            self.waiting.popleft()
            self.reserved_tokens += head.reserved
            head.admitted = True
            admitted.append(head)
        return admitted

    def _release(self, s: GenerationStream) -> None:
        if s in self.active:
            self.active.remove(s)
        if s.admitted:
            self.reserved_tokens -= s.reserved
            s.admitted = False
        self.cache.remove(s)

    def _report(self) -> None:
        self.observer.state(len(self.active), len(self.waiting), self.reserved_tokens)

    # -- one step, on the executor -----------------------------------------------------------------

    def _step(self, admitted: list[GenerationStream]) -> tuple[list[tuple[GenerationStream, Step]], list[int]]:
        """One hand-off to the executor. With new prompts: their prefill, then one decode step for
        the rows that were already running (so that they keep moving while prompts join), and the
        new first tokens go out at once. Otherwise decode every row for up to burst_s, stopping
        early when something starts waiting. Rows whose sequence ended leave the cache between
        decode calls, so each call's batch is a prefix of the storage."""
        self._leave_cache()  # first, so that the admitted find their rows free
        running = len(self.cache.owners)
        steps = self._prefill(admitted) if admitted else []
        self._fit_cache()
        widths = []
        if admitted:
            if running:
                steps += self._decode(running)
                widths.append(running)
            return steps, widths
        deadline = time.perf_counter() + self.burst_s
        while self.cache.owners:
            steps += self._decode(len(self.cache.owners))
            widths.append(len(self.cache.owners))
            self._leave_cache()
            self._fit_cache()
            if self.waiting or time.perf_counter() >= deadline:
                break
        return steps, widths

    def _leave_cache(self) -> None:
        for s in [s for s in self.cache.owners if s.cancelled or s.exhausted]:
            self.cache.remove(s)

    def _fit_cache(self) -> None:
        """Room for the next decode call, which writes at each row's length."""
        self.cache.fit(max((s.length for s in self.cache.owners), default=0))

    def _prefill(self, streams: list[GenerationStream]) -> list[tuple[GenerationStream, Step]]:
        steps = []
        jobs = [Job(s.prompt, s.params.head_mask, s.params.steering) for s in streams]
        for s, out in zip(streams, self.runner.prefill(jobs), strict=True):
            self.cache.add(s, out.keys, out.values)
            s.length = len(s.prompt)
            s.pending_attention = out.attention
            steps.append((s, self._advance(s, out.logprobs)))
        return steps

    def _decode(self, rows: int) -> list[tuple[GenerationStream, Step]]:
        """One token for each of the cache's first rows."""
        streams = self.cache.owners[:rows]
        B = len(streams)
        tokens = np.asarray([s.text.ids[-1] for s in streams], dtype=np.int64)
        positions = np.asarray([s.length for s in streams], dtype=np.int64)
        interventions = self.runner.interventions([s.params for s in streams])
        wants_attention = any(s.params.attention is not None for s in streams)
        out = self.runner.decode(tokens, positions, self.cache.bound(B), interventions, attention=wants_attention)
        steps = []
        for b, s in enumerate(streams):
            if out.attention is not None and s.params.attention is not None:
                # The new token's weights over its past positions, then itself: (L, nh, length + 1).
                s.pending_attention = np.stack([w[b, :, : s.length + 1] for w in out.attention])
            s.length += 1
            steps.append((s, self._advance(s, out.logprobs[b])))
        return steps

    def _advance(self, s: GenerationStream, logprobs: np.ndarray) -> Step:
        """Choose the next token from logprobs (V,); the step the caller will read."""
        p = s.params
        token = s.sampler.choose(logprobs)
        text, stopped = s.text.add(token)
        finish = "stop" if stopped else "length" if len(s.text.ids) >= p.max_tokens else None
        if finish == "length":
            text += s.text.flush()
        s.exhausted = finish is not None
        attention = None
        if p.attention is not None and s.pending_attention is not None:
            layers, heads = p.attention
            attention = np.ascontiguousarray(s.pending_attention[np.ix_(layers, heads)])
        top = [(int(t), float(logprobs[t])) for t in top_indices(logprobs, p.top_logprobs)] if p.top_logprobs else []
        return Step(token, text, float(logprobs[token]), top, attention, finish)

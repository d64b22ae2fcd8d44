"""A model instance: one loaded model version, assembled and ready to take work.

The registry (service.core.registry) owns one per loaded version. Jobs (service.core.jobs) submit
their rows to its batchers and their sequences to its scheduler; protocols (service/api/*) call the
jobs, so a request gets the same numbers, batchers and limits whichever protocol it came by.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bundlespec import ONE_SHOT
from service.core.batcher import DynamicBatcher
from service.core.bundle import Bundle
from service.core.config import CoreConfig, ModelObservers
from service.core.errors import QueueFullError
from service.core.generation import GenerationParams, GenerationStream, Scheduler
from service.core.kvcache import KVCache
from service.core.runner import Job, ModelRunner, Resumed, attention_held
from service.core.threads import off_loop, yield_to_event_loop

LARGE_TEXT_CHARS = 20_000
# Vocabulary-wide logits one logit-lens run computes at most (tokens x depths x vocabulary): 16M
# float32s are 64 MB per intermediate tensor, a few hundred MB at the run's peak.
LENS_VALUES_PER_RUN = 16_000_000
# Measured on the Shakespeare model, 800 patching cells of 64 tokens: 0.88 s of resume calls in
# batches of 32 rows, 0.82 s in batches of 128 (fewer calls, each with the same per-row work).
RESUME_BATCH_FACTOR = 4


class ModelInstance:
    """One model version: its runner (ONNX Runtime sessions), a batcher per one-shot graph and the
    generation scheduler, all sharing one inference thread."""

    def __init__(
        self, bundle: Bundle, config: CoreConfig, observers: ModelObservers | None = None, name: str | None = None
    ) -> None:
        self.bundle = bundle
        self.config = config
        self.observers = observers = observers or ModelObservers()
        self._name = name or bundle.name  # the repository's name for it (its directory), else the manifest's
        self.runner = ModelRunner(bundle, config.device, config.intra_op_threads, max_padding=config.batch_max_padding)
        # Each token decoded on its own, once, so responses can name tokens without calling the tokenizer.
        self.token_text = bundle.tokenizer.decode_batch([[i] for i in range(bundle.vocab_size)])
        # One worker: a single inference at a time gets every core (ONNX Runtime's intra-op threads).
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="onnxruntime", initializer=lambda: yield_to_event_loop([None])
        )
        arch = bundle.arch
        every_map = arch.n_layer * arch.n_head
        # Batches bounded by their work, not only their rows: the attention graph holds the maps it
        # returns and one layer's while it runs (attention_held), and the logit lens the whole
        # vocabulary at every depth and position (a row's cost is its tokens; a single row over the
        # bound still runs, alone).
        batch_costs: dict[str, tuple[Callable[[Any], int], int]] = {
            "attention": (
                lambda job: attention_held(
                    arch.n_head, every_map if job.maps is None else len(job.maps), len(job.ids) ** 2
                ),
                config.max_attention_compute,
            ),
            "logit_lens": (
                lambda job: len(job.ids),
                max(1, LENS_VALUES_PER_RUN // ((arch.n_layer + 1) * bundle.vocab_size)),
            ),
            # Patching's cells are short rows of one request, many at once: a resume batch may hold
            # RESUME_BATCH_FACTOR times as many rows, up to the tokens of a full batch at full context.
            "resume": (lambda row: len(row.stream), config.max_batch_size * bundle.context_length),
        }
        # Every one-shot graph has its batcher, and so has resume, which activation patching feeds
        # residual streams instead of tokens.
        run_batch: dict[str, Callable[[Sequence[Any]], Sequence[Any]]] = {
            graph: functools.partial(self.runner.run, graph) for graph in ONE_SHOT
        }
        run_batch["resume"] = self.runner.resume
        self.batchers = {
            graph: DynamicBatcher(
                run_batch=run_batch[graph],
                executor=self._executor,
                max_batch_size=config.max_batch_size * (RESUME_BATCH_FACTOR if graph == "resume" else 1),
                max_delay_s=config.max_batch_delay_ms / 1000,
                max_queue_rows=config.max_queue_rows,
                name=graph,
                observer=observers.batches(graph),
                cost=batch_costs[graph][0] if graph in batch_costs else None,
                max_batch_cost=batch_costs[graph][1] if graph in batch_costs else None,
                timeout_s=config.request_timeout_s,
            )
            for graph in run_batch
        }
        self.scheduler = Scheduler(
            self.runner,
            self._executor,
            bundle.tokenizer,
            max_active=config.max_active_sequences,
            kv_cache_tokens=config.kv_cache_tokens or config.max_active_sequences * bundle.context_length,
            max_waiting=config.max_waiting_sequences,
            prefill_tokens_per_step=config.prefill_tokens_per_step,
            step_timeout_s=config.request_timeout_s,
            observer=observers.generation(),
        )
        observers.kv_capacity(self.scheduler.kv_cache_tokens)

    @property
    def name(self) -> str:
        return self._name

    @property
    def provider(self) -> str:
        return self.runner.provider

    def warm_up(self) -> None:
        """Run every graph once at full context so the first request pays no allocation cost."""
        longest = np.arange(self.bundle.context_length, dtype=np.int64) % self.bundle.vocab_size
        for graph in ONE_SHOT:
            # Attention at full context with one map: what a long request may hold under the default
            # limits; every map of GPT-2 small at 1024 tokens would leave a 604 MB arena behind.
            maps = (0,) if graph == "attention" else None
            self.runner.run(graph, [Job(longest, maps=maps), Job(longest[:3], maps=maps)])
        stream = np.zeros((len(longest), self.bundle.arch.d_model), dtype=np.float32)
        self.runner.resume([Resumed(stream, 0), Resumed(stream[:3], 1)])
        self.runner.prefill([Job(longest[:-1]), Job(longest[:3])])
        arch = self.bundle.arch
        n = len(longest)
        cache: KVCache[int] = KVCache(arch.n_layer, arch.n_head, arch.d_head, 2, n, self.runner)
        prompt = np.zeros((arch.n_layer, arch.n_head, n - 1, arch.d_head), dtype=np.float32)
        for row in range(2):
            cache.add(row, prompt, prompt)
        self.runner.decode(longest[:2], np.array([n - 1] * 2), cache.bound(), attention=True)

    def start(self) -> None:
        # ONNX Runtime's own pool threads exist by now (the sessions made them): all but this one.
        yield_to_event_loop(t for t in os.listdir("/proc/self/task") if int(t) != threading.get_native_id())
        for b in self.batchers.values():
            b.start()
        self.scheduler.start()

    async def stop(self, grace_s: float) -> None:
        await self.scheduler.stop(grace_s)
        for b in self.batchers.values():
            await b.stop(grace_s)
        self._executor.shutdown(wait=True)

    # -- the tokenizer ----------------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        tokenizer = self.bundle.tokenizer
        if len(texts) == 1:  # encode_batch hands even one text to its thread pool, which costs more
            return [tokenizer.encode(texts[0], add_special_tokens=False).ids]
        return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    async def encode_async(self, texts: Sequence[str]) -> list[list[int]]:
        """encode(), in a thread for large inputs: tokenizing a megabyte takes the event loop too long."""
        if sum(len(t) for t in texts) < LARGE_TEXT_CHARS:
            return self.encode(texts)
        return await off_loop(self.encode, texts)

    def decode(self, ids: Sequence[int]) -> str:
        return self.bundle.tokenizer.decode(list(ids))

    # -- taking work ------------------------------------------------------------------------------

    async def submit(self, graph: str, jobs: Sequence[Job | Resumed]) -> list[Any]:
        """Run rows of a one-shot graph (Jobs) or of resume (Resumed) in shared batches; each row's share of
        the outputs, in order."""
        try:
            return await self.batchers[graph].submit(jobs)  # InferenceTimeoutError past REQUEST_TIMEOUT_S
        except QueueFullError:
            self.observers.rejected(graph, len(jobs))
            raise

    def start_sequences(self, requests: Sequence[tuple[np.ndarray, GenerationParams]]) -> list[GenerationStream]:
        """Hand (prompt ids, params) to the generation scheduler; the caller reads and cancels each stream."""
        try:
            return self.scheduler.submit(list(requests))
        except QueueFullError:
            self.observers.rejected("generate", len(requests))
            raise

"""The inference core: token-id rows and options in, domain objects out. No HTTP schema here.

Every protocol (service/api/*) turns its requests into calls on InferenceCore and its results
into its own responses, so a request gets the same numbers, batchers and limits whichever
protocol it came by.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from bundlespec import ONE_SHOT
from bundlespec.graphs import LENS_TOP
from service.core.batcher import DynamicBatcher
from service.core.bundle import Bundle
from service.core.config import CoreConfig, ModelObservers
from service.core.engine import Engine, Job
from service.core.errors import InputError, QueueFullError
from service.core.generation import GenerationParams, GenerationStream, Scheduler
from service.core.kvcache import KVCache
from service.core.sampling import log_softmax, top_indices
from service.core.threads import off_loop, yield_to_event_loop

log = logging.getLogger(__name__)
LARGE_TEXT_CHARS = 20_000
# Vocabulary-wide logits one logit-lens run computes at most (tokens x depths x vocabulary): 16M
# float32s are 64 MB per intermediate tensor, a few hundred MB at the run's peak.
LENS_VALUES_PER_RUN = 16_000_000


@dataclass(frozen=True)
class Row:
    ids: np.ndarray  # (n,) int64
    truncated: bool


@dataclass(frozen=True)
class NextTokens:
    """The most likely next tokens after one row, most likely first."""

    row: Row
    token_ids: np.ndarray  # (k,)
    logprobs: np.ndarray  # (k,) float64, after temperature


@dataclass(frozen=True)
class AttentionMaps:
    row: Row
    layers: list[int]
    heads: list[int]
    weights: np.ndarray  # (layers, heads, n, n) float32


@dataclass(frozen=True)
class TokenScores:
    row: Row
    logprobs: np.ndarray  # (n-1,): log p(token t+1 | tokens <= t)
    top_logprobs: np.ndarray  # (n-1, K) the K most likely tokens at each position
    top_ids: np.ndarray  # (n-1, K)


class InferenceCore:
    """One model version: its engine (ONNX Runtime sessions), a batcher per one-shot job and the
    generation scheduler. The registry (service.core.registry) owns one per loaded version."""

    def __init__(
        self, bundle: Bundle, config: CoreConfig, observers: ModelObservers | None = None, name: str | None = None
    ) -> None:
        self.bundle = bundle
        self.config = config
        self.observers = observers = observers or ModelObservers()
        self._name = name or bundle.name  # the repository's name for it (its directory), else the manifest's
        self.engine = Engine(bundle, config.device, config.intra_op_threads, max_padding=config.batch_max_padding)
        # Each token decoded on its own, once, so responses can name tokens without calling the tokenizer.
        self.token_text = bundle.tokenizer.decode_batch([[i] for i in range(bundle.vocab_size)])
        # One worker: a single inference at a time gets every core (ONNX Runtime's intra-op threads).
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="onnxruntime", initializer=lambda: yield_to_event_loop([None])
        )
        arch = bundle.arch
        maps = arch.n_layer * arch.n_head
        # Batches bounded by their work, not only their rows: the attention graph computes every map of
        # every row, and the logit lens the whole vocabulary at every depth and position (a row's cost
        # is its tokens; a single row over the bound still runs, alone).
        self._batch_costs: dict[str, tuple[Callable[[Job], int], int]] = {
            "attention": (lambda job: maps * len(job.ids) ** 2, config.max_attention_compute),
            "logit_lens": (
                lambda job: len(job.ids),
                max(1, LENS_VALUES_PER_RUN // ((arch.n_layer + 1) * bundle.vocab_size)),
            ),
        }
        self.batchers = {
            name: DynamicBatcher(
                run_batch=functools.partial(self.engine.run, name),
                executor=self._executor,
                max_batch_size=config.max_batch_size,
                max_delay_s=config.max_batch_delay_ms / 1000,
                max_queue_rows=config.max_queue_rows,
                name=name,
                observer=observers.batches(name),
                cost=self._batch_costs[name][0] if name in self._batch_costs else None,
                max_batch_cost=self._batch_costs[name][1] if name in self._batch_costs else None,
                timeout_s=config.request_timeout_s,
            )
            for name in ONE_SHOT
        }
        self.scheduler = Scheduler(
            self.engine,
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
        return self.engine.provider

    def warm_up(self) -> None:
        """Run every graph once at full context so the first request pays no allocation cost."""
        longest = np.arange(self.bundle.context_length, dtype=np.int64) % self.bundle.vocab_size
        for name in ONE_SHOT:
            self.engine.run(name, [Job(longest), Job(longest[:3])])
        self.engine.prefill([Job(longest[:-1]), Job(longest[:3])])
        arch = self.bundle.arch
        n = len(longest)
        cache: KVCache[int] = KVCache(arch.n_layer, arch.n_head, arch.d_head, 2, n, self.engine)
        prompt = np.zeros((arch.n_layer, arch.n_head, n - 1, arch.d_head), dtype=np.float32)
        for row in range(2):
            cache.add(row, prompt, prompt)
        self.engine.decode(longest[:2], np.array([n - 1] * 2), cache.bound(), attention=True)

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

    # -- inputs ----------------------------------------------------------------------------------

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

    def check_ids(self, encoded: Sequence[Sequence[int]], what: str = "token_ids") -> None:
        vocab = self.bundle.vocab_size
        for i, ids in enumerate(encoded):
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise InputError(f"{what}[{i}] has ids outside the vocabulary [0, {vocab}): {bad[:5]}")

    async def input_rows(
        self,
        texts: Sequence[str] | None,
        token_ids: Sequence[Sequence[int]] | None,
        truncate: bool = False,
        what: str = "token_ids",
    ) -> list[Row]:
        """The one rule every protocol follows: texts are tokenized, token ids checked against the
        vocabulary, and either way the count and lengths are checked (rows())."""
        if (texts is None) == (token_ids is None):
            raise InputError("give exactly one of texts or token ids")
        if texts is not None:
            encoded = await self.encode_async(texts)
        else:
            assert token_ids is not None
            encoded = [list(ids) for ids in token_ids]
            self.check_ids(encoded, what)
        if not encoded:
            raise InputError("the request has no inputs")
        if any(len(ids) == 0 for ids in encoded):
            raise InputError("every input needs at least one token")
        return self.rows(encoded, truncate)

    def rows(self, encoded: Sequence[Sequence[int]], truncate: bool = False) -> list[Row]:
        """Check the inputs' count and lengths."""
        if len(encoded) > self.config.max_texts_per_request:
            raise InputError(f"{len(encoded)} inputs in one request; the limit is {self.config.max_texts_per_request}")
        context = self.bundle.context_length
        out = []
        for i, ids in enumerate(encoded):
            if len(ids) > context and not truncate:
                raise InputError(
                    f"input {i} has {len(ids)} tokens, more than the context of {context}; "
                    'shorten it or send "truncate": true to keep the last tokens'
                )
            out.append(Row(np.asarray(ids[-context:], dtype=np.int64), truncated=len(ids) > context))
        return out

    async def _run(self, name: str, rows: list[Row], head_mask: np.ndarray | None = None) -> list[Any]:
        return await self._submit(name, [Job(r.ids, head_mask) for r in rows])

    async def _submit(self, name: str, jobs: list[Job]) -> list[Any]:
        try:
            return await self.batchers[name].submit(jobs)  # InferenceTimeoutError past REQUEST_TIMEOUT_S
        except QueueFullError:
            self.observers.rejected(name, len(jobs))
            raise

    # -- the jobs --------------------------------------------------------------------------------

    def head_mask(self, ablate: Sequence[Sequence[int]] | None, what: str = "ablate") -> np.ndarray | None:
        """(L, nh) float32 with 0 at each [layer, head] to ablate; None when none is (every head on)."""
        if not ablate:
            return None
        arch = self.bundle.arch
        mask = np.ones((arch.n_layer, arch.n_head), dtype=np.float32)
        for i, pair in enumerate(ablate):
            if len(pair) != 2:
                raise InputError(f"{what}[{i}] must be [layer, head], not {list(pair)}", what)
            layer, head = pair
            if not 0 <= layer < arch.n_layer:
                raise InputError(f"{what}[{i}]: layer {layer} does not exist; the model has {arch.n_layer} layers "
                                 f"(0..{arch.n_layer - 1})", what)  # fmt: skip
            if not 0 <= head < arch.n_head:
                raise InputError(f"{what}[{i}]: head {head} does not exist; the model has {arch.n_head} heads "
                                 f"(0..{arch.n_head - 1})", what)  # fmt: skip
            mask[layer, head] = 0.0
        return mask

    async def next_token_logprobs(
        self, rows: list[Row], temperature: float = 1.0, head_mask: np.ndarray | None = None
    ) -> list[np.ndarray]:
        """Each row's next-token log-probabilities over the whole vocabulary, (vocab,) float64."""
        outputs = await self._run("next_token", rows, head_mask)
        return [log_softmax(logprobs, temperature) for logprobs in outputs]

    async def next_token(
        self, rows: list[Row], top_k: int, temperature: float = 1.0, head_mask: np.ndarray | None = None
    ) -> list[NextTokens]:
        if top_k > self.bundle.vocab_size:
            raise InputError(f"top_k={top_k} is larger than the vocabulary ({self.bundle.vocab_size})")
        results = []
        for row, lp in zip(rows, await self.next_token_logprobs(rows, temperature, head_mask), strict=True):
            top = top_indices(lp, top_k)
            results.append(NextTokens(row, top, lp[top]))
        return results

    def layer_head_indices(self, layers: list[int] | None, heads: list[int] | None) -> tuple[list[int], list[int]]:
        arch = self.bundle.arch
        return _indices(layers, arch.n_layer, "layer"), _indices(heads, arch.n_head, "head")

    async def attention(
        self,
        rows: list[Row],
        layers: list[int] | None = None,
        heads: list[int] | None = None,
        reserve: Callable[[int], None] | None = None,
        head_mask: np.ndarray | None = None,
    ) -> list[AttentionMaps]:
        """`reserve` is called with the number of weights returned before any work is done (the
        protocol takes the answer's bytes from the in-flight budget there, or raises)."""
        layers, heads = self.layer_head_indices(layers, heads)
        squares = sum(len(r.ids) ** 2 for r in rows)
        values = len(layers) * len(heads) * squares
        if values > self.config.max_attention_values:
            raise InputError(
                f"the answer would hold {values:,} attention weights, more than MAX_ATTENTION_VALUES="
                f"{self.config.max_attention_values:,}; ask for fewer layers, heads or inputs"
            )
        arch = self.bundle.arch
        computed = arch.n_layer * arch.n_head * squares
        if computed > self.config.max_attention_compute:
            raise InputError(
                f"these inputs need {computed:,} attention weights computed (every layer and head of each, "
                f"whatever is returned), more than MAX_ATTENTION_COMPUTE={self.config.max_attention_compute:,}; "
                "send fewer or shorter inputs per request"
            )
        if reserve is not None:
            reserve(values)
        outputs = await self._run("attention", rows, head_mask)
        return [
            AttentionMaps(row, layers, heads, np.ascontiguousarray(w[np.ix_(layers, heads)], dtype=np.float32))
            for row, w in zip(rows, outputs, strict=True)
        ]

    async def score(self, rows: list[Row], head_mask: np.ndarray | None = None) -> list[TokenScores]:
        outputs = await self._run("score", rows, head_mask)
        return [TokenScores(row, *out) for row, out in zip(rows, outputs, strict=True)]

    async def logit_lens(
        self, rows: list[Row], top_k: int, head_mask: np.ndarray | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each row's (L+1, n, top_k) log-probs and token ids: the residual stream after the
        embeddings and after every block, read through the final LayerNorm and the unembedding."""
        if not 1 <= top_k <= LENS_TOP:
            raise InputError(f"top_k must be from 1 to {LENS_TOP} for the logit lens, not {top_k}")
        outputs = await self._run("logit_lens", rows, head_mask)
        return [(lp[:, :, :top_k], ids[:, :, :top_k]) for lp, ids in outputs]

    async def head_importance(self, rows: list[Row]) -> list[tuple[float, np.ndarray]]:
        """Each row's mean log p(next token) with every head on, and its (L, nh) importance: the same
        mean with that one head ablated, minus it. The L x nh ablated copies and the plain one
        run as rows of the score batcher, so they share batches (with each other and other requests)."""
        arch = self.bundle.arch
        L, nh = arch.n_layer, arch.n_head
        copies = L * nh + 1
        if len(rows) * copies > self.config.max_queue_rows:
            raise InputError(
                f"{len(rows)} inputs need {len(rows) * copies} score rows ({copies} each: every head ablated in "
                f"turn, and none), more than MAX_QUEUE_ROWS={self.config.max_queue_rows} can ever hold"
            )
        if any(len(r.ids) < 2 for r in rows):
            raise InputError("every input needs at least two tokens: importance is measured on predicting the next")
        masks: list[np.ndarray | None] = [None]
        for layer in range(L):
            for head in range(nh):
                m = np.ones((L, nh), dtype=np.float32)
                m[layer, head] = 0.0
                masks.append(m)
        outputs = await self._submit("score", [Job(r.ids, m) for r in rows for m in masks])
        out = []
        for i in range(len(rows)):
            means = np.array([float(o[0].mean()) for o in outputs[i * copies : (i + 1) * copies]])  # (copies,)
            out.append((float(means[0]), (means[1:] - means[0]).reshape(L, nh)))
        return out

    def generate(self, requests: Sequence[tuple[Row, GenerationParams]]) -> list[GenerationStream]:
        """Start generating for each (prompt, params); the caller reads and finally cancels each stream."""
        context = self.bundle.context_length
        for i, (row, params) in enumerate(requests):
            if len(row.ids) + params.max_tokens > context:
                raise InputError(
                    f"prompt {i} has {len(row.ids)} tokens and max_tokens is {params.max_tokens}: together more "
                    f"than the context of {context} tokens; shorten the prompt or lower max_tokens"
                )
        try:
            return self.scheduler.submit([(row.ids, params) for row, params in requests])
        except QueueFullError:
            self.observers.rejected("generate", len(requests))
            raise


def _indices(asked: list[int] | None, count: int, what: str) -> list[int]:
    if asked is None:
        return list(range(count))
    bad = [i for i in asked if not 0 <= i < count]
    if bad:
        raise InputError(f"unknown {what} indices {bad}; the model has {count} {what}s (0..{count - 1})")
    return list(asked)

"""The three jobs of the service, from validated requests to responses; no HTTP here."""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import contract
from service.batcher import DynamicBatcher
from service.bundle import Bundle
from service.engine import Engine
from service.errors import InferenceTimeoutError, InputError, QueueFullError
from service.metrics import Metrics
from service.schemas import (
    AttentionRequest,
    BatchingInfo,
    Inputs,
    ModelInfo,
    NextTokenRequest,
    NextTokenResponse,
    NextTokenResult,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
    TokenProb,
)
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    ids: np.ndarray  # (n,) int64
    truncated: bool


class InferenceService:
    def __init__(self, bundle: Bundle, settings: Settings, metrics: Metrics) -> None:
        self.bundle = bundle
        self.settings = settings
        self.metrics = metrics
        self.engine = Engine(bundle, settings.device, settings.intra_op_threads, max_padding=settings.batch_max_padding)
        # Each token decoded on its own, once, so responses can name tokens without calling the tokenizer.
        self.token_text = bundle.tokenizer.decode_batch([[i] for i in range(bundle.vocab_size)])
        # One worker: a single inference at a time gets every core (ONNX Runtime's intra-op threads).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self.batchers = {
            kind: DynamicBatcher(
                run_batch=functools.partial(self.engine.run, kind),
                executor=self._executor,
                max_batch_size=settings.max_batch_size,
                max_delay_s=settings.max_batch_delay_ms / 1000,
                max_queue_rows=settings.max_queue_rows,
                name=kind,
                observer=metrics.observer(kind),
            )
            for kind in contract.GRAPH_FILES
        }
        metrics.model_info.info({"name": bundle.name, "version": bundle.version, "provider": self.engine.provider})

    def warm_up(self) -> None:
        """Run every graph once at full context so the first request pays no allocation cost."""
        longest = np.arange(self.bundle.context_length, dtype=np.int64) % self.bundle.vocab_size
        for kind in contract.GRAPH_FILES:
            self.engine.run(kind, [longest, longest[:3]])

    def start(self) -> None:
        for b in self.batchers.values():
            b.start()

    async def stop(self, grace_s: float) -> None:
        for b in self.batchers.values():
            await b.stop(grace_s)
        self._executor.shutdown(wait=True)

    def info(self) -> ModelInfo:
        cfg = self.bundle.config
        return ModelInfo(
            name=self.bundle.name,
            version=self.bundle.version,
            vocab_size=self.bundle.vocab_size,
            context_length=self.bundle.context_length,
            n_layer=cfg["n_layer"],
            n_head=cfg["n_head"],
            d_model=cfg["d_model"],
            provider=self.engine.provider,
            batching=BatchingInfo(
                max_batch_size=self.settings.max_batch_size,
                max_batch_delay_ms=self.settings.max_batch_delay_ms,
                max_queue_rows=self.settings.max_queue_rows,
            ),
            val_nats_per_char=self.bundle.manifest.get("training", {}).get("val_nats_per_char"),
        )

    # -- inputs ----------------------------------------------------------------------------------

    def rows(self, req: Inputs) -> list[Row]:
        """Tokenize and check the inputs; raises InputError with what is wrong."""
        if req.count > self.settings.max_texts_per_request:
            raise InputError(f"{req.count} inputs in one request; the limit is {self.settings.max_texts_per_request}")
        if req.texts is not None:
            encoded = [e.ids for e in self.bundle.tokenizer.encode_batch(req.texts, add_special_tokens=False)]
        else:
            encoded = req.token_ids or []
            vocab = self.bundle.vocab_size
            for i, ids in enumerate(encoded):
                bad = [t for t in ids if not 0 <= t < vocab]
                if bad:
                    raise InputError(f"token_ids[{i}] has ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        context = self.bundle.context_length
        out = []
        for i, ids in enumerate(encoded):
            if len(ids) > context and not req.truncate:
                raise InputError(
                    f"input {i} has {len(ids)} tokens, more than the context of {context}; "
                    'shorten it or send "truncate": true to keep the last tokens'
                )
            out.append(Row(np.asarray(ids[-context:], dtype=np.int64), truncated=len(ids) > context))
        return out

    async def _run(self, kind: str, rows: list[Row]) -> list[Any]:
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                return await self.batchers[kind].submit([r.ids for r in rows])
        except TimeoutError as e:
            raise InferenceTimeoutError(
                f"no answer within REQUEST_TIMEOUT_S={self.settings.request_timeout_s:g}s"
            ) from e
        except QueueFullError:
            self.metrics.rejected.labels(kind).inc(len(rows))
            raise

    # -- the three jobs --------------------------------------------------------------------------

    async def next_token(self, req: NextTokenRequest) -> NextTokenResponse:
        if req.top_k > self.bundle.vocab_size:
            raise InputError(f"top_k={req.top_k} is larger than the vocabulary ({self.bundle.vocab_size})")
        rows = self.rows(req)
        outputs = await self._run(contract.NEXT_TOKEN, rows)
        results = []
        for row, logprobs in zip(rows, outputs, strict=True):
            # log softmax(logits / T), computed from the log-probs: logits and log-probs differ by a constant.
            lp = (logprobs.astype(np.float64) - logprobs.max()) / req.temperature
            lp -= np.logaddexp.reduce(lp)
            top = np.argpartition(-lp, req.top_k - 1)[: req.top_k]
            top = top[np.argsort(-lp[top], kind="stable")]
            results.append(
                NextTokenResult(
                    n_tokens=len(row.ids),
                    truncated=row.truncated,
                    top=[
                        TokenProb(
                            token=self.token_text[t], token_id=int(t), prob=float(np.exp(lp[t])), logprob=float(lp[t])
                        )
                        for t in top
                    ],
                )
            )
        return NextTokenResponse(model=self.bundle.name, results=results)

    async def attention(self, req: AttentionRequest) -> dict[str, Any]:
        """Returns plain data with numpy arrays (serialised by orjson: a response can hold millions of floats)."""
        cfg = self.bundle.config
        layers = self._indices(req.layers, cfg["n_layer"], "layer")
        heads = self._indices(req.heads, cfg["n_head"], "head")
        rows = self.rows(req)
        values = len(layers) * len(heads) * sum(len(r.ids) ** 2 for r in rows)
        if values > self.settings.max_attention_values:
            raise InputError(
                f"the answer would hold {values:,} attention weights, more than MAX_ATTENTION_VALUES="
                f"{self.settings.max_attention_values:,}; ask for fewer layers, heads or inputs"
            )
        outputs = await self._run(contract.ATTENTION, rows)
        results = []
        for row, weights in zip(rows, outputs, strict=True):
            ids = row.ids.tolist()
            selected = weights[np.ix_(layers, heads)]  # (layers, heads, n, n)
            results.append(
                {
                    "tokens": [self.token_text[t] for t in ids],
                    "token_ids": ids,
                    "layers": layers,
                    "heads": heads,
                    "attention": np.ascontiguousarray(selected, dtype=np.float32),
                }
            )
        return {"model": self.bundle.name, "results": results}

    @staticmethod
    def _indices(asked: list[int] | None, count: int, what: str) -> list[int]:
        if asked is None:
            return list(range(count))
        bad = [i for i in asked if not 0 <= i < count]
        if bad:
            raise InputError(f"unknown {what} indices {bad}; the model has {count} {what}s (0..{count - 1})")
        return list(asked)

    async def score(self, req: ScoreRequest) -> ScoreResponse:
        rows = self.rows(req)
        outputs = await self._run(contract.SCORE, rows)
        results = []
        for row, logprobs in zip(rows, outputs, strict=True):
            ids = row.ids.tolist()
            values = [float(v) for v in logprobs]
            results.append(
                ScoreResult(
                    tokens=[self.token_text[t] for t in ids],
                    token_ids=ids,
                    logprobs=[None, *values],
                    total_logprob=float(sum(values)),
                    n_tokens=len(ids),
                    truncated=row.truncated,
                )
            )
        return ScoreResponse(model=self.bundle.name, results=results)

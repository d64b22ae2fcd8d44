"""From OpenAI completion requests to the core's generation job, and back to OpenAI's shapes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from opentelemetry import trace

from service.api.budget import ATTENTION_JSON_BYTES, LOGPROB_JSON_BYTES, Reservation
from service.api.openai.errors import error_body
from service.api.openai.protocol import (
    Choice,
    Completion,
    CompletionRequest,
    Logprobs,
    ModelCard,
    Usage,
)
from service.core import jobs
from service.core.errors import InputError
from service.core.generation import GenerationParams, GenerationStream, Step
from service.core.inputs import NONE, Row, input_rows, layer_head_indices
from service.core.instance import ModelInstance
from service.core.registry import Served
from service.core.sampling import SamplingParams
from service.core.steering import interventions

TRACER = trace.get_tracer("attnserve")  # a no-op until the server sets up tracing (OTEL_* variables)


@dataclass
class ChoiceState:
    """What one choice has produced so far."""

    index: int
    prompt: Row
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    attention: list = field(default_factory=list)  # per token: (layers, heads, n) arrays
    finish_reason: str | None = None


def model_card(served: Served) -> ModelCard:
    """OpenAI's model object for one loaded model, with attnserve's facts about it."""
    model = served.instance
    arch, s = model.bundle.arch, model.config
    return ModelCard(
        id=served.name,
        created=int(dt.datetime.fromisoformat(model.bundle.manifest.created).timestamp()),
        owned_by="attnserve",
        version=served.version,
        vocab_size=arch.vocab_size,
        context_length=arch.context_length,
        max_model_len=arch.context_length,
        n_layer=arch.n_layer,
        n_head=arch.n_head,
        d_model=arch.d_model,
        provider=model.provider,
        precision={name: g.precision for name, g in model.bundle.manifest.graphs.items()},
        resident_bytes=served.resident_bytes,
        batching={
            "max_batch_size": s.max_batch_size,
            "max_batch_delay_ms": s.max_batch_delay_ms,
            "max_queue_rows": s.max_queue_rows,
        },
        generation={
            "max_active_sequences": s.max_active_sequences,
            "kv_cache_tokens": model.scheduler.kv_cache_tokens,
            "max_waiting_sequences": s.max_waiting_sequences,
        },
        val_nats_per_char=model.bundle.manifest.training.get("val_nats_per_char"),
    )


class CompletionRun:
    """One completion request being run, made per request from the version its lease holds. `log`
    takes the request's access-line fields (rows, tokens, the first token's time); with tracing on,
    the generation is a span under the request's, with a child span up to the first token."""

    def __init__(self, model: ModelInstance, log: dict[str, Any] | None = None) -> None:
        self.model = model
        self.log = log if log is not None else {}
        self._span: Any = None
        self._started_ns = self._first_ns = 0
        self.edits = NONE

    async def prompts(self, req: CompletionRequest) -> list[Row]:
        """The request's prompts as rows; its interventions (ablated heads, steering) are checked and
        kept for the generation and the echoed prompt's log-probs."""
        p, model = req.prompt, self.model
        self.edits = await interventions(
            model, req.ablate, None if req.steer is None else [e.spec() for e in req.steer]
        )
        if isinstance(p, str):
            return await input_rows(model, [p], None, what="prompt")
        if all(isinstance(x, str) for x in p):
            return await input_rows(model, p, None, what="prompt")  # type: ignore[arg-type]
        if all(isinstance(x, int) for x in p):
            return await input_rows(model, None, [p], what="prompt")  # type: ignore[list-item]
        return await input_rows(model, None, p, what="prompt")  # type: ignore[arg-type]

    def start(
        self, req: CompletionRequest, rows: list[Row], reservation: Reservation | None
    ) -> tuple[list[ChoiceState], list[GenerationStream]]:
        """Queue every choice's generation; raises at once when they do not fit. Attention answers
        reserve their bytes from MAX_INFLIGHT_BYTES first, like every other large answer."""
        choices = [ChoiceState(i * req.n + j, row) for i, row in enumerate(rows) for j in range(req.n)]
        if req.max_tokens == 0:
            for c in choices:
                c.finish_reason = "length"
            return choices, []
        sampling = SamplingParams(req.temperature, req.top_p, max(req.top_k, 0), req.min_p, req.repetition_penalty)
        attention = None
        if req.attention is not None:
            attention = layer_head_indices(self.model.bundle.arch, req.attention.layers, req.attention.heads)
            layers, heads = attention
            values = len(choices) * len(layers) * len(heads) * req.max_tokens * self.model.bundle.context_length
            if values > self.model.config.max_attention_values:
                raise InputError(
                    f"the answer could hold {values:,} attention weights, more than MAX_ATTENTION_VALUES="
                    f"{self.model.config.max_attention_values:,}; ask for fewer layers, heads, choices or tokens"
                )
            if reservation is not None:
                # Step t's weights cover the prompt and the t tokens before it, so the answer holds at
                # most L x H x (max_tokens x P + max_tokens (max_tokens + 1) / 2) weights per choice.
                t = req.max_tokens
                per_key = len(layers) * len(heads)
                exact = sum(per_key * (t * len(c.prompt.ids) + t * (t + 1) // 2) for c in choices)
                reservation.take(exact * ATTENTION_JSON_BYTES)
        if req.logprobs is not None and reservation is not None:
            # Each token (the prompt's too, with echo) carries its log-prob and `logprobs` alternatives.
            tokens = sum(req.max_tokens + (len(c.prompt.ids) if req.echo else 0) for c in choices)
            reservation.take(tokens * (1 + req.logprobs) * LOGPROB_JSON_BYTES)
        params = [
            GenerationParams(
                max_tokens=req.max_tokens,
                sampling=sampling,
                # One generator per choice: choice j of a prompt gets the same text whatever else runs.
                seed=None if req.seed is None else (req.seed % 2**64, c.index % req.n),
                stop=req.stop_strings,
                min_tokens=req.min_tokens,
                head_mask=self.edits.head_mask,
                steering=self.edits.steering,
                top_logprobs=req.logprobs or 0,
                attention=attention,
            )
            for c in choices
        ]
        streams = jobs.generate(self.model, [(c.prompt, p) for c, p in zip(choices, params, strict=True)])
        self.log["rows"] = len(choices)
        self._started_ns = time.time_ns()
        if trace.get_current_span().is_recording():  # a sampled request: its generation is a span of it
            self._span = TRACER.start_span(
                "generate", attributes={"attnserve.model": self.model.name, "attnserve.sequences": len(choices)}
            )
        return choices, streams

    def _finish(self, choices: list[ChoiceState]) -> None:
        """The generation's access-line fields and spans, once its streams have ended."""
        tokens = sum(len(c.token_ids) for c in choices)
        self.log["tokens"] = tokens
        span, self._span = self._span, None
        if span is None:
            return
        if self._first_ns and span.is_recording():
            parent = trace.set_span_in_context(span)
            prefill = TRACER.start_span("prefill", parent, start_time=self._started_ns)
            prefill.end(end_time=self._first_ns)  # up to the first token: the prompt's prefill and its wait
        span.set_attribute("attnserve.generated_tokens", tokens)
        span.end()

    # -- logprobs ----------------------------------------------------------------------------------

    async def prompt_logprobs(self, req: CompletionRequest, rows: list[Row]) -> list[Logprobs | None]:
        """echo with logprobs: the prompt's token log-probs, the first null (as /v1/score gives them)."""
        if not (req.echo and req.logprobs is not None):
            return [None] * len(rows)
        scores = await jobs.score(self.model, rows, self.edits)
        out: list[Logprobs | None] = []
        for s in scores:
            ids = s.row.ids.tolist()
            top: list[dict[str, float] | None] = [None]
            for pos in range(len(ids) - 1):
                top.append(
                    self._top_dict(
                        list(
                            zip(
                                s.top_ids[pos, : req.logprobs].tolist(),
                                s.top_logprobs[pos, : req.logprobs].tolist(),
                                strict=True,
                            )
                        )
                    )
                )
            out.append(
                Logprobs(
                    tokens=[self.model.token_text[t] for t in ids],
                    token_logprobs=[None, *s.logprobs.tolist()],
                    top_logprobs=top,
                    text_offset=self._offsets(ids, 0),
                )
            )
        return out

    def _top_dict(self, pairs: list[tuple[int, float]]) -> dict[str, float]:
        top: dict[str, float] = {}
        for t, lp in pairs:
            top.setdefault(self.model.token_text[t], lp)  # two ids can read the same: keep the likelier
        return top

    def _offsets(self, ids: list[int], start: int) -> list[int]:
        """Where each token's text starts, counted in characters of the decoded text."""
        return [start + len(self.model.decode(ids[:k])) for k in range(len(ids))]

    def completion_logprobs(self, c: ChoiceState, start: int, echo: Logprobs | None) -> Logprobs:
        ids = c.token_ids
        offsets = self._offsets(ids, start)
        if c.finish_reason == "stop":  # tokens that lie wholly in the cut-off stop string are left out
            keep = sum(1 for o in offsets if o < start + len(c.text)) or min(1, len(ids))
            ids, offsets = ids[:keep], offsets[:keep]
        generated = Logprobs(
            tokens=[self.model.token_text[t] for t in ids],
            token_logprobs=list(c.logprobs[: len(ids)]),
            top_logprobs=[self._top_dict(t) for t in c.top[: len(ids)]],
            text_offset=offsets,
        )
        if echo is None:
            return generated
        return Logprobs(
            tokens=echo.tokens + generated.tokens,
            token_logprobs=echo.token_logprobs + generated.token_logprobs,
            top_logprobs=(echo.top_logprobs or []) + (generated.top_logprobs or []),
            text_offset=echo.text_offset + generated.text_offset,
        )

    # -- answers -----------------------------------------------------------------------------------

    def _record(self, c: ChoiceState, step: Step) -> None:
        if not self._first_ns:
            self._first_ns = time.time_ns()
            self.log["first_token"] = time.perf_counter()
        c.text += step.text
        c.token_ids.append(step.token_id)
        c.logprobs.append(step.logprob)
        c.top.append(step.top)
        if step.attention is not None:
            c.attention.append(step.attention)
        c.finish_reason = step.finish_reason

    async def complete(self, req: CompletionRequest, rows: list[Row], reservation: Reservation | None) -> Completion:
        echoes = await self.prompt_logprobs(req, rows)
        choices, streams = self.start(req, rows, reservation)
        try:
            async with asyncio.TaskGroup() as tg:
                for c, stream in zip(choices, streams, strict=False):
                    tg.create_task(self._drain(c, stream))
        except* Exception as group:
            raise group.exceptions[0] from None
        finally:
            for s in streams:
                s.cancel()
            self._finish(choices)
        out = []
        for c in choices:
            prompt_text = self.model.decode(c.prompt.ids.tolist()) if req.echo else ""
            echo = echoes[c.index // req.n]
            logprobs = None
            if req.logprobs is not None:
                logprobs = self.completion_logprobs(c, len(prompt_text), echo)
            extra = {"attention": [a.tolist() for a in c.attention]} if req.attention is not None else {}
            out.append(
                Choice(
                    index=c.index,
                    text=prompt_text + c.text,
                    logprobs=logprobs,
                    finish_reason=c.finish_reason,
                    **extra,
                )
            )
        return Completion(
            id=_completion_id(),
            created=int(time.time()),
            model=self.model.name,
            choices=out,
            usage=self._usage(rows, choices),
        )

    async def _drain(self, c: ChoiceState, stream: GenerationStream) -> None:
        async for step in stream:
            self._record(c, step)

    @staticmethod
    def _usage(rows: list[Row], choices: list[ChoiceState]) -> Usage:
        prompt = sum(len(r.ids) for r in rows)
        completion = sum(len(c.token_ids) for c in choices)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    async def stream(
        self, req: CompletionRequest, rows: list[Row], choices: list[ChoiceState], streams: list[GenerationStream]
    ) -> AsyncIterator[bytes]:
        """Server-sent events: one chunk per token and choice, then [DONE].

        An error after the first chunk cannot change the status code any more, so it goes out as
        an event carrying an error object, and the stream ends.
        """
        cid, created = _completion_id(), int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        continuous = include_usage and bool(req.stream_options and req.stream_options.continuous_usage_stats)

        def chunk(choices_: list[dict], usage: Usage | None = None) -> bytes:
            body: dict = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": self.model.name,
                "choices": choices_,
            }
            if include_usage:
                body["usage"] = usage.model_dump() if usage else None
            return b"data: " + orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n\n"

        queue: asyncio.Queue[tuple[ChoiceState, Step] | BaseException | None] = asyncio.Queue()

        async def pump(c: ChoiceState, s: GenerationStream) -> None:
            try:
                async for step in s:
                    queue.put_nowait((c, step))
            except Exception as e:
                queue.put_nowait(e)
            finally:
                queue.put_nowait(None)

        tasks = [asyncio.create_task(pump(c, s)) for c, s in zip(choices, streams, strict=False)]
        try:
            echoes = await self.prompt_logprobs(req, rows)
            if req.echo:
                for c in choices:
                    echo = echoes[c.index // req.n]
                    yield chunk(
                        [
                            {
                                "index": c.index,
                                "text": self.model.decode(c.prompt.ids.tolist()),
                                "logprobs": echo.model_dump() if echo else None,
                                "finish_reason": None,
                            }
                        ]
                    )
            for c in choices if not streams else []:  # max_tokens 0: nothing to generate
                yield chunk([{"index": c.index, "text": "", "logprobs": None, "finish_reason": c.finish_reason}])
            running = len(tasks)
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                c, step = item
                self._record(c, step)
                logprobs = None
                if req.logprobs is not None:
                    offset = len(c.text) - len(step.text)
                    logprobs = {
                        "tokens": [self.model.token_text[step.token_id]],
                        "token_logprobs": [step.logprob],
                        "top_logprobs": [self._top_dict(step.top)],
                        "text_offset": [offset],
                    }
                event = {"index": c.index, "text": step.text, "logprobs": logprobs, "finish_reason": step.finish_reason}
                if step.attention is not None:
                    event["attention"] = step.attention  # (layers, heads, n): orjson writes the array
                yield chunk([event], self._usage(rows, choices) if continuous else None)
            if include_usage:
                yield chunk([], self._usage(rows, choices))
            yield b"data: [DONE]\n\n"
        except Exception as e:
            yield b"data: " + orjson.dumps(error_body(e)[1]) + b"\n\n"
        finally:
            for s in streams:
                s.cancel()
            for t in tasks:
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
            self._finish(choices)


def _completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"

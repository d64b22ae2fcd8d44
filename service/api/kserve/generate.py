"""Generation as a KServe v2 model, `<model>.generate`: the KV-cache generation of the OpenAI API
(continuous batching, the same scheduler) under the Open Inference Protocol.

Over HTTP and gRPC's ModelInfer it answers once, with each row's whole continuation. Over gRPC's
ModelStreamInfer (Triton's decoupled mode) the same request is answered one response per token
(service/api/kserve_grpc), as the OpenAI stream sends one chunk per token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from service.api.budget import Reservation
from service.api.kserve.codec import BYTES, Output, V2Error
from service.api.kserve.v2model import COMMON_PARAMS, Param, TensorMeta, V2Model, edits
from service.core import jobs
from service.core.generation import GenerationParams, GenerationStream, Step
from service.core.inputs import Row
from service.core.instance import ModelInstance
from service.core.sampling import SamplingParams

DEFAULT_MAX_TOKENS = 16  # the OpenAI API's default


async def streams(model: ModelInstance, rows: list[Row], params: dict[str, Any]) -> list[GenerationStream]:
    """Queue each row's generation with the request's parameters; raises when they do not fit."""
    max_tokens = params.get("max_tokens", DEFAULT_MAX_TOKENS)
    if not 1 <= max_tokens <= model.bundle.context_length:
        raise V2Error(f"parameter 'max_tokens' must be from 1 to {model.bundle.context_length}, not {max_tokens}")
    temperature, top_p, top_k = params.get("temperature", 1.0), params.get("top_p", 1.0), params.get("top_k", 0)
    if not 0 <= temperature <= 100:
        raise V2Error(f"parameter 'temperature' must be from 0 (greedy) to 100, not {temperature}")
    if not 0 < top_p <= 1:
        raise V2Error(f"parameter 'top_p' must be above 0 and at most 1, not {top_p}")
    if top_k < 0:
        raise V2Error(f"parameter 'top_k' must be 0 (every token) or more, not {top_k}")
    seed = params.get("seed")
    stop = params.get("stop")
    e = await edits(model, params)
    generation = [
        GenerationParams(
            max_tokens=max_tokens,
            sampling=SamplingParams(float(temperature), float(top_p), top_k),
            # One generator per row: row i gets the same text whatever else runs.
            seed=None if seed is None else (seed % 2**64, i),
            stop=(stop,) if stop else (),
            head_mask=e.head_mask,
            steering=e.steering,
        )
        for i in range(len(rows))
    ]
    return jobs.generate(model, list(zip(rows, generation, strict=True)))


def step_outputs(steps: list[Step]) -> list[Output]:
    """One response's outputs for these steps (one per row): their text, 1 token each, and why the
    row ended, "" while it goes on."""
    return outputs([s.text for s in steps], [1] * len(steps), [s.finish_reason or "" for s in steps])


def outputs(texts: list[str], counts: list[int], reasons: list[str]) -> list[Output]:
    n = len(texts)
    return [
        Output("text_output", BYTES, [t.encode() for t in texts], (n,)),
        Output("output_lengths", "INT64", np.array(counts, dtype=np.int64), (n,)),
        Output("finish_reason", BYTES, [r.encode() for r in reasons], (n,)),
    ]


async def _generate(
    model: ModelInstance, rows: list[Row], params: dict[str, Any], wanted: set[str], _: Reservation | None
) -> list[Output]:
    started = await streams(model, rows, params)
    texts, counts, reasons = [], [], []
    try:
        # The rows generate together in the scheduler whatever order they are read in.
        for stream in started:
            parts, reason = [], ""
            async for step in stream:
                parts.append(step.text)
                reason = step.finish_reason or reason
            texts.append("".join(parts))
            counts.append(len(parts))
            reasons.append(reason)
    finally:
        for stream in started:
            stream.cancel()
    return outputs(texts, counts, reasons)


async def each_step(stream: GenerationStream) -> AsyncIterator[Step]:
    """A stream's steps, the stream cancelled when the reader stops (the client went away)."""
    try:
        async for step in stream:
            yield step
    finally:
        stream.cancel()


def _values(model: ModelInstance, rows: list[Row], params: dict[str, Any]) -> dict[str, int]:
    return {}  # text, a few bytes a token: nothing to reserve ahead


MODEL = V2Model(
    "generate",
    "generated text for each row, with the KV cache and continuous batching (streamed one response per token "
    "over gRPC's ModelStreamInfer)",
    [
        TensorMeta("text_output", BYTES, [-1], "each row's generated text (streamed: this token's text)"),
        TensorMeta("output_lengths", "INT64", [-1], "tokens generated in each row (streamed: 1)"),
        TensorMeta("finish_reason", BYTES, [-1], '"length" or "stop" (streamed: "" until the last token)'),
    ],
    [
        *COMMON_PARAMS,
        Param("max_tokens", (int,), f"tokens to generate per row, 1 to the context (default {DEFAULT_MAX_TOKENS})"),
        Param("temperature", (int, float), "0 chooses the most likely token; default 1"),
        Param("top_p", (int, float), "keep the most likely tokens up to this total probability (default 1)"),
        Param("top_k", (int,), "keep the k most likely tokens; 0 keeps all (default)"),
        Param("seed", (int,), "the same seed gives the same text"),
        Param("stop", (str,), "a string that ends the text (not included)"),
    ],
    _generate,
    _values,
)

"""From native requests to calls on the core, and from the core's results to native responses."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.api.native.protocol import (
    AttentionRequest,
    Inputs,
    NextTokenRequest,
    NextTokenResponse,
    NextTokenResult,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
    TokenProb,
)
from service.core.inference import InferenceCore, Row


def rows(core: InferenceCore, req: Inputs) -> list[Row]:
    if req.texts is not None:
        encoded = core.encode(req.texts)
    else:
        encoded = req.token_ids or []
        core.check_ids(encoded)
    return core.rows(encoded, req.truncate)


async def next_token(core: InferenceCore, req: NextTokenRequest) -> NextTokenResponse:
    results = await core.next_token(rows(core, req), req.top_k, req.temperature)
    text = core.token_text
    return NextTokenResponse(
        model=core.name,
        results=[
            NextTokenResult(
                n_tokens=len(r.row.ids),
                truncated=r.row.truncated,
                top=[
                    TokenProb(token=text[t], token_id=int(t), prob=float(np.exp(lp)), logprob=float(lp))
                    for t, lp in zip(r.token_ids, r.logprobs, strict=True)
                ],
            )
            for r in results
        ],
    )


async def attention(core: InferenceCore, req: AttentionRequest) -> dict[str, Any]:
    """Plain data with numpy arrays, for orjson: a response can hold millions of floats."""
    results = await core.attention(rows(core, req), req.layers, req.heads)
    text = core.token_text
    out = []
    for r in results:
        ids = r.row.ids.tolist()
        out.append(
            {
                "tokens": [text[t] for t in ids],
                "token_ids": ids,
                "layers": r.layers,
                "heads": r.heads,
                "attention": r.weights,
            }
        )
    return {"model": core.name, "results": out}


async def score(core: InferenceCore, req: ScoreRequest) -> ScoreResponse:
    results = await core.score(rows(core, req))
    text = core.token_text
    out = []
    for r in results:
        ids = r.row.ids.tolist()
        values = r.logprobs.tolist()
        out.append(
            ScoreResult(
                tokens=[text[t] for t in ids],
                token_ids=ids,
                logprobs=[None, *values],
                total_logprob=float(sum(values)),
                n_tokens=len(ids),
                truncated=r.row.truncated,
            )
        )
    return ScoreResponse(model=core.name, results=out)

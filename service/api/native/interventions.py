"""From the native intervention requests (activations, patching, steering vectors, direct logit
attribution) to the core's jobs, and from their results to native responses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from service.api.budget import ACTIVATION_JSON_BYTES, OFF_LOOP_BYTES, Reservation
from service.api.native.protocol import (
    ActivationsRequest,
    LogitAttributionRequest,
    PatchRequest,
    SteeringVectorRequest,
)
from service.api.native.serving import edits, rows, tokens
from service.core import jobs
from service.core.attribution import logit_attribution
from service.core.errors import InputError
from service.core.inputs import check_ids
from service.core.inputs import rows as checked_rows
from service.core.instance import ModelInstance
from service.core.patching import patch
from service.core.steering import text_vector
from service.core.threads import off_loop


async def activations(model: ModelInstance, req: ActivationsRequest, reservation: Reservation | None = None) -> bytes:
    """The answer's bytes are reserved before anything runs; a large one is written off the event loop."""
    size = 0

    def reserve(values: int) -> None:
        nonlocal size
        size = values * ACTIVATION_JSON_BYTES
        if reservation is not None:
            reservation.take(size)

    results = await jobs.activations(
        model, await rows(model, req), req.sites, req.layers, req.positions, reserve, await edits(model, req)
    )
    if size < OFF_LOOP_BYTES:
        return _activations_json(model, results)
    return await off_loop(_activations_json, model, results)


def _activations_json(model: ModelInstance, results: list[jobs.ActivationSet]) -> bytes:
    out = []
    for r in results:
        head = {**tokens(model, r.row.ids), "layers": r.layers, "positions": r.positions}
        sites = b",".join(
            orjson.dumps(site) + b":" + orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
            for site, values in r.sites.items()
        )
        out.append(orjson.dumps(head)[:-1] + b',"activations":{' + sites + b"}}")
    return orjson.dumps({"model": model.name})[:-1] + b',"results":[' + b",".join(out) + b"]}"


async def one_token(model: ModelInstance, choice: int | str, what: str) -> int:
    """A token given as an id, or as a text that is exactly one token."""
    if isinstance(choice, int):
        if not 0 <= choice < model.bundle.vocab_size:
            raise InputError(f"{what} {choice} is outside the vocabulary [0, {model.bundle.vocab_size})", what)
        return choice
    (ids,) = await model.encode_async([choice])
    if len(ids) != 1:
        raise InputError(f"{what} {choice!r} is {len(ids)} tokens, not one; give a token id or one token's text", what)
    return ids[0]


async def _ids(model: ModelInstance, given: str | Sequence[int], what: str) -> list[int]:
    if isinstance(given, str):
        (ids,) = await model.encode_async([given])
        if not ids:
            raise InputError(f"{what} has no tokens", what)
        return ids
    check_ids(model, [given], what)
    return list(given)


async def patching(model: ModelInstance, req: PatchRequest, reservation: Reservation | None = None) -> dict[str, Any]:
    clean, corrupted = checked_rows(
        model, [await _ids(model, req.clean, "clean"), await _ids(model, req.corrupted, "corrupted")]
    )
    answer = None
    if req.answer is not None:
        answer = (
            await one_token(model, req.answer.correct, "answer.correct"),
            await one_token(model, req.answer.incorrect, "answer.incorrect"),
        )
    reserve = reservation.take if reservation is not None else None
    result = await patch(model, clean, corrupted, answer, req.sites, req.direction, reserve)
    text = model.token_text

    def run(row_ids: np.ndarray, logit_diff: float) -> dict[str, Any]:
        return {**tokens(model, row_ids), "logit_diff": logit_diff}

    correct, incorrect = result.answer
    return {
        "model": model.name,
        "direction": req.direction,
        "answer": {
            "correct": {"token": text[correct], "token_id": correct},
            "incorrect": {"token": text[incorrect], "token_id": incorrect},
        },
        "clean": run(clean.ids, result.clean_logit_diff),
        "corrupted": run(corrupted.ids, result.corrupted_logit_diff),
        "sites": {
            site: {"logit_diff": cells.logit_diff.tolist(), "score": cells.score.tolist()}
            for site, cells in result.sites.items()
        },
    }


async def steering_vector(model: ModelInstance, req: SteeringVectorRequest) -> dict[str, Any]:
    vector = await text_vector(model, req.layer, req.add, req.subtract)
    return {"model": model.name, "layer": req.layer, "vector": vector.tolist(), "norm": float(np.linalg.norm(vector))}


async def attribution(model: ModelInstance, req: LogitAttributionRequest) -> dict[str, Any]:
    target = None if req.target is None else await one_token(model, req.target, "target")
    results = await logit_attribution(model, await rows(model, req), target, req.position, await edits(model, req))
    text = model.token_text
    out = []
    for r in results:
        out.append(
            {
                **tokens(model, r.row.ids),
                "position": r.position,
                "target": {"token": text[r.target], "token_id": r.target},
                "logit": r.logit,
                "embeddings": r.embeddings,
                "heads": r.heads.tolist(),
                "attention_biases": r.attention_biases.tolist(),
                "mlps": r.mlps.tolist(),
                "steering": None if r.steering is None else r.steering.tolist(),
                "final_bias": r.final_bias,
            }
        )
    return {"model": model.name, "results": out}

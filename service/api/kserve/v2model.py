"""What a KServe v2 model of attnserve is (its tensors, its parameters, the call that answers it) and
what every job shares: the inputs, the common parameters and how they are read, the common outputs."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from service.api.budget import Reservation
from service.api.kserve.codec import BYTES, Output, V2Error
from service.api.schema import SteerEntry
from service.core.inputs import Interventions, Row
from service.core.instance import ModelInstance
from service.core.steering import interventions

PAD_ID = -1  # token_ids padding: never a real token


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str
    shape: list[int]
    description: str
    optional: bool = False

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


@dataclass(frozen=True)
class Param:
    name: str
    types: tuple[type, ...]  # the JSON types it takes; a bool counts only where bool is listed
    description: str


@dataclass(frozen=True)
class V2Model:
    name: str
    description: str
    outputs: list[TensorMeta]
    params: list[Param]
    run: Callable[[ModelInstance, list[Row], dict[str, Any], set[str], Reservation | None], Awaitable[list[Output]]]
    # The large outputs' element counts for these rows, known before the run, so that the answer's
    # bytes are reserved first (attention reserves its weights itself, once the layers are checked).
    values: Callable[[ModelInstance, list[Row], dict[str, Any]], dict[str, int]]
    classified: str | None = None  # the output that the classification extension applies to


INPUTS = (
    TensorMeta("text", BYTES, [-1], "UTF-8 texts, one per row (shape [-1] or [-1, 1])", optional=True),
    TensorMeta("input_ids", "INT64", [-1, -1], "token ids, one row per input, instead of text", optional=True),
    TensorMeta("attention_mask", "INT64", [-1, -1], "1 for the row's tokens, 0 for padding", optional=True),
)
INPUTS_BY_NAME = {t.name: t for t in INPUTS}
MAX_INPUT_RANK = 2  # text may be [rows, 1]; input_ids and attention_mask are [rows, tokens]


COMMON_PARAMS = [
    Param("truncate", (bool,), "keep the last context_length tokens of a longer input instead of a 400"),
    Param("ablate", (str,), 'heads to ablate, as "layer.head" pairs: "0.2,1.3" (their outputs are zeroed)'),
    Param(
        "steer",
        (str,),
        'steering vectors as a JSON list, as the native API takes them: [{"layer": 1, "vector": {"add": "love", '
        '"subtract": "hate"}, "scale": 4}]',
    ),
]


# Only ASCII digits are numbers here: str.isdigit() and int() also take "²", "٢" and "２".
ASCII_INDEX = re.compile(r"[0-9]+")
ASCII_PAIR = re.compile(r"([0-9]+)\.([0-9]+)")


STEER_ENTRIES = TypeAdapter(list[SteerEntry])


async def edits(model: ModelInstance, params: dict[str, Any]) -> Interventions:
    """v2 parameters are scalars, so the heads to ablate come as "0.2,1.3" and the steering entries
    as the native API's JSON list in a string."""
    value = params.get("ablate")
    pairs = []
    for part in value.split(",") if value else ():
        pair = ASCII_PAIR.fullmatch(part.strip())
        if pair is None:
            raise V2Error(f'parameter \'ablate\' takes "layer.head" pairs like "0.2,1.3", not {value!r}')
        pairs.append((int(pair[1]), int(pair[2])))
    steer = None
    if params.get("steer"):
        try:
            steer = [entry.spec() for entry in STEER_ENTRIES.validate_json(params["steer"], strict=True)]
        except ValidationError as e:
            raise V2Error(
                f"parameter 'steer' must be a JSON list of {{layer, vector, scale}} entries: {_first(e)}"
            ) from e
    return await interventions(model, pairs, steer)


def _first(e: ValidationError) -> str:
    err = e.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" if err["loc"] else err["msg"]


def lengths(rows: list[Row]) -> Output:
    return Output("lengths", "INT64", np.array([len(r.ids) for r in rows], dtype=np.int64), (len(rows),))


def token_ids(rows: list[Row], width: int) -> Output:
    ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = r.ids
    return Output("token_ids", "INT64", ids, ids.shape)


def index_list(value: Any, name: str) -> list[int] | None:
    """v2 parameters are scalars, so a list of indices comes as an int or as "0,2,3"."""
    if value is None:
        return None
    if isinstance(value, int):
        return [value]
    parts = [ASCII_INDEX.fullmatch(part.strip()) for part in value.split(",")]
    if not all(parts):
        raise V2Error(f'parameter {name!r} must be an index or comma-separated indices like "0,2", not {value!r}')
    return [int(part[0]) for part in parts if part]


LENGTHS = TensorMeta("lengths", "INT64", [-1], "tokens in each row (after truncation)")
TOKEN_IDS = TensorMeta("token_ids", "INT64", [-1, -1], f"each row's tokens, padded with {PAD_ID}")

# Parameters that tritonclient or the protocol itself sends; handled here, never passed on.
# (triton_enable_empty_final_response: tritonclient.grpc's streams ask for a last, empty response.)
PROTOCOL_PARAMS = {"binary_data_output", "triton_enable_empty_final_response"}

"""What the OpenAPI document says beyond the request models' types: the served model's bounds.

A token id, a layer, a head or top_k is valid only within the served model's facts, which the
request models cannot know. They mark such fields with BOUND_MARK and the app fills in `maximum`
when it builds the document, so that a schema-valid request is one the server takes.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from service.core.steering import SteerSpec

BOUND_MARK = "x-attnserve-bound"
TokenId = Annotated[int, Field(ge=0, json_schema_extra={BOUND_MARK: "token_id"})]
LayerIndex = Annotated[int, Field(ge=0, json_schema_extra={BOUND_MARK: "layer"})]
HeadIndex = Annotated[int, Field(ge=0, json_schema_extra={BOUND_MARK: "head"})]
TOP_K: dict[str, Any] = {BOUND_MARK: "top_k"}
# [layer, head]: a JSON array of two (a tuple would not take JSON's array in strict mode); the schema
# gives each place its own bound, and the core names an index that is out of range (422).
AblatedHead = Annotated[
    list[Annotated[int, Field(ge=0)]],
    Field(
        min_length=2,
        max_length=2,
        json_schema_extra={
            "prefixItems": [
                {"type": "integer", "minimum": 0, BOUND_MARK: "layer"},
                {"type": "integer", "minimum": 0, BOUND_MARK: "head"},
            ]
        },
    ),
]


def model_bounds(vocab_size: int, n_layer: int, n_head: int, d_model: int) -> dict[str, int]:
    """The largest valid value of each marked kind of field (for "width", the one valid length)."""
    return {"token_id": vocab_size - 1, "top_k": vocab_size, "layer": n_layer - 1, "head": n_head - 1, "width": d_model}


def fill_bounds(node: Any, bounds: dict[str, int]) -> None:
    """Set `maximum` (a list's length, for "width") on every marked schema in the document, in place."""
    if isinstance(node, dict):
        kind = node.get(BOUND_MARK)
        if kind == "width":
            node["minItems"] = node["maxItems"] = bounds[kind]
        elif kind in bounds:
            node["maximum"] = bounds[kind]
        for value in node.values():
            fill_bounds(value, bounds)
    elif isinstance(node, list):
        for value in node:
            fill_bounds(value, bounds)


def exactly_one_of(*fields: str) -> dict[str, Any]:
    """A JSON Schema `oneOf`: exactly one of these (nullable, array) fields is given as an array."""
    return {"oneOf": [{"required": [f], "properties": {f: {"type": "array"}}} for f in fields]}


# Bounds that keep a steered residual stream (up to MAX_STEER_ENTRIES of these products summed) and
# its LayerNorm's variance finite in float32.
SteerValue = Annotated[float, Field(ge=-1e6, le=1e6)]


class SteerTexts(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    add: str = Field(min_length=1, description="Text whose mean residual stream before the layer is added.")
    subtract: str | None = Field(None, min_length=1, description="Text whose mean residual stream is subtracted.")


class SteerEntry(BaseModel):
    """One steering vector: added to the residual stream before block `layer`, at every position."""

    model_config = ConfigDict(extra="forbid", strict=True)

    layer: LayerIndex
    vector: Annotated[list[SteerValue], Field(json_schema_extra={BOUND_MARK: "width"})] | SteerTexts = Field(
        description="d_model numbers, or {add, subtract} texts: the difference of their mean residual streams "
        "before the layer (POST /v1/steering-vector returns it)."
    )
    scale: SteerValue = Field(1.0, description="The vector is multiplied by this before it is added.")

    def spec(self) -> SteerSpec:
        if isinstance(self.vector, SteerTexts):
            return SteerSpec(self.layer, add=self.vector.add, subtract=self.vector.subtract, scale=self.scale)
        return SteerSpec(self.layer, vector=self.vector, scale=self.scale)


STEER_DESCRIPTION = (
    "Steering vectors (activation addition), each added to the residual stream before its layer's block, at "
    "every position and, in generation, at every step. [] or none: no steering."
)

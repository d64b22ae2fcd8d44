"""KServe v2's gRPC messages to the requests and answers of the v2 core (service/api/kserve), and back.

A gRPC request is read into the same InferRequest that an HTTP body becomes, through the same
checks (codec.py): its tensors come as raw little-endian bytes (`raw_input_contents`, one entry per
input, as tritonclient sends them) or in the typed `contents` fields. Answers go back as
`raw_output_contents`, as Triton sends them (BYTES elements each with a 4-byte length), which every
client reads into the same arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import ValidationError
from tritonclient.grpc import service_pb2 as pb

from service.api.kserve.codec import (
    BYTES,
    DATATYPES,
    InferRequest,
    InferRequestHeader,
    Output,
    RequestedOutput,
    Tensor,
    TensorHeader,
    V2Error,
    bytes_tensor,
    check_shape,
    from_binary,
    from_json,
)
from service.api.problems import summary

# The typed contents field that holds each datatype this server reads.
CONTENTS = {"INT64": "int64_contents", "INT32": "int_contents", "FP32": "fp32_contents", "BOOL": "bool_contents"}


def parameter(p: pb.InferParameter) -> Any:
    """An InferParameter's value (bool, int, float or str), as the HTTP JSON would give it."""
    kind = p.WhichOneof("parameter_choice")
    if kind is None:
        raise V2Error("a parameter has no value")
    return getattr(p, kind)


def parameters(given: Any) -> dict[str, Any]:
    return {name: parameter(p) for name, p in given.items()}


def infer_request(req: pb.ModelInferRequest, max_rank: int) -> InferRequest:
    """The request in the v2 core's form; V2Error (INVALID_ARGUMENT) for anything it cannot take."""
    raw = list(req.raw_input_contents)
    if raw and len(raw) != len(req.inputs):
        raise V2Error(f"raw_input_contents has {len(raw)} entries for {len(req.inputs)} inputs: give one per input")
    try:
        heads = [
            TensorHeader(name=t.name, shape=list(t.shape), datatype=t.datatype, parameters=parameters(t.parameters))
            for t in req.inputs
        ]
        asked = [RequestedOutput(name=o.name, parameters=parameters(o.parameters)) for o in req.outputs]
        # Binary sizes are what the answer holds here: gRPC carries raw bytes, never JSON numbers.
        header = InferRequestHeader(
            id=req.id or None,
            parameters={**parameters(req.parameters), "binary_data_output": True},
            inputs=heads,
            outputs=asked or None,
        )
    except ValidationError as e:
        raise V2Error(summary(e.errors())) from e
    inputs: dict[str, Tensor] = {}
    for i, (t, message) in enumerate(zip(header.inputs, req.inputs, strict=True)):
        if t.name in inputs:
            raise V2Error(f"input {t.name!r} is given twice")
        if t.datatype not in DATATYPES:
            raise V2Error(f"input {t.name!r} has unknown datatype {t.datatype!r}")
        if "shared_memory_region" in t.parameters:
            raise V2Error("shared memory is not supported: send the data in the request")
        if raw:
            check_shape(t, max_rank, len(raw[i]))
            inputs[t.name] = from_binary(t, raw[i])
        else:
            inputs[t.name] = _typed(t, message, max_rank)
    return InferRequest(header, inputs)


def _typed(t: TensorHeader, message: pb.ModelInferRequest.InferInputTensor, max_rank: int) -> Tensor:
    """An input from the typed contents field of its datatype."""
    if t.datatype == BYTES:
        items = list(message.contents.bytes_contents)
        check_shape(t, max_rank, sum(len(b) + 1 for b in items))
        count = int(np.prod(t.shape))
        if len(items) != count:
            raise V2Error(f"input {t.name!r} has shape {t.shape} ({count} elements) but {len(items)} in its contents")
        return Tensor(t.name, BYTES, tuple(t.shape), items)
    field = CONTENTS.get(t.datatype)
    if field is None:
        raise V2Error(f"input {t.name!r}: datatype {t.datatype} is not one this server reads")
    values = list(getattr(message.contents, field))
    check_shape(t, max_rank, len(values))
    return from_json(t.model_copy(update={"data": values}))


def infer_response(model: str, version: str, request_id: str | None, outputs: list[Output]) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id or "")
    for o in outputs:
        response.outputs.add(name=o.name, datatype=o.datatype, shape=list(o.shape))
        raw = bytes_tensor(o.value) if isinstance(o.value, list) else np.ascontiguousarray(o.value).tobytes()
        response.raw_output_contents.append(raw)
    return response

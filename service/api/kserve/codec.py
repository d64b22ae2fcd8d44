"""The Open Inference Protocol's (KServe v2) wire forms: JSON tensors and the binary tensor data extension.

A request body is a JSON header, optionally followed by raw tensor bytes; the header's length is then
in `Inference-Header-Content-Length`, and each binary input says its own size in
`parameters.binary_data_size`, in the order of `inputs`. BYTES elements in binary form are each a
4-byte little-endian length and the bytes. Every size is checked against the shape and the body
before anything is read, so a request that lies about its sizes gets a 400 and never reads past
its buffer.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from service.api.problems import summary

HEADER_LENGTH = "inference-header-content-length"
# The datatypes this server reads or writes, with their numpy forms. BYTES is variable length.
NUMPY: dict[str, np.dtype] = {
    "INT64": np.dtype("<i8"),
    "INT32": np.dtype("<i4"),
    "FP32": np.dtype("<f4"),
    "BOOL": np.dtype("?"),
}
BYTES = "BYTES"
NUMPY_NAMES = tuple(NUMPY)
DATATYPES = (*NUMPY, BYTES, "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "FP16", "FP64", "BF16")

Parameter = StrictBool | StrictInt | StrictFloat | StrictStr


class V2Error(ValueError):
    """A request this protocol cannot take (400, {"error": message})."""


class TensorHeader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr
    shape: list[Annotated[StrictInt, Field(ge=0)]]
    # The schema lists the datatypes this server reads; any other is refused by name (400).
    datatype: StrictStr = Field(json_schema_extra={"enum": [*NUMPY_NAMES, "BYTES"]})
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    data: Any = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr
    parameters: dict[str, Parameter] = Field(default_factory=dict)


class InferRequestHeader(BaseModel):
    """The JSON part of POST /v2/models/{name}/infer."""

    model_config = ConfigDict(extra="forbid")

    id: StrictStr | None = None
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    inputs: list[TensorHeader] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    # A numpy array of the shape, or for BYTES a flat list of bytes objects.
    value: np.ndarray | list[bytes]


@dataclass(frozen=True)
class InferRequest:
    header: InferRequestHeader
    inputs: dict[str, Tensor]


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before `Content-Encoding` (gzip or deflate, as tritonclient offers), at most `limit` bytes."""
    if not encoding or encoding == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise V2Error(f"unsupported Content-Encoding {encoding!r}; send gzip, deflate or none")
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise V2Error(f"the body is not valid {encoding}: {e}") from e
    if len(out) > limit or d.unconsumed_tail:
        raise V2Error(f"the decompressed body is larger than MAX_BODY_BYTES={limit}")
    return out


def parse_request(body: bytes, header_length: str | None, max_rank: int) -> InferRequest:
    """Split the body into the JSON header and binary tensors, and check every size. No input may have
    more than `max_rank` dimensions."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        # ASCII only: str.isdigit() also takes digits such as "²", which int() then refuses.
        if not (header_length.isascii() and header_length.isdigit()):
            raise V2Error(f"Inference-Header-Content-Length must be a byte count, not {header_length!r}")
        n = int(header_length)
        if n > len(body):
            raise V2Error(f"Inference-Header-Content-Length is {n} but the body has only {len(body)} bytes")
        json_part, binary = body[:n], body[n:]
    try:
        header = InferRequestHeader.model_validate_json(json_part)
    except ValidationError as e:
        raise V2Error(_summary(e)) from e

    inputs: dict[str, Tensor] = {}
    offset = 0
    for t in header.inputs:
        if t.name in inputs:
            raise V2Error(f"input {t.name!r} is given twice")
        if t.datatype not in DATATYPES:
            raise V2Error(f"input {t.name!r} has unknown datatype {t.datatype!r}")
        check_shape(t, max_rank, len(body))
        if "shared_memory_region" in t.parameters:
            raise V2Error("shared memory is not supported: send the data in JSON or in binary form")
        size = t.parameters.get("binary_data_size")
        if size is None:
            if t.data is None:
                raise V2Error(f"input {t.name!r} has neither 'data' nor parameters.binary_data_size")
            inputs[t.name] = from_json(t)
            continue
        if t.data is not None:
            raise V2Error(f"input {t.name!r} has both 'data' and parameters.binary_data_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise V2Error(f"input {t.name!r}: binary_data_size must be a byte count, not {size!r}")
        if offset + size > len(binary):
            raise V2Error(
                f"input {t.name!r} says binary_data_size={size}, but only {len(binary) - offset} bytes of "
                "binary data are left in the body"
            )
        inputs[t.name] = from_binary(t, binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise V2Error(f"the body has {len(binary) - offset} bytes after the last binary input")
    return InferRequest(header, inputs)


def _summary(e: ValidationError) -> str:
    problems = e.errors()
    if problems and problems[0]["type"] == "json_invalid":
        return "the request header is not valid JSON"
    return summary(problems)


def check_shape(t: TensorHeader, max_rank: int, body_bytes: int) -> None:
    """Before anything is built from a shape: a rank the server's inputs allow, and no dimension larger
    than the body could fill (every element takes at least a byte), so that with a zero elsewhere a
    shape such as [0, 2**62] still never reaches numpy."""
    if len(t.shape) > max_rank:
        raise V2Error(f"input {t.name!r} has {len(t.shape)} dimensions; the inputs here have at most {max_rank}")
    for i, d in enumerate(t.shape):
        if d > body_bytes:
            raise V2Error(f"input {t.name!r}: dimension {i} is {d}, more than the {body_bytes}-byte body could hold")


def _count(t: TensorHeader) -> int:
    return math.prod(t.shape)


def from_binary(t: TensorHeader, raw: bytes) -> Tensor:
    count = _count(t)
    if t.datatype == BYTES:
        items = _split_bytes(raw, t.name)
        if len(items) != count:
            raise V2Error(f"input {t.name!r} has shape {t.shape} ({count} elements) but {len(items)} in its data")
        return Tensor(t.name, t.datatype, tuple(t.shape), items)
    dtype = _numpy_dtype(t)
    if len(raw) != count * dtype.itemsize:
        raise V2Error(
            f"input {t.name!r}: shape {t.shape} of {t.datatype} needs {count * dtype.itemsize} bytes, "
            f"but binary_data_size is {len(raw)}"
        )
    return Tensor(t.name, t.datatype, tuple(t.shape), np.frombuffer(raw, dtype=dtype).reshape(t.shape))


def _split_bytes(raw: bytes, name: str) -> list[bytes]:
    items = []
    at = 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise V2Error(f"input {name!r}: BYTES data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + n > len(raw):
            raise V2Error(f"input {name!r}: a BYTES element says {n} bytes but only {len(raw) - at} are left")
        items.append(raw[at : at + n])
        at += n
    return items


def _numpy_dtype(t: TensorHeader) -> np.dtype:
    dtype = NUMPY.get(t.datatype)
    if dtype is None:
        raise V2Error(f"input {t.name!r}: datatype {t.datatype} is not one this server reads")
    return dtype


def _flatten(data: Any) -> Iterator[Any]:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def from_json(t: TensorHeader) -> Tensor:
    """JSON `data`, flat or nested in row-major order, as the protocol allows."""
    flat = list(_flatten(t.data))
    count = _count(t)
    if len(flat) != count:
        raise V2Error(f"input {t.name!r} has shape {t.shape} ({count} elements) but {len(flat)} in its data")
    if t.datatype == BYTES:
        if not all(isinstance(x, str) for x in flat):
            raise V2Error(f"input {t.name!r} is BYTES: its JSON data must be strings")
        return Tensor(t.name, t.datatype, tuple(t.shape), [x.encode() for x in flat])
    dtype = _numpy_dtype(t)
    kinds: tuple[type, ...] = {"b": (bool,), "i": (int,), "f": (int, float)}[dtype.kind]
    # bool is an int in Python: only BOOL tensors take true and false.
    if not all(isinstance(x, kinds) and (dtype.kind == "b" or not isinstance(x, bool)) for x in flat):
        raise V2Error(f"input {t.name!r} is {t.datatype}: its JSON data holds values of another type")
    try:
        value = np.array(flat, dtype=dtype).reshape(t.shape)
    except OverflowError as e:
        raise V2Error(f"input {t.name!r} holds a value out of range for {t.datatype}") from e
    return Tensor(t.name, t.datatype, tuple(t.shape), value)


# -- responses ------------------------------------------------------------------------------------


def bytes_tensor(items: list[bytes]) -> bytes:
    """BYTES elements in the binary form: each a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


@dataclass(frozen=True)
class Output:
    name: str
    datatype: str
    value: np.ndarray | list[bytes]  # list[bytes] for BYTES, with `shape` given
    shape: tuple[int, ...]


def encode_response(
    model: str, version: str, request_id: str | None, outputs: list[Output], binary: dict[str, bool]
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    tensors = []
    chunks = []
    for o in outputs:
        tensor: dict[str, Any] = {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
        if binary[o.name]:
            raw = bytes_tensor(o.value) if isinstance(o.value, list) else np.ascontiguousarray(o.value).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif isinstance(o.value, list):
            tensor["data"] = [b.decode("utf-8", "replace") for b in o.value]
        else:
            tensor["data"] = o.value.ravel()
        tensors.append(tensor)
    body: dict[str, Any] = {"model_name": model, "model_version": version}
    if request_id is not None:
        body["id"] = request_id
    body["outputs"] = tensors
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)

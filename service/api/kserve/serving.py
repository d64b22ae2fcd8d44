"""v2 model names and requests onto the registry's models and their jobs (jobs.py), and back.

One v2 model per job of each loaded model: `<model>.next_token`, `.attention`, `.score` and
`.logit_lens` (the bare job names are the default model's). Each is one ONNX graph behind one
dynamic batcher, with a fixed set of outputs, which is what a Triton model is; a Triton user reads
each model's metadata and knows what comes back, and each model batches with the native route of
the same job. (One model whose requested outputs chose the graph would make the metadata list
outputs that cannot come together, and mix batchers behind one name.)

Every model takes the same inputs: `text` BYTES [-1] (or [-1, 1]), or `input_ids` INT64 [-1, -1]
with an optional `attention_mask` INT64 [-1, -1] (the tokens where it is 1 are the row's, so left
and right padding both work). Rows of a batch answer come padded to the longest row, with
`lengths` saying how many tokens each row has.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import __version__
from service.api.budget import OFF_LOOP_BYTES, Reservation
from service.api.deps import hold
from service.api.kserve.codec import BYTES, InferRequest, Output, Tensor, V2Error, encode_response
from service.api.kserve.jobs import MODELS
from service.api.kserve.v2model import INPUTS, INPUTS_BY_NAME, PROTOCOL_PARAMS, V2Model
from service.core.errors import ModelNotFoundError
from service.core.inputs import Row, input_rows
from service.core.instance import ModelInstance
from service.core.registry import ModelRegistry
from service.core.sampling import top_indices
from service.core.threads import off_loop

EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "parameters"]
PLATFORM = "onnxruntime_onnx"
JSON_VALUE_BYTES = 14  # a number in a JSON tensor's data, with its comma (float32 log-probs: 10 to 13)


@dataclass(frozen=True)
class Target:
    """What a v2 model name resolves to: a job of one loaded model version."""

    name: str  # the v2 model name as asked
    job: V2Model
    model: ModelInstance
    version: str


class V2Serving:
    """v2 model names over the registry: `<model>.<job>` for every loaded model (`<model>` alone is its
    next_token job), and the bare job names for the default model, as before there was a repository."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def names(self) -> list[str]:
        """Every v2 model name that answers now."""
        default = self.registry.default_name()
        out = list(MODELS) if default in self.registry.serving else []
        for served in self.registry.ready():
            out += [served.name] + [f"{served.name}.{job}" for job in MODELS]
        return out

    def split(self, name: str) -> tuple[str | None, V2Model]:
        """(repository model or None for the default, job) for a v2 model name; LookupError if none."""
        if name in MODELS:
            return None, MODELS[name]
        model, _, job = name.rpartition(".")
        if model and job in MODELS:
            return model, MODELS[job]
        if name in self.registry.serving or name in self.registry.available():
            return name, MODELS["next_token"]
        raise ModelNotFoundError(
            f"unknown model {name!r}; the models are <model>.<job> (jobs: {', '.join(MODELS)}) for the loaded "
            f"models ({', '.join(sorted(self.registry.serving)) or 'none'}), or a bare job for the default model"
        )

    def target(self, scope: MutableMapping[str, Any], name: str, version: str | None) -> Target:
        """The job and model version a name asks for, the version held for the request (its scope)."""
        model, job = self.split(name)
        held = hold(scope, self.registry, model, version or None)
        return Target(name, job, held.instance, held.served.version)

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "attnserve", "version": __version__, "extensions": EXTENSIONS}

    @staticmethod
    def _shape(model: ModelInstance, shape: list[int]) -> list[int]:
        # -2 in a declared shape stands for the vocabulary size, known only once a bundle is loaded.
        return [model.bundle.vocab_size if d == -2 else d for d in shape]

    def model_metadata(self, t: Target) -> dict[str, Any]:
        return {
            "name": t.name,
            "versions": [t.version],
            "platform": PLATFORM,
            "inputs": [m.metadata() for m in INPUTS],
            "outputs": [{**m.metadata(), "shape": self._shape(t.model, m.shape)} for m in t.job.outputs],
        }

    def model_config(self, t: Target) -> dict[str, Any]:
        """Triton's model configuration, so that tools that read it (and people) see the batching."""
        s = t.model.config
        return {
            "name": t.name,
            "platform": PLATFORM,
            "backend": "onnxruntime",
            "version_policy": {"specific": {"versions": [t.version]}},
            # Rows carry their own batch axis, so the config states no implicit one (as max_batch_size 0 does).
            "max_batch_size": 0,
            "input": [
                {
                    "name": m.name,
                    "data_type": f"TYPE_{'STRING' if m.datatype == BYTES else m.datatype}",
                    "dims": m.shape,
                    "optional": m.optional,
                }
                for m in INPUTS
            ],
            "output": [
                {"name": m.name, "data_type": f"TYPE_{m.datatype}", "dims": self._shape(t.model, m.shape)}
                for m in t.job.outputs
            ],
            "dynamic_batching": {
                "max_queue_delay_microseconds": int(s.max_batch_delay_ms * 1000),
                "preferred_batch_size": [s.max_batch_size],
                "default_queue_policy": {"max_queue_size": s.max_queue_rows},
            },
            "parameters": {p.name: {"string_value": p.description} for p in t.job.params},
            "description": t.job.description,
        }

    async def infer(
        self, t: Target, request: InferRequest, held: Reservation | None = None, log: dict[str, Any] | None = None
    ) -> tuple[bytes, int | None]:
        """The HTTP answer: its body and, when any output is binary, its JSON header's length."""
        outputs, binary = await self.answer(t, request, held, log)
        if held is not None and held.held >= OFF_LOOP_BYTES:
            # A large answer (tens of MB) is written in a thread, so that the event loop keeps answering.
            return await off_loop(encode_response, t.name, t.version, request.header.id, outputs, binary)
        return encode_response(t.name, t.version, request.header.id, outputs, binary)

    async def answer(
        self, t: Target, request: InferRequest, held: Reservation | None = None, log: dict[str, Any] | None = None
    ) -> tuple[list[Output], dict[str, bool]]:
        """The outputs asked for, in the order asked, and which of them go binary: the answer in any
        wire form (HTTP's JSON and binary, gRPC's protobuf)."""
        header = request.header
        m = t.job
        rows, params = await self.inputs(t, request)
        if log is not None:
            log["rows"] = len(rows)
        wanted, binary, classify = self._outputs(t.model, m, header)
        if held is not None:
            held.take(self._answer_bytes(m, m.values(t.model, rows, params), wanted, binary))
        outputs = [o for o in await m.run(t.model, rows, params, set(wanted), held) if o.name in wanted]
        if classify:
            outputs = [self._classify(t.model, o, classify[o.name]) if o.name in classify else o for o in outputs]
        order = {name: i for i, name in enumerate(wanted)}
        outputs.sort(key=lambda o: order[o.name])
        return outputs, binary

    async def inputs(self, t: Target, request: InferRequest) -> tuple[list[Row], dict[str, Any]]:
        """The request's rows and its job's parameters, checked."""
        params = self._params(t.job, request.header.parameters)
        return await self._rows(t.model, request.inputs, params.get("truncate", False)), params

    @staticmethod
    def _answer_bytes(m: V2Model, values: dict[str, int], wanted: dict[str, None], binary: dict[str, bool]) -> int:
        """What the outputs asked for hold: each value as an array element, then in its binary or JSON form."""
        size = {t.name: 8 if t.datatype == "INT64" else 4 for t in m.outputs}
        return sum(
            n * (size[name] + (size[name] if binary[name] else JSON_VALUE_BYTES))
            for name, n in values.items()
            if name in wanted
        )

    def _params(self, m: V2Model, given: dict[str, Any]) -> dict[str, Any]:
        known = {p.name: p for p in m.params}
        out = {}
        for name, value in given.items():
            if name in PROTOCOL_PARAMS:
                continue
            p = known.get(name)
            if p is None:
                raise V2Error(f"unknown parameter {name!r} for model {m.name!r}; it takes {', '.join(known) or 'none'}")
            # bool is an int in Python: it passes only where the parameter takes bools.
            if not isinstance(value, p.types) or isinstance(value, bool) != (bool in p.types):
                raise V2Error(f"parameter {name!r} has the wrong type ({type(value).__name__}): {p.description}")
            out[name] = value
        return out

    @staticmethod
    async def _rows(model: ModelInstance, inputs: dict[str, Tensor], truncate: bool) -> list[Row]:
        for name, t in inputs.items():
            meta = INPUTS_BY_NAME.get(name)
            if meta is None:
                raise V2Error(f"unknown input {name!r}; the inputs are {', '.join(INPUTS_BY_NAME)}")
            if t.datatype != meta.datatype:
                raise V2Error(f"input {name!r} has datatype {t.datatype}; it must be {meta.datatype}")
        text, ids, mask = inputs.get("text"), inputs.get("input_ids"), inputs.get("attention_mask")
        if (text is None) == (ids is None):
            raise V2Error("give exactly one of the inputs 'text' or 'input_ids'")
        if text is not None:
            if mask is not None:
                raise V2Error("attention_mask goes with input_ids, not with text")
            if len(text.shape) not in (1, 2) or (len(text.shape) == 2 and text.shape[1] != 1):
                raise V2Error(f"input 'text' must have shape [rows] or [rows, 1], not {list(text.shape)}")
            return await input_rows(model, _texts(text), None, truncate)
        assert ids is not None
        return await input_rows(model, None, _id_rows(ids, mask), truncate, "input_ids")

    def _outputs(
        self, model: ModelInstance, m: V2Model, header: Any
    ) -> tuple[dict[str, None], dict[str, bool], dict[str, int]]:
        """The outputs asked for, in order; which go binary; which are classified, with their k."""
        names = [t.name for t in m.outputs]
        default_binary = header.parameters.get("binary_data_output", False)
        if not isinstance(default_binary, bool):
            raise V2Error("parameter 'binary_data_output' must be true or false")
        if header.outputs is None:
            return dict.fromkeys(names), dict.fromkeys(names, default_binary), {}
        wanted: dict[str, None] = {}
        binary: dict[str, bool] = {}
        classify: dict[str, int] = {}
        for o in header.outputs:
            if o.name not in names:
                raise V2Error(f"unknown output {o.name!r} for model {m.name!r}; its outputs are {', '.join(names)}")
            if o.name in wanted:
                raise V2Error(f"output {o.name!r} is asked for twice")
            wanted[o.name] = None
            b = o.parameters.get("binary_data", default_binary)
            if not isinstance(b, bool):
                raise V2Error(f"output {o.name!r}: binary_data must be true or false")
            binary[o.name] = b
            k = o.parameters.get("classification")
            if k is not None:
                if o.name != m.classified:
                    raise V2Error(
                        f"classification applies to {m.classified or 'no output of this model'}, not {o.name!r}"
                    )
                if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= model.bundle.vocab_size:
                    raise V2Error(f"classification must be a count from 1 to {model.bundle.vocab_size}, not {k!r}")
                classify[o.name] = k
            unknown = set(o.parameters) - {"binary_data", "classification"}
            if unknown:
                raise V2Error(f"output {o.name!r} has unknown parameters {sorted(unknown)}")
        return wanted, binary, classify

    def _classify(self, model: ModelInstance, o: Output, k: int) -> Output:
        """Triton's classification extension: the top k of each row as "value:index:label", best first."""
        values = np.asarray(o.value)
        text = model.token_text
        items = [f"{str(row[j])}:{j}:{text[j]}".encode() for row in values for j in top_indices(row, k).tolist()]
        return Output(o.name, BYTES, items, (values.shape[0], k))


def _texts(t: Tensor) -> list[str]:
    assert isinstance(t.value, list)
    out = []
    for i, raw in enumerate(t.value):
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise V2Error(f"input 'text' element {i} is not valid UTF-8 ({e.reason} at byte {e.start})") from e
    return out


def _id_rows(ids: Tensor, mask: Tensor | None) -> list[list[int]]:
    assert isinstance(ids.value, np.ndarray)
    if len(ids.shape) != 2:
        raise V2Error(f"input 'input_ids' must have shape [rows, tokens], not {list(ids.shape)}")
    if mask is None:
        return ids.value.tolist()
    assert isinstance(mask.value, np.ndarray)
    if mask.shape != ids.shape:
        raise V2Error(f"attention_mask has shape {list(mask.shape)} but input_ids has {list(ids.shape)}")
    if not np.isin(mask.value, (0, 1)).all():
        raise V2Error("attention_mask must hold only 0 and 1")
    keep = mask.value.astype(bool)
    return [row[k].tolist() for row, k in zip(ids.value, keep, strict=True)]

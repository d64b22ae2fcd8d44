"""attnserve's jobs as Open Inference Protocol (KServe v2) models, on the protocol-neutral core.

One v2 model per job: `next_token`, `attention` and `score`. Each is one ONNX graph behind one
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

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bundlespec.graphs import LENS_TOP
from service import __version__
from service.api.budget import Reservation
from service.api.deps import LEASES_KEY, lease
from service.api.kserve.codec import BYTES, InferRequest, Output, Tensor, V2Error, encode_response
from service.core.errors import ModelNotFoundError
from service.core.inference import InferenceCore, Row, off_loop
from service.core.registry import ModelRegistry
from service.core.sampling import top_indices

EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "parameters"]
PLATFORM = "onnxruntime_onnx"
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
    run: Callable[[InferenceCore, list[Row], dict[str, Any], set[str], Reservation | None], Awaitable[list[Output]]]
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
]


def _head_mask(core: InferenceCore, params: dict[str, Any]) -> np.ndarray | None:
    """v2 parameters are scalars, so the heads to ablate come as "0.2,1.3"."""
    value = params.get("ablate")
    if not value:
        return None
    pairs = []
    for part in value.split(","):
        layer, dot, head = part.strip().partition(".")
        if not (dot and layer.isdigit() and head.isdigit()):
            raise V2Error(f'parameter \'ablate\' takes "layer.head" pairs like "0.2,1.3", not {value!r}')
        pairs.append((int(layer), int(head)))
    return core.head_mask(pairs, "ablate")


def _lengths(rows: list[Row]) -> Output:
    return Output("lengths", "INT64", np.array([len(r.ids) for r in rows], dtype=np.int64), (len(rows),))


def _token_ids(rows: list[Row], width: int) -> Output:
    ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = r.ids
    return Output("token_ids", "INT64", ids, ids.shape)


async def _next_token(
    core: InferenceCore, rows: list[Row], params: dict[str, Any], wanted: set[str], _: Reservation | None
) -> list[Output]:
    temperature = params.get("temperature", 1.0)
    if not 1e-3 <= temperature <= 100:
        raise V2Error(f"parameter 'temperature' must be between 0.001 and 100, not {temperature}")
    logprobs = np.stack(await core.next_token_logprobs(rows, temperature, _head_mask(core, params))).astype(np.float32)
    return [Output("next_token_logprobs", "FP32", logprobs, logprobs.shape), _lengths(rows)]


# Bytes held per weight of the padded answer: the float32 array, then its binary or JSON form.
ATTENTION_BYTES = 4 + 10


async def _attention(
    core: InferenceCore, rows: list[Row], params: dict[str, Any], wanted: set[str], held: Reservation | None
) -> list[Output]:
    layers, heads = (_index_list(params.get(p), p) for p in ("layers", "heads"))
    width = max(len(r.ids) for r in rows)

    def reserve(returned: int) -> None:
        if held is not None and "attention_weights" in wanted:
            padded = returned // sum(len(r.ids) ** 2 for r in rows) * len(rows) * width**2
            held.take(padded * ATTENTION_BYTES)

    maps = await core.attention(rows, layers, heads, reserve, _head_mask(core, params))
    layers_, heads_ = maps[0].layers, maps[0].heads
    out = [_lengths(rows), _token_ids(rows, width)]
    out.append(Output("layers", "INT64", np.array(layers_, dtype=np.int64), (len(layers_),)))
    out.append(Output("heads", "INT64", np.array(heads_, dtype=np.int64), (len(heads_),)))
    if "attention_weights" in wanted:
        weights = np.zeros((len(rows), len(layers_), len(heads_), width, width), dtype=np.float32)
        for i, m in enumerate(maps):
            n = len(m.row.ids)
            weights[i, :, :, :n, :n] = m.weights
        out.insert(0, Output("attention_weights", "FP32", weights, weights.shape))
    return out


async def _score(
    core: InferenceCore, rows: list[Row], params: dict[str, Any], wanted: set[str], _: Reservation | None
) -> list[Output]:
    scores = await core.score(rows, _head_mask(core, params))
    width = max(len(r.ids) for r in rows)
    logprobs = np.zeros((len(rows), max(width - 1, 0)), dtype=np.float32)
    for i, s in enumerate(scores):
        logprobs[i, : len(s.logprobs)] = s.logprobs
    return [Output("token_logprobs", "FP32", logprobs, logprobs.shape), _lengths(rows), _token_ids(rows, width)]


async def _logit_lens(
    core: InferenceCore, rows: list[Row], params: dict[str, Any], wanted: set[str], _: Reservation | None
) -> list[Output]:
    top_k = params.get("top_k", 5)
    lens = await core.logit_lens(rows, top_k, _head_mask(core, params))
    width = max(len(r.ids) for r in rows)
    depth = lens[0][0].shape[0]
    logprobs = np.zeros((len(rows), depth, width, top_k), dtype=np.float32)
    ids = np.full((len(rows), depth, width, top_k), PAD_ID, dtype=np.int64)
    for i, (lp, top) in enumerate(lens):
        n = lp.shape[1]
        logprobs[i, :, :n], ids[i, :, :n] = lp, top
    return [
        Output("lens_logprobs", "FP32", logprobs, logprobs.shape),
        Output("lens_token_ids", "INT64", ids, ids.shape),
        _lengths(rows),
    ]


def _index_list(value: Any, name: str) -> list[int] | None:
    """v2 parameters are scalars, so a list of indices comes as an int or as "0,2,3"."""
    if value is None:
        return None
    if isinstance(value, int):
        return [value]
    try:
        return [int(part) for part in value.split(",")]
    except ValueError as e:
        raise V2Error(
            f'parameter {name!r} must be an index or comma-separated indices like "0,2", not {value!r}'
        ) from e


LENGTHS = TensorMeta("lengths", "INT64", [-1], "tokens in each row (after truncation)")
TOKEN_IDS = TensorMeta("token_ids", "INT64", [-1, -1], f"each row's tokens, padded with {PAD_ID}")

MODELS: dict[str, V2Model] = {
    m.name: m
    for m in (
        V2Model(
            "next_token",
            "log-probabilities of the next token after each row",
            [
                TensorMeta("next_token_logprobs", "FP32", [-1, -2], "log p(next token) over the vocabulary"),
                LENGTHS,
            ],
            [*COMMON_PARAMS, Param("temperature", (int, float), "softmax temperature (0.001 to 100)")],
            _next_token,
            classified="next_token_logprobs",
        ),
        V2Model(
            "attention",
            "softmax attention weights per layer and head, aligned to each row's tokens",
            [
                TensorMeta(
                    "attention_weights",
                    "FP32",
                    [-1, -1, -1, -1, -1],
                    "[row, layer, head, query, key]: each real query row sums to 1; keys after the query are 0",
                ),
                LENGTHS,
                TOKEN_IDS,
                TensorMeta("layers", "INT64", [-1], "the layer index of each entry of the layer axis"),
                TensorMeta("heads", "INT64", [-1], "the head index of each entry of the head axis"),
            ],
            [
                *COMMON_PARAMS,
                Param("layers", (str, int), 'layer indices, as an int or "0,2"; all by default'),
                Param("heads", (str, int), 'head indices, as an int or "0,2"; all by default'),
            ],
            _attention,
        ),
        V2Model(
            "score",
            "log p(token t+1 | tokens <= t) for each row",
            [
                TensorMeta("token_logprobs", "FP32", [-1, -1], "[row, position]: lengths - 1 values per row, then 0"),
                LENGTHS,
                TOKEN_IDS,
            ],
            COMMON_PARAMS,
            _score,
        ),
        V2Model(
            "logit_lens",
            "each layer's prediction: the residual stream after the embeddings and after every block, read "
            "through the final LayerNorm and the unembedding (the top k per layer and position)",
            [
                TensorMeta(
                    "lens_logprobs",
                    "FP32",
                    [-1, -1, -1, -1],
                    "[row, layer (0: embeddings .. n_layer: the output), position, k]: log-probs, most likely "
                    "first; positions past a row's length are 0",
                ),
                TensorMeta(
                    "lens_token_ids", "INT64", [-1, -1, -1, -1], f"the tokens of lens_logprobs ({PAD_ID}: padding)"
                ),
                LENGTHS,
            ],
            [*COMMON_PARAMS, Param("top_k", (int,), f"tokens per layer and position, 1 to {LENS_TOP} (default 5)")],
            _logit_lens,
        ),
    )
}

# Parameters that tritonclient or the protocol itself sends; handled here, never passed on.
PROTOCOL_PARAMS = {"binary_data_output"}


@dataclass(frozen=True)
class Target:
    """What a v2 model name resolves to: a job of one loaded model version."""

    name: str  # the v2 model name as asked
    job: V2Model
    core: InferenceCore
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

    def target(self, request: Any, name: str, version: str | None) -> Target:
        model, job = self.split(name)
        core = lease(request, model, version or None)
        served_version = request.scope[LEASES_KEY][-1].served.version
        return Target(name, job, core, served_version)

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "attnserve", "version": __version__, "extensions": EXTENSIONS}

    @staticmethod
    def _shape(core: InferenceCore, shape: list[int]) -> list[int]:
        # -2 in a declared shape stands for the vocabulary size, known only once a bundle is loaded.
        return [core.bundle.vocab_size if d == -2 else d for d in shape]

    def model_metadata(self, t: Target) -> dict[str, Any]:
        return {
            "name": t.name,
            "versions": [t.version],
            "platform": PLATFORM,
            "inputs": [m.metadata() for m in INPUTS],
            "outputs": [{**m.metadata(), "shape": self._shape(t.core, m.shape)} for m in t.job.outputs],
        }

    def model_config(self, t: Target) -> dict[str, Any]:
        """Triton's model configuration, so that tools that read it (and people) see the batching."""
        s = t.core.config
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
                {"name": m.name, "data_type": f"TYPE_{m.datatype}", "dims": self._shape(t.core, m.shape)}
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
        header = request.header
        m = t.job
        params = self._params(m, header.parameters)
        rows = await self._rows(t.core, request.inputs, params.get("truncate", False))
        if log is not None:
            log["rows"] = len(rows)
        wanted, binary, classify = self._outputs(t.core, m, header)
        outputs = [o for o in await m.run(t.core, rows, params, set(wanted), held) if o.name in wanted]
        if classify:
            outputs = [self._classify(t.core, o, classify[o.name]) if o.name in classify else o for o in outputs]
        order = {name: i for i, name in enumerate(wanted)}
        outputs.sort(key=lambda o: order[o.name])
        if held is not None and held.held:
            # A large answer (tens of MB) is written in a thread, so that the event loop keeps answering.
            return await off_loop(encode_response, t.name, t.version, header.id, outputs, binary)
        return encode_response(t.name, t.version, header.id, outputs, binary)

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
    async def _rows(core: InferenceCore, inputs: dict[str, Tensor], truncate: bool) -> list[Row]:
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
            return await core.input_rows(_texts(text), None, truncate)
        assert ids is not None
        return await core.input_rows(None, _id_rows(ids, mask), truncate, "input_ids")

    def _outputs(
        self, core: InferenceCore, m: V2Model, header: Any
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
                if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= core.bundle.vocab_size:
                    raise V2Error(f"classification must be a count from 1 to {core.bundle.vocab_size}, not {k!r}")
                classify[o.name] = k
            unknown = set(o.parameters) - {"binary_data", "classification"}
            if unknown:
                raise V2Error(f"output {o.name!r} has unknown parameters {sorted(unknown)}")
        return wanted, binary, classify

    def _classify(self, core: InferenceCore, o: Output, k: int) -> Output:
        """Triton's classification extension: the top k of each row as "value:index:label", best first."""
        values = np.asarray(o.value)
        text = core.token_text
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

"""The intervention jobs as KServe v2 models: activations and direct logit attribution. Patching and
steering vectors take two inputs of their own (or none), which v2's rows of one tensor do not
express; steering itself is a parameter of every job (jobs.COMMON_PARAMS)."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.api.budget import Reservation
from service.api.kserve.codec import Output, V2Error
from service.api.kserve.v2model import COMMON_PARAMS, PAD_ID, Param, TensorMeta, V2Model, edits, index_list, lengths
from service.core import jobs
from service.core.attribution import logit_attribution
from service.core.inputs import Row
from service.core.instance import ModelInstance


def _sites(params: dict[str, Any]) -> list[str]:
    sites = [s.strip() for s in params.get("sites", "resid_pre").split(",")]
    unknown = [s for s in sites if s not in jobs.SITES]
    if unknown:
        raise V2Error(f"parameter 'sites' takes some of {','.join(jobs.SITES)}, not {unknown}")
    return sites


def _positions(params: dict[str, Any]) -> str | list[int]:
    value = params.get("positions", "all")
    if isinstance(value, int) or value not in ("all", "last"):
        positions = index_list(value, "positions")
        assert positions is not None
        return positions
    return value


def _width(rows: list[Row], positions: str | list[int]) -> int:
    if positions == "all":
        return max(len(r.ids) for r in rows)
    return 1 if positions == "last" else len(positions)


def _activation_values(model: ModelInstance, rows: list[Row], params: dict[str, Any]) -> dict[str, int]:
    layers = index_list(params.get("layers"), "layers")
    n_layers = model.bundle.arch.n_layer if layers is None else len(layers)
    width = _width(rows, _positions(params))
    per_row = {s: n_layers * width * jobs.site_values(model, s) for s in _sites(params)}
    return {**{s: len(rows) * n for s, n in per_row.items()}, "positions": len(rows) * width}


async def _activations(
    model: ModelInstance, rows: list[Row], params: dict[str, Any], wanted: set[str], _: Reservation | None
) -> list[Output]:
    sites, positions = _sites(params), _positions(params)
    sets = await jobs.activations(
        model, rows, sites, index_list(params.get("layers"), "layers"), positions, None, await edits(model, params)
    )
    width, chosen = _width(rows, positions), sets[0].layers
    at = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    out = [lengths(rows), Output("layers", "INT64", np.array(chosen, dtype=np.int64), (len(chosen),))]
    for site in sites:
        values = sets[0].sites[site]
        array = np.zeros((len(rows), len(chosen), width, *values.shape[2:]), dtype=np.float32)
        for i, s in enumerate(sets):
            array[i, :, : len(s.positions)] = s.sites[site]
            at[i, : len(s.positions)] = s.positions
        out.append(Output(site, "FP32", array, array.shape))
    out.append(Output("positions", "INT64", at, at.shape))
    return out


async def _attribution(
    model: ModelInstance, rows: list[Row], params: dict[str, Any], wanted: set[str], _: Reservation | None
) -> list[Output]:
    changes = await edits(model, params)
    parts = await logit_attribution(model, rows, params.get("target"), params.get("position"), changes)
    n_layer = model.bundle.arch.n_layer

    def column(name: str, values: list[Any], datatype: str = "FP32") -> Output:
        array = np.array(values, dtype=np.int64 if datatype == "INT64" else np.float32)
        return Output(name, datatype, array, array.shape)

    return [
        column("logit", [p.logit for p in parts]),
        column("embeddings", [p.embeddings for p in parts]),
        column("heads", [p.heads for p in parts]),
        column("attention_biases", [p.attention_biases for p in parts]),
        column("mlps", [p.mlps for p in parts]),
        column("steering", [np.zeros(n_layer) if p.steering is None else p.steering for p in parts]),
        column("final_bias", [p.final_bias for p in parts]),
        column("target", [p.target for p in parts], "INT64"),
        column("position", [p.position for p in parts], "INT64"),
        lengths(rows),
    ]


SITE_DOC = {
    "resid_pre": "the residual stream before the block (steering included)",
    "resid_post": "the residual stream after the block",
    "attn_out": "the attention layer's output (W_O's bias included)",
    "mlp_out": "the MLP's output",
}

MODELS = [
    V2Model(
        "activations",
        "the residual stream and its parts at the asked sites, layers and positions (TransformerLens's names)",
        [
            *(
                TensorMeta(site, "FP32", [-1, -1, -1, -1], f"[row, layer, position, d_model]: {doc}", optional=True)
                for site, doc in SITE_DOC.items()
            ),
            TensorMeta(
                "z",
                "FP32",
                [-1, -1, -1, -1, -1],
                "[row, layer, position, head, d_head]: each head's attention-weighted sum of values, before W_O",
                optional=True,
            ),
            TensorMeta("positions", "INT64", [-1, -1], f"[row, position]: the position of each entry ({PAD_ID}: none)"),
            TensorMeta("layers", "INT64", [-1], "the layer index of each entry of the layer axis"),
            TensorMeta("lengths", "INT64", [-1], "tokens in each row (after truncation)"),
        ],
        [
            *COMMON_PARAMS,
            Param(
                "sites",
                (str,),
                f'sites to return, as "resid_pre,z"; some of {",".join(jobs.SITES)} (default resid_pre)',
            ),
            Param("layers", (str, int), 'layer indices, as an int or "0,2"; all by default'),
            Param("positions", (str, int), '"all" (default), "last", or positions as an int or "0,5"'),
        ],
        _activations,
        _activation_values,
    ),
    V2Model(
        "logit_attribution",
        "direct logit attribution: the target token's logit split into the embeddings, each head, each attention "
        "layer's bias, each MLP, the steering vectors and the final LayerNorm's bias, with its scale frozen",
        [
            TensorMeta("logit", "FP32", [-1], "the target's logit: the sum of every part"),
            TensorMeta("embeddings", "FP32", [-1], "the token and position embeddings' part"),
            TensorMeta("heads", "FP32", [-1, -1, -1], "[row, layer, head]: each head's part, through its W_O slice"),
            TensorMeta("attention_biases", "FP32", [-1, -1], "[row, layer]: each attention layer's W_O bias"),
            TensorMeta("mlps", "FP32", [-1, -1], "[row, layer]: each MLP's part"),
            TensorMeta("steering", "FP32", [-1, -1], "[row, layer]: each layer's steering vector (0 unsteered)"),
            TensorMeta("final_bias", "FP32", [-1], "the final LayerNorm's bias through the unembedding"),
            TensorMeta("target", "INT64", [-1], "the target token"),
            TensorMeta("position", "INT64", [-1], "the position whose logit is split"),
            TensorMeta("lengths", "INT64", [-1], "tokens in each row (after truncation)"),
        ],
        [
            *COMMON_PARAMS,
            Param("target", (int,), "the token id whose logit is split (default: the top next token)"),
            Param("position", (int,), "the position (default: each row's last)"),
        ],
        _attribution,
        lambda model, rows, params: {},
    ),
]

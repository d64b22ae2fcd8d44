"""Direct logit attribution: a token's logit split into what each part of the model wrote.

The residual stream after the last block is a sum of parts: the embeddings (token and position),
each head's output (its attention-weighted sum of values through its slice of W_O), each attention
layer's W_O bias, each MLP's output and, when the request steers, the steering vectors. The logit
of token t at position p is LN_f(x) . u_t, with u_t the token's row of the unembedding and

    LN_f(x) = (x - mean(x)) / sigma * gamma + beta,    sigma = sqrt(var(x) + eps).

With sigma frozen at its value in the run (as TransformerLens and the DLA literature do), LN_f is
affine in x, so each part c contributes ((c - mean(c)) / sigma * gamma) . u_t, and the parts plus
the final LayerNorm's bias term beta . u_t sum to the logit exactly (in float64 arithmetic on the
run's float32 activations). Ablated heads contribute zero, as they wrote nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.core.errors import InputError
from service.core.inputs import NONE, Interventions, Row
from service.core.instance import ModelInstance


@dataclass(frozen=True)
class Attribution:
    row: Row
    position: int
    target: int
    logit: float  # LN_f(x) . u_target: the sum of every part below
    embeddings: float
    heads: np.ndarray  # (L, nh)
    attention_biases: np.ndarray  # (L,): each attention layer's W_O bias
    mlps: np.ndarray  # (L,)
    steering: np.ndarray | None  # (L,): each layer's steering vector, when the request steers
    final_bias: float  # beta . u_target


async def logit_attribution(
    model: ModelInstance,
    rows: list[Row],
    target: int | None = None,
    position: int | None = None,
    edits: Interventions = NONE,
) -> list[Attribution]:
    """Each row's attribution of `target` (default: the model's top next token there) at `position`
    (default: the last)."""
    vocab = model.bundle.vocab_size
    if target is not None and not 0 <= target < vocab:
        raise InputError(f"target {target} is outside the vocabulary [0, {vocab})", "target")
    for i, row in enumerate(rows):
        if position is not None and not 0 <= position < len(row.ids):
            raise InputError(
                f"position {position} is outside input {i}, which has {len(row.ids)} tokens (0..{len(row.ids) - 1})",
                "position",
            )
    outputs = await model.submit("activations", [edits.job(r.ids) for r in rows])
    weights = _Weights.of(model)
    return [
        _attribute(model, weights, row, target, len(row.ids) - 1 if position is None else position, out, edits)
        for row, out in zip(rows, outputs, strict=True)
    ]


@dataclass(frozen=True)
class _Weights:
    """The parameters attribution reads, once per request."""

    gamma: np.ndarray  # (C,) float64: the final LayerNorm's scale
    beta: np.ndarray  # (C,) float64: its bias
    unembed: np.ndarray  # (V, C) float32, mapped: only the rows read are loaded
    w_o: np.ndarray  # (L, C, nh, hs): each layer's W_O, its input side split by head
    b_o: np.ndarray  # (L, C) float64: each layer's W_O bias

    @classmethod
    def of(cls, model: ModelInstance) -> _Weights:
        bundle, arch = model.bundle, model.bundle.arch
        layers = range(arch.n_layer)
        return cls(
            gamma=bundle.weight("ln_f.weight").astype(np.float64),
            beta=bundle.weight("ln_f.bias").astype(np.float64),
            unembed=bundle.weight("tok_emb.weight" if arch.tied_head else "lm_head.weight"),
            w_o=np.stack([bundle.weight(f"blocks.{layer}.attn.w_o.weight") for layer in layers]).reshape(
                arch.n_layer, arch.d_model, arch.n_head, arch.d_head
            ),
            b_o=np.stack([bundle.weight(f"blocks.{layer}.attn.w_o.bias") for layer in layers]).astype(np.float64),
        )


def _attribute(
    model: ModelInstance,
    weights: _Weights,
    row: Row,
    target: int | None,
    p: int,
    outputs: tuple,
    edits: Interventions,
) -> Attribution:
    arch = model.bundle.arch
    # Each site at position p only: resid (L+1, C), mlp_out (L, C), z (L, nh, hs).
    resid, _, mlp_out, z = (o[:, p].astype(np.float64) for o in outputs)
    gamma, beta, unembed = weights.gamma, weights.beta, weights.unembed
    x = resid[-1]  # (C,): the stream the final LayerNorm reads
    sigma = np.sqrt(x.var() + arch.layer_norm_eps)
    if target is None:
        target = int(np.argmax(unembed @ ((x - x.mean()) / sigma * gamma + beta).astype(np.float32)))
    direction = gamma / sigma * unembed[target].astype(np.float64)  # (C,): what one unit of each channel adds

    def through(parts: np.ndarray) -> np.ndarray:
        """(..., C) parts of the stream -> their contributions to the logit, (...)."""
        return (parts - parts.mean(axis=-1, keepdims=True)) @ direction

    steering = None if edits.steering is None else edits.steering.astype(np.float64)
    embeddings = resid[0] - (steering[0] if steering is not None else 0.0)
    # Head h of layer l writes z[l, h] @ W_O[l][:, h's slice].T into the stream.
    per_head = np.einsum("lhd,lchd->lhc", z, weights.w_o)  # (L, nh, C)
    final_bias = float(beta @ unembed[target])
    return Attribution(
        row,
        p,
        target,
        logit=float(through(x) + final_bias),
        embeddings=float(through(embeddings)),
        heads=through(per_head),
        attention_biases=through(weights.b_o),
        mlps=through(mlp_out),
        steering=None if steering is None else through(steering),
        final_bias=final_bias,
    )

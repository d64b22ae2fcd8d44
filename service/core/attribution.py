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
    return [
        _attribute(model, row, target, len(row.ids) - 1 if position is None else position, out, edits)
        for row, out in zip(rows, outputs, strict=True)
    ]


def _attribute(
    model: ModelInstance, row: Row, target: int | None, p: int, outputs: tuple, edits: Interventions
) -> Attribution:
    bundle, arch = model.bundle, model.bundle.arch
    resid, _, mlp_out, z = (o.astype(np.float64) for o in outputs)
    gamma, beta = (bundle.weight(f"ln_f.{n}").astype(np.float64) for n in ("weight", "bias"))
    unembed = bundle.weight("tok_emb.weight" if arch.tied_head else "lm_head.weight")  # (V, C)
    x = resid[-1, p]  # (C,): the stream the final LayerNorm reads
    sigma = np.sqrt(x.var() + arch.layer_norm_eps)
    if target is None:
        target = int(np.argmax(unembed @ ((x - x.mean()) / sigma * gamma + beta).astype(np.float32)))
    direction = gamma / sigma * unembed[target].astype(np.float64)  # (C,): what one unit of each channel adds

    def through(parts: np.ndarray) -> np.ndarray:
        """(..., C) parts of the stream -> their contributions to the logit, (...)."""
        return (parts - parts.mean(axis=-1, keepdims=True)) @ direction

    steering = None if edits.steering is None else edits.steering.astype(np.float64)
    embeddings = resid[0, p] - (steering[0] if steering is not None else 0.0)
    w_o = np.stack([bundle.weight(f"blocks.{layer}.attn.w_o.weight") for layer in range(arch.n_layer)])  # (L, C, C)
    heads_z = z[:, p]  # (L, nh, hs)
    # Head h of layer l writes z[l, h] @ W_O[l][:, h's slice].T into the stream.
    per_head = np.einsum("lhd,lchd->lhc", heads_z, w_o.reshape(arch.n_layer, arch.d_model, arch.n_head, arch.d_head))
    biases = np.stack([bundle.weight(f"blocks.{layer}.attn.w_o.bias") for layer in range(arch.n_layer)])
    final_bias = float(beta @ unembed[target])
    return Attribution(
        row,
        p,
        target,
        logit=float(through(x) + final_bias),
        embeddings=float(through(embeddings)),
        heads=through(per_head),
        attention_biases=through(biases.astype(np.float64)),
        mlps=through(mlp_out[:, p]),
        steering=None if steering is None else through(steering),
        final_bias=final_bias,
    )

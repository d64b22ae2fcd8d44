"""Steering by activation addition: vectors added to the residual stream before a block.

A steering vector comes as numbers, or from two texts: the mean over positions of the residual
stream before block `layer` (resid_pre) on the `add` text, minus the same mean on the `subtract`
text (or zero without one). The mean, not the last position, so that texts of different lengths
give a vector of the same scale, and a text's first tokens count as much as its last. Every entry
is scaled by its `scale` and the entries are summed per layer into one (L, C) array per request,
which the graphs add at every position (bundlespec: the steering input).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.core.errors import InputError
from service.core.inputs import NONE, Interventions, ablation_mask, rows
from service.core.instance import ModelInstance
from service.core.runner import Job

# Entries one request may steer with: each from texts costs an activations run.
MAX_STEER_ENTRIES = 16


@dataclass(frozen=True)
class SteerSpec:
    """One entry of a request's `steer`: a vector, or the texts to derive it from."""

    layer: int
    vector: Sequence[float] | None = None
    add: str | None = None
    subtract: str | None = None
    scale: float = 1.0


async def text_vector(model: ModelInstance, layer: int, add: str, subtract: str | None) -> np.ndarray:
    """mean resid_pre[layer](add) - mean resid_pre[layer](subtract), (C,) float32: see the module's doc."""
    check_layer(model, layer, "layer")
    texts = [add] if subtract is None else [add, subtract]
    encoded = await model.encode_async(texts)
    for what, ids in zip(("add", "subtract"), encoded, strict=False):
        if not ids:
            raise InputError(f"the {what} text has no tokens", what)
    streams = await model.submit("activations", [Job(r.ids) for r in rows(model, encoded)])
    means = [resid[layer].mean(axis=0, dtype=np.float64) for resid, *_ in streams]  # (C,) each
    return (means[0] - (means[1] if subtract is not None else 0.0)).astype(np.float32)


async def steering(model: ModelInstance, specs: Sequence[SteerSpec] | None, what: str = "steer") -> np.ndarray | None:
    """A request's steer entries summed into one (L, C) float32 array; None when there are none."""
    if not specs:
        return None
    arch = model.bundle.arch
    if len(specs) > MAX_STEER_ENTRIES:
        raise InputError(f"{what} has {len(specs)} entries; at most {MAX_STEER_ENTRIES} are taken", what)
    total = np.zeros((arch.n_layer, arch.d_model), dtype=np.float32)
    for i, spec in enumerate(specs):
        where = f"{what}[{i}]"
        check_layer(model, spec.layer, where)
        if not math.isfinite(spec.scale):
            raise InputError(f"{where}: scale must be a finite number", what)
        if (spec.vector is None) == (spec.add is None):
            raise InputError(f"{where}: give either a vector or the texts to add (and subtract)", what)
        if spec.vector is not None:
            vector = np.asarray(spec.vector, dtype=np.float32)
            if vector.shape != (arch.d_model,):
                raise InputError(
                    f"{where}: the vector has {vector.size} numbers; the model's width is {arch.d_model}", what
                )
            if not np.isfinite(vector).all():
                raise InputError(f"{where}: the vector holds a number that is not finite", what)
        else:
            assert spec.add is not None
            vector = await text_vector(model, spec.layer, spec.add, spec.subtract)
        total[spec.layer] += np.float32(spec.scale) * vector
    return total


def check_layer(model: ModelInstance, layer: int, where: str) -> None:
    n = model.bundle.arch.n_layer
    if not 0 <= layer < n:
        raise InputError(f"{where}: layer {layer} does not exist; the model has {n} layers (0..{n - 1})", "steer")


async def interventions(
    model: ModelInstance, ablate: Sequence[Sequence[int]] | None, steer: Sequence[SteerSpec] | None
) -> Interventions:
    """A request's ablated heads and steering vectors, checked, as the graphs take them."""
    head_mask = ablation_mask(model.bundle.arch, ablate)
    vectors = await steering(model, steer)
    return NONE if head_mask is None and vectors is None else Interventions(head_mask, vectors)

"""The input rules every protocol follows: what a row is, how texts and token ids become rows, and
which layers, heads and ablations a model has. Each raises InputError naming what was wrong."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bundlespec.manifest import Architecture
from service.core.errors import InputError
from service.core.instance import ModelInstance
from service.core.runner import Job


@dataclass(frozen=True)
class Row:
    ids: np.ndarray  # (n,) int64
    truncated: bool


@dataclass(frozen=True)
class Interventions:
    """What a request changes in the model, per row of every graph it runs (see runner.Job)."""

    head_mask: np.ndarray | None = None  # (L, nh) float32: 0 where a head is ablated
    steering: np.ndarray | None = None  # (L, C) float32: added before each block, at every position

    def job(self, ids: np.ndarray, maps: tuple[int, ...] | None = None) -> Job:
        return Job(ids, self.head_mask, self.steering, maps)


NONE = Interventions()


def check_ids(model: ModelInstance, encoded: Sequence[Sequence[int]], what: str = "token_ids") -> None:
    vocab = model.bundle.vocab_size
    for i, ids in enumerate(encoded):
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise InputError(f"{what}[{i}] has ids outside the vocabulary [0, {vocab}): {bad[:5]}")


async def input_rows(
    model: ModelInstance,
    texts: Sequence[str] | None,
    token_ids: Sequence[Sequence[int]] | None,
    truncate: bool = False,
    what: str = "token_ids",
) -> list[Row]:
    """Texts are tokenized, token ids checked against the vocabulary, and either way the count and
    lengths are checked (rows())."""
    if (texts is None) == (token_ids is None):
        raise InputError("give exactly one of texts or token ids")
    if texts is not None:
        encoded = await model.encode_async(texts)
    else:
        assert token_ids is not None
        encoded = [list(ids) for ids in token_ids]
        check_ids(model, encoded, what)
    if not encoded:
        raise InputError("the request has no inputs")
    if any(len(ids) == 0 for ids in encoded):
        raise InputError("every input needs at least one token")
    return rows(model, encoded, truncate)


def rows(model: ModelInstance, encoded: Sequence[Sequence[int]], truncate: bool = False) -> list[Row]:
    """Check the inputs' count and lengths."""
    limit = model.config.max_texts_per_request
    if len(encoded) > limit:
        raise InputError(f"{len(encoded)} inputs in one request; the limit is {limit}")
    context = model.bundle.context_length
    out = []
    for i, ids in enumerate(encoded):
        if len(ids) > context and not truncate:
            raise InputError(
                f"input {i} has {len(ids)} tokens, more than the context of {context}; "
                'shorten it or send "truncate": true to keep the last tokens'
            )
        out.append(Row(np.asarray(ids[-context:], dtype=np.int64), truncated=len(ids) > context))
    return out


def ablation_mask(
    arch: Architecture, ablate: Sequence[Sequence[int]] | None, what: str = "ablate"
) -> np.ndarray | None:
    """(L, nh) float32 with 0 at each [layer, head] to ablate; None when none is (every head on)."""
    if not ablate:
        return None
    mask = np.ones((arch.n_layer, arch.n_head), dtype=np.float32)
    for i, pair in enumerate(ablate):
        if len(pair) != 2:
            raise InputError(f"{what}[{i}] must be [layer, head], not {list(pair)}", what)
        layer, head = pair
        if not 0 <= layer < arch.n_layer:
            raise InputError(f"{what}[{i}]: layer {layer} does not exist; the model has {arch.n_layer} layers "
                             f"(0..{arch.n_layer - 1})", what)  # fmt: skip
        if not 0 <= head < arch.n_head:
            raise InputError(f"{what}[{i}]: head {head} does not exist; the model has {arch.n_head} heads "
                             f"(0..{arch.n_head - 1})", what)  # fmt: skip
        mask[layer, head] = 0.0
    return mask


def layer_head_indices(
    arch: Architecture, layers: list[int] | None, heads: list[int] | None
) -> tuple[list[int], list[int]]:
    """The asked layer and head indices, checked (every one when None)."""
    return _indices(layers, arch.n_layer, "layer"), _indices(heads, arch.n_head, "head")


def _indices(asked: list[int] | None, count: int, what: str) -> list[int]:
    if asked is None:
        return list(range(count))
    bad = [i for i in asked if not 0 <= i < count]
    if bad:
        raise InputError(f"unknown {what} indices {bad}; the model has {count} {what}s (0..{count - 1})")
    return list(asked)

"""Every graph of a bundle, by name: its file, inputs, outputs, axes, row slicing and parity tolerance.

Axis names that appear in DYNAMIC vary per call; the others are fixed by the model's dimensions
(vocab, layers, heads, d_head) or are literal sizes. Batches are right padded; attention_mask and
past_mask are 1 for real tokens and 0 for padding.

One-shot graphs (one call answers a request), each also taking two per-row interventions, so that
rows with and without them share a batch: head_mask [batch, layers, heads], 1 keeps a head and 0
ablates it (its attention-weighted sum of values is zeroed before W_O); steering [batch, layers,
d_model], added to the residual stream before each block at every position (zero: no steering):
    next_token   input_ids, attention_mask [batch, seq] -> next_token_logprobs [batch, vocab]
                 log-probabilities after each row's last real token
    attention    and maps [maps] (int64, layer * heads + head, ascending, distinct: the maps to
                 return, the same for every row) -> attention_weights [batch, maps, seq, seq]
                 softmax weights, zero above the diagonal and on padded keys. Every map is computed
                 (each layer's output needs all its heads), but a layer's maps are dropped as soon
                 as its heads are picked: the graph's memory is one layer's maps plus the answer
    score        -> token_logprobs [batch, seq-1]: log p(token t+1 | tokens <= t), plus the
                 TOP_LOGPROBS most likely tokens at each position (top_logprobs, top_token_ids)
    logit_lens   -> lens_top_logprobs, lens_top_ids [batch, layers+1, seq, LENS_TOP]: the residual
                 stream after the embeddings (0) and after each block, through the final LayerNorm
                 and the tied unembedding, as log-probabilities; the LENS_TOP most likely tokens at
                 every layer and position (the last layer's is the model's own next-token answer)
    activations  -> resid [batch, layers+1, seq, d_model] (the residual stream before each block,
                 steering included, then after the last one, before the final LayerNorm);
                 attn_out, mlp_out [batch, layers, seq, d_model] (each attention layer's output,
                 W_O's bias included, and each MLP's); z [batch, layers, seq, heads, d_head] (each
                 head's attention-weighted sum of values, as W_O reads it: zero where ablated)
Activation patching's graph, batched like the one-shot graphs but fed residual streams, not tokens:
    resume       stream [batch, seq, d_model], attention_mask [batch, seq], entry [batch] ->
                 next_token_logprobs [batch, vocab]: each row run on from its entry point in the
                 residual stream (2l: before block l; 2l+1: after block l's attention output is
                 added; 2 * layers: after the last block), with stream the residual stream there.
                 Rows compute only the blocks above their entry point.
Generation graphs (a KV cache carried between calls; both take head_mask and steering as well, so
that a generation can run with heads ablated or steered, beside plain rows):
    prefill      input_ids, attention_mask [batch, seq] -> next_token_logprobs [batch, vocab],
                 keys, values [batch, layers, heads, seq, d_head] (every prompt position),
                 last_attention [batch, layers, heads, seq] (the last real token's weights)
    decode       input_ids [batch, 1], positions [batch] (each row's length so far: where its new
                 token goes), head_mask, steering, and for each layer l key_cache_l, value_cache_l [batch,
                 heads, capacity, d_head]: the caller's cache storage, positions < positions[row]
                 filled, the rest ignored
                 -> next_token_logprobs [batch, vocab]; present_key_l, present_value_l (the caches
                 with the new token's keys and values written at positions: bound to the inputs'
                 own buffers they are written in place, so nothing is copied); step_attention_l
                 [batch, heads, capacity] (the new token's weights over positions 0..positions[row],
                 itself last, zero after). One tensor per layer, not one stacked tensor, so that
                 each layer reads and writes its storage directly: slicing a layer out of a stacked
                 input would copy it.
Two helper graphs, the same in every bundle and without weights, for the KV cache storage of the
service (service/core/kvcache.py): bound to places in it (or to a host array), they copy on the
device the model runs on, which ONNX Runtime's Python API offers no other way to do.
    copy         source [size] -> target [size], unchanged
    resize_cache cache [batch, heads, capacity, d_head], new_capacity [1] -> resized [batch, heads,
                 new_capacity, d_head]: positions cut, or padded with zeros
Names that end in "_l" (TensorSpec.per_layer) stand for one tensor per layer: name_0 .. name_{L-1}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BATCH, SEQ, SEQ_MINUS_1, CAPACITY, SIZE, MAPS = "batch", "seq", "seq_minus_1", "capacity", "size", "maps"
DYNAMIC = frozenset({BATCH, SEQ, SEQ_MINUS_1, CAPACITY, SIZE, MAPS, "new_capacity"})
# How many alternatives the score graph returns per position (OpenAI's echo with logprobs).
TOP_LOGPROBS = 20
# How many tokens the logit lens returns per layer and position (its top_k's ceiling).
LENS_TOP = 20


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "int64" or "float32"
    axes: tuple[str | int, ...]
    per_layer: bool = False  # one tensor per layer, named name_0 .. name_{L-1}

    def expand(self, n_layer: int) -> tuple[TensorSpec, ...]:
        if not self.per_layer:
            return (self,)
        return tuple(TensorSpec(f"{self.name}_{i}", self.dtype, self.axes) for i in range(n_layer))

    def dynamic_axes(self) -> dict[int, str]:
        return {i: a for i, a in enumerate(self.axes) if isinstance(a, str) and a in DYNAMIC}


# A row's share of a one-shot graph's outputs: (outputs, row index, real length) -> that row's arrays.
RowSlice = Callable[[list[Any], int, int], Any]


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tolerance: float  # largest absolute difference from PyTorch accepted at export
    take_row: RowSlice | None = None  # one-shot graphs only
    min_length: int = 1  # shortest row the graph answers for (score needs two tokens)
    file: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "file", f"{self.name}.onnx")

    def tensors(self, n_layer: int) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Inputs and outputs with per-layer tensors spelled out for a model of n_layer layers."""
        return tuple(e for t in self.inputs for e in t.expand(n_layer)), tuple(
            e for t in self.outputs for e in t.expand(n_layer)
        )

    def input_names(self, n_layer: int) -> list[str]:
        return [t.name for t in self.tensors(n_layer)[0]]

    def output_names(self, n_layer: int) -> list[str]:
        return [t.name for t in self.tensors(n_layer)[1]]


def _i64(name: str, *axes: str | int) -> TensorSpec:
    return TensorSpec(name, "int64", axes)


def _f32(name: str, *axes: str | int) -> TensorSpec:
    return TensorSpec(name, "float32", axes)


def _f32_layers(name: str, *axes: str | int) -> TensorSpec:
    return TensorSpec(name, "float32", axes, per_layer=True)


PROMPT_INPUTS = (_i64("input_ids", BATCH, SEQ), _i64("attention_mask", BATCH, SEQ))
HEAD_MASK, STEERING = "head_mask", "steering"
INTERVENTIONS = (_f32(HEAD_MASK, BATCH, "layers", "heads"), _f32(STEERING, BATCH, "layers", "d_model"))
INTERVENABLE = (*PROMPT_INPUTS, *INTERVENTIONS)
CACHE_AXES = (BATCH, "layers", "heads", SEQ, "d_head")
SLOT_AXES = (BATCH, "heads", CAPACITY, "d_head")

GRAPHS: dict[str, GraphSpec] = {
    g.name: g
    for g in (
        GraphSpec(
            "next_token",
            INTERVENABLE,
            (_f32("next_token_logprobs", BATCH, "vocab"),),
            tolerance=1e-4,
            take_row=lambda out, i, n: out[0][i],  # (V,)
        ),
        GraphSpec(
            "attention",
            (*INTERVENABLE, _i64(MAPS, MAPS)),
            (_f32("attention_weights", BATCH, MAPS, SEQ, SEQ),),
            tolerance=1e-5,
            take_row=lambda out, i, n: out[0][i, :, :n, :n],  # (maps, n, n)
        ),
        GraphSpec(
            "score",
            INTERVENABLE,
            (
                _f32("token_logprobs", BATCH, SEQ_MINUS_1),
                _f32("top_logprobs", BATCH, SEQ_MINUS_1, TOP_LOGPROBS),
                _i64("top_token_ids", BATCH, SEQ_MINUS_1, TOP_LOGPROBS),
            ),
            tolerance=1e-4,
            take_row=lambda out, i, n: tuple(o[i, : n - 1] for o in out),  # (n-1,), (n-1, K), (n-1, K)
            min_length=2,
        ),
        GraphSpec(
            "logit_lens",
            INTERVENABLE,
            (
                _f32("lens_top_logprobs", BATCH, "layers_plus_1", SEQ, LENS_TOP),
                _i64("lens_top_ids", BATCH, "layers_plus_1", SEQ, LENS_TOP),
            ),
            tolerance=1e-4,
            take_row=lambda out, i, n: (out[0][i, :, :n], out[1][i, :, :n]),  # (L+1, n, K) each
        ),
        GraphSpec(
            "activations",
            INTERVENABLE,
            (
                _f32("resid", BATCH, "layers_plus_1", SEQ, "d_model"),
                _f32("attn_out", BATCH, "layers", SEQ, "d_model"),
                _f32("mlp_out", BATCH, "layers", SEQ, "d_model"),
                _f32("z", BATCH, "layers", SEQ, "heads", "d_head"),
            ),
            tolerance=1e-4,
            take_row=lambda out, i, n: tuple(o[i, :, :n] for o in out),  # (L+1 or L, n, ...) each
        ),
        GraphSpec(
            "resume",
            (_f32("stream", BATCH, SEQ, "d_model"), _i64("attention_mask", BATCH, SEQ), _i64("entry", BATCH)),
            (_f32("next_token_logprobs", BATCH, "vocab"),),
            tolerance=1e-4,
        ),
        GraphSpec(
            "prefill",
            INTERVENABLE,
            (
                _f32("next_token_logprobs", BATCH, "vocab"),
                _f32("keys", *CACHE_AXES),
                _f32("values", *CACHE_AXES),
                _f32("last_attention", BATCH, "layers", "heads", SEQ),
            ),
            tolerance=1e-4,
        ),
        GraphSpec(
            "decode",
            (
                _i64("input_ids", BATCH, 1),
                _i64("positions", BATCH),
                *INTERVENTIONS,
                _f32_layers("key_cache", *SLOT_AXES),
                _f32_layers("value_cache", *SLOT_AXES),
            ),
            (
                _f32("next_token_logprobs", BATCH, "vocab"),
                _f32_layers("present_key", *SLOT_AXES),
                _f32_layers("present_value", *SLOT_AXES),
                _f32_layers("step_attention", BATCH, "heads", CAPACITY),
            ),
            tolerance=1e-4,
        ),
        GraphSpec("copy", (_f32("source", SIZE),), (_f32("target", SIZE),), tolerance=0.0),
        GraphSpec(
            "resize_cache",
            (_f32("cache", *SLOT_AXES), _i64("new_capacity", 1)),
            (_f32("resized", BATCH, "heads", "new_capacity", "d_head"),),
            tolerance=0.0,
        ),
    )
}
# The graphs that answer a request in one call, each behind its own dynamic batcher.
ONE_SHOT = tuple(name for name, g in GRAPHS.items() if g.take_row is not None)

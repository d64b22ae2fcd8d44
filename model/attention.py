"""The causal self-attention layer: softmax(QK^T / sqrt(d_k)) over several heads, as the lectures
explain it, with the single-token step that generation runs against a KV cache.

Shapes: B = batch, T = sequence length, C = d_model, nh = heads, hs = C // nh (d_k).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bundlespec.manifest import Architecture


def at_positions(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, T, C) at one position per row, index (B,): (B, 1, C)."""
    return x.gather(1, index.view(-1, 1, 1).expand(-1, 1, x.size(-1)))


class Attended(NamedTuple):
    """What one attention layer gives back."""

    out: torch.Tensor  # (B, Tq, C)
    weights: torch.Tensor | None  # (B, nh, Tq, T) when asked for
    k: torch.Tensor  # (B, nh, T, hs): every position's keys (prefill fills the KV cache with them)
    v: torch.Tensor  # (B, nh, T, hs)
    z: torch.Tensor  # (B, nh, Tq, hs): each head's attention-weighted sum of values, as W_O reads it


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: Architecture) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.d_head = cfg.d_head
        self.w_q = nn.Linear(cfg.d_model, cfg.d_model)
        self.w_k = nn.Linear(cfg.d_model, cfg.d_model)
        self.w_v = nn.Linear(cfg.d_model, cfg.d_model)
        self.w_o = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.dropout = cfg.dropout

    def forward(
        self,
        x: torch.Tensor,
        allowed: torch.Tensor | None,
        need_weights: bool,
        query_index: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
    ) -> Attended:
        """x: (B, T, C); allowed: (B, 1, Tq, T) bool, True where query may attend to key.

        head_mask (B, nh) scales each head's output (its attention-weighted sum of values) before
        W_O: 0 ablates the head, 1 leaves it. Its own attention weights do not change.

        allowed=None means plain causal attention over a batch with no padding. query_index (B,)
        asks for one query per row, at that position (Tq = 1): keys and values still come from
        every position.
        """
        B, T, C = x.shape
        x_q = x if query_index is None else at_positions(x, query_index)  # (B, Tq, C)
        Tq = x_q.size(1)
        q = self.w_q(x_q).view(B, Tq, self.n_head, self.d_head).transpose(1, 2)  # (B, nh, Tq, hs)
        k = self.w_k(x).view(B, T, self.n_head, self.d_head).transpose(1, 2)  # (B, nh, T, hs)
        v = self.w_v(x).view(B, T, self.n_head, self.d_head).transpose(1, 2)  # (B, nh, T, hs)

        if need_weights:
            # The shipped path: softmax(Q K^T / sqrt(d_k)) with the mask applied before softmax,
            # so masked keys get exactly zero weight.
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)  # (B, nh, Tq, T)
            if allowed is None:
                allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            scores = scores.masked_fill(~allowed, float("-inf"))
            weights = torch.softmax(scores, dim=-1)  # (B, nh, Tq, T)
            y = self.attn_dropout(weights) @ v  # (B, nh, Tq, hs)
        else:
            # Same math through the fused kernel; used for training, where weights are not read.
            weights = None
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=allowed,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=allowed is None,
            )
        if head_mask is not None:
            y = y * head_mask[:, :, None, None]  # (B, nh, Tq, hs)
        z = y
        y = y.transpose(1, 2).contiguous().view(B, Tq, C)  # (B, Tq, C): heads side by side
        return Attended(self.resid_dropout(self.w_o(y)), weights, k, v, z)

    def step(
        self,
        x: torch.Tensor,
        write_at: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        visible: torch.Tensor,
        head_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One new token per row against a fixed-size cache that it writes into.

        x (B, 1, C); write_at (B, nh, 3): the (row, head, position) of each of the new token's key
        and value vectors (see AttentionLM.decode); key_cache, value_cache (B, nh, S, hs) for S cache
        positions; visible (B, 1, 1, S), True at positions 0..position (itself last). Returns the
        output (B, 1, C), the weights (B, nh, 1, S), and the caches with the new token written in.
        """
        shape = (-1, 1, self.n_head, self.d_head)  # -1, not B: a constant shape in the exported graph
        q, k, v = (w(x).view(shape).transpose(1, 2) for w in (self.w_q, self.w_k, self.w_v))  # (B, nh, 1, hs)
        key_cache = ScatterRows.apply(key_cache, write_at, k[:, :, 0])
        value_cache = ScatterRows.apply(value_cache, write_at, v[:, :, 0])
        scores = (q @ key_cache.transpose(-2, -1)) / math.sqrt(self.d_head)  # (B, nh, 1, S)
        weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        y = weights @ value_cache  # (B, nh, 1, hs)
        if head_mask is not None:
            y = y * head_mask[:, :, None, None]
        y = y.transpose(1, 2).reshape(-1, 1, self.n_head * self.d_head)  # (B, 1, C)
        return self.w_o(y), weights, key_cache, value_cache


class ScatterRows(torch.autograd.Function):
    """cache[index[..., 0], index[..., 1], index[..., 2]] = updates, as one ONNX ScatterND.

    ONNX Runtime runs a ScatterND in place when its output is bound to its input's buffer, which
    is how the service's decode step writes into its cache storage without copying it. Exported
    through index_put instead, every layer would rebuild the same indices in some thirty small
    nodes, which cost more than the step's arithmetic for one row.
    """

    @staticmethod
    def forward(ctx, cache: torch.Tensor, index: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return cache.index_put(tuple(index.unbind(-1)), updates)

    @staticmethod
    def symbolic(g, cache, index, updates):  # noqa: ANN001, ANN205 (torch.onnx's graph builder)
        return g.op("ScatterND", cache, index, updates)

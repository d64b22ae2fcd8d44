"""A decoder-only transformer written the way the self-attention lectures explain it.

Shapes: B = batch, T = sequence length, C = d_model, nh = heads, hs = C // nh (d_k), L = layers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig


def sinusoidal_positions(n_positions: int, d_model: int) -> torch.Tensor:
    """Fixed sine/cosine encodings, (n_positions, d_model).

    Dimension pair (2i, 2i+1) oscillates with wavelength 2*pi*10000^(2i/d_model), so every
    position gets a distinct code and nearby positions get similar ones.
    """
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (P, 1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(n_positions, d_model)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq[: d_model // 2])
    return pe


class Attended(NamedTuple):
    """What one attention layer gives back."""

    out: torch.Tensor  # (B, Tq, C)
    weights: torch.Tensor | None  # (B, nh, Tq, P + T) when asked for
    k: torch.Tensor  # (B, nh, T, hs): the keys of this call's own positions (for a KV cache)
    v: torch.Tensor  # (B, nh, T, hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
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
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        head_mask: torch.Tensor | None = None,
    ) -> Attended:
        """x: (B, T, C); allowed: (B, 1, Tq, P + T) bool, True where query may attend to key.

        head_mask (B, nh) scales each head's output (its attention-weighted sum of values) before
        W_O: 0 ablates the head, 1 leaves it. Its own attention weights do not change.

        allowed=None means plain causal attention over a batch with no padding. query_index (B,)
        asks for one query per row, at that position (Tq = 1): keys and values still come from
        every position. past holds keys and values (B, nh, P, hs) of earlier positions (a KV
        cache); x's own keys and values come after them.
        """
        B, T, C = x.shape
        x_q = x if query_index is None else x.gather(1, query_index.view(B, 1, 1).expand(B, 1, C))  # (B, Tq, C)
        Tq = x_q.size(1)
        q = self.w_q(x_q).view(B, Tq, self.n_head, self.d_head).transpose(1, 2)  # (B, nh, Tq, hs)
        k_own = self.w_k(x).view(B, T, self.n_head, self.d_head).transpose(1, 2)  # (B, nh, T, hs)
        v_own = self.w_v(x).view(B, T, self.n_head, self.d_head).transpose(1, 2)  # (B, nh, T, hs)
        k, v = (k_own, v_own) if past is None else (torch.cat([past[0], k_own], 2), torch.cat([past[1], v_own], 2))

        if need_weights:
            # The shipped path: softmax(Q K^T / sqrt(d_k)) with the mask applied before softmax,
            # so masked keys get exactly zero weight.
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)  # (B, nh, Tq, P + T)
            if allowed is None:
                allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            scores = scores.masked_fill(~allowed, float("-inf"))
            weights = torch.softmax(scores, dim=-1)  # (B, nh, Tq, P + T)
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
        y = y.transpose(1, 2).contiguous().view(B, Tq, C)  # (B, Tq, C): heads side by side
        return Attended(self.resid_dropout(self.w_o(y)), weights, k_own, v_own)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.down = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-LayerNorm block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_mlp = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        allowed: torch.Tensor | None,
        need_weights: bool,
        query_index: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        head_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Attended]:
        attended = self.attn(self.ln_attn(x), allowed, need_weights, query_index, past, head_mask)
        if query_index is not None:
            x = x.gather(1, query_index.view(-1, 1, 1).expand(-1, 1, x.size(-1)))  # (B, 1, C)
        x = x + attended.out
        x = x + self.mlp(self.ln_mlp(x))
        return x, attended


class AttentionLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.register_buffer("pos_enc", sinusoidal_positions(cfg.context_length, cfg.d_model), persistent=False)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        # Scaling the embeddings by sqrt(C) puts tokens and positional codes on the same scale.
        self.emb_scale = math.sqrt(cfg.d_model)
        self.apply(self._init_weights)
        # Residual projections start small so the residual stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith(("w_o.weight", "down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        head_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """input_ids, attention_mask: (B, T), right padded; mask 1 for real tokens; head_mask
        (B, L, nh): 0 ablates a head (see CausalSelfAttention).

        Returns the final normalised hidden states (B, T, C) and, if asked, one (B, nh, T, T)
        attention tensor per layer.
        """
        stream, weights = self.residual_stream(input_ids, attention_mask, need_weights, head_mask)
        return self.ln_f(stream[-1]), weights

    def residual_stream(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        head_mask: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The residual stream (B, T, C) after the embeddings and after each block: L + 1 tensors,
        before the final LayerNorm (the logit lens reads each through it), and the weights if asked."""
        B, T = input_ids.shape
        x = self.tok_emb(input_ids) * self.emb_scale + self.pos_enc[:T]  # (B, T, C)
        x = self.emb_dropout(x)
        allowed = None
        if attention_mask is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()  # (T, T)
            allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]  # (B, 1, T, T)
        weights = []
        stream = [x]
        for i, block in enumerate(self.blocks):
            x, attended = block(x, allowed, need_weights, head_mask=None if head_mask is None else head_mask[:, i])
            stream.append(x)
            if attended.weights is not None:
                weights.append(attended.weights)
        return stream, weights

    def last_hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, head_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The final hidden state at each row's last real token, (B, C).

        Same result as hidden_states()[b, last[b]], for less work: the last block needs every
        position's keys and values but only the last position's query, attention output and MLP.
        """
        return self.prefill(input_ids, attention_mask, need_weights=False, head_mask=head_mask)[0]

    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        need_weights: bool = True,
        head_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Start generation from a right-padded prompt batch (B, T).

        Returns the last real token's hidden state (B, C), every layer's keys and values
        (B, L, nh, T, hs) for the KV cache, and (if asked) the last real token's attention
        weights (B, L, nh, T).
        """
        B, T = input_ids.shape
        x = self.tok_emb(input_ids) * self.emb_scale + self.pos_enc[:T]  # (B, T, C)
        key_ok = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()  # (T, T)
        last = attention_mask.sum(dim=1) - 1  # (B,): right padding, so every real key precedes it
        keys, values, weights = [], [], []
        for i, block in enumerate(self.blocks):
            final = i == len(self.blocks) - 1
            allowed = key_ok if final else causal[None, None] & key_ok
            x, attended = block(
                x,
                allowed,
                need_weights,
                query_index=last if final else None,
                head_mask=None if head_mask is None else head_mask[:, i],
            )
            keys.append(attended.k)
            values.append(attended.v)
            if attended.weights is not None:
                w = attended.weights  # (B, nh, T or 1, T)
                weights.append(w[:, :, 0] if final else w[torch.arange(B), :, last])  # (B, nh, T)
        h_last = self.ln_f(x[:, 0])  # (B, C)
        stacked = torch.stack(weights, dim=1) if need_weights else None  # (B, L, nh, T)
        return h_last, torch.stack(keys, dim=1), torch.stack(values, dim=1), stacked

    def decode(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
        past_mask: torch.Tensor,
        head_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One generation step: a new token per row, attending to its cached past (head_mask as in
        hidden_states: 0 ablates a head).

        input_ids (B, 1); positions (B,) the new token's position (the row's length so far);
        past_keys, past_values (B, L, nh, P, hs); past_mask (B, P), 1 where a cache slot is real.
        Returns the new hidden state (B, C), the new keys and values (B, L, nh, 1, hs) to append to
        the cache, and the new token's attention weights (B, L, nh, P + 1): past slots, then itself.
        """
        x = self.tok_emb(input_ids) * self.emb_scale + self.pos_enc[positions][:, None]  # (B, 1, C)
        own = torch.ones_like(past_mask[:, :1])  # (B, 1): a token always sees itself
        allowed = torch.cat([past_mask, own], dim=1).bool()[:, None, None, :]  # (B, 1, 1, P + 1)
        keys, values, weights = [], [], []
        for i, block in enumerate(self.blocks):
            x, attended = block(
                x,
                allowed,
                need_weights=True,
                past=(past_keys[:, i], past_values[:, i]),
                head_mask=None if head_mask is None else head_mask[:, i],
            )
            keys.append(attended.k)
            values.append(attended.v)
            weights.append(attended.weights[:, :, 0])  # (B, nh, P + 1)
        return self.ln_f(x[:, 0]), torch.stack(keys, 1), torch.stack(values, 1), torch.stack(weights, 1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output layer tied to the token embedding: (..., C) -> (..., vocab)."""
        return hidden @ self.tok_emb.weight.T

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None):
        """Training entry point: logits (B, T, V) and, with targets, the mean cross-entropy."""
        hidden, _ = self.hidden_states(input_ids)
        logits = self.logits(hidden)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

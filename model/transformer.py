"""A decoder-only transformer written the way the self-attention lectures explain it.

Shapes: B = batch, T = sequence length, C = d_model, nh = heads, hs = C // nh (d_k), L = layers.
"""

from __future__ import annotations

import math

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
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, C); allowed: (B, 1, Tq, T) bool, True where query may attend to key.

        allowed=None means plain causal attention over a batch with no padding. query_index (B,)
        asks for one query per row, at that position (Tq = 1): keys and values still come from
        every position. Returns the output (B, Tq, C) and, if asked, the weights (B, nh, Tq, T).
        """
        B, T, C = x.shape
        x_q = x if query_index is None else x.gather(1, query_index.view(B, 1, 1).expand(B, 1, C))  # (B, Tq, C)
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
        y = y.transpose(1, 2).contiguous().view(B, Tq, C)  # (B, Tq, C): heads side by side
        return self.resid_dropout(self.w_o(y)), weights


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
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, weights = self.attn(self.ln_attn(x), allowed, need_weights, query_index)
        if query_index is not None:
            x = x.gather(1, query_index.view(-1, 1, 1).expand(-1, 1, x.size(-1)))  # (B, 1, C)
        x = x + a
        x = x + self.mlp(self.ln_mlp(x))
        return x, weights


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
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """input_ids, attention_mask: (B, T), right padded; mask 1 for real tokens.

        Returns the final normalised hidden states (B, T, C) and, if asked, one (B, nh, T, T)
        attention tensor per layer.
        """
        B, T = input_ids.shape
        x = self.tok_emb(input_ids) * self.emb_scale + self.pos_enc[:T]  # (B, T, C)
        x = self.emb_dropout(x)
        allowed = None
        if attention_mask is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()  # (T, T)
            allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]  # (B, 1, T, T)
        weights = []
        for block in self.blocks:
            x, w = block(x, allowed, need_weights)
            if w is not None:
                weights.append(w)
        return self.ln_f(x), weights

    def last_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The final hidden state at each row's last real token, (B, C).

        Same result as hidden_states()[b, last[b]], for less work: the last block needs every
        position's keys and values but only the last position's query, attention output and MLP.
        """
        B, T = input_ids.shape
        x = self.tok_emb(input_ids) * self.emb_scale + self.pos_enc[:T]  # (B, T, C)
        key_ok = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()  # (T, T)
        for block in self.blocks[:-1]:
            x, _ = block(x, causal[None, None] & key_ok, need_weights=False)
        last = attention_mask.sum(dim=1) - 1  # (B,): right padding, so every real key precedes it
        x, _ = self.blocks[-1](x, key_ok, need_weights=False, query_index=last)  # (B, 1, C)
        return self.ln_f(x[:, 0])

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

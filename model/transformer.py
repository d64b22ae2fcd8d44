"""A decoder-only transformer written the way the self-attention lectures explain it.

Shapes: B = batch, T = sequence length, C = d_model, nh = heads, hs = C // nh (d_k), L = layers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bundlespec.manifest import Architecture
from model.attention import Attended, CausalSelfAttention, at_positions


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


class Activations(NamedTuple):
    """Every site a request can read (TransformerLens's hook names in brackets), each (B, ...)."""

    resid: torch.Tensor  # (B, L+1, T, C): before each block [resid_pre], then after the last [resid_post]
    attn_out: torch.Tensor  # (B, L, T, C): each attention layer's output, W_O's bias included [attn_out]
    mlp_out: torch.Tensor  # (B, L, T, C) [mlp_out]
    z: torch.Tensor  # (B, L, T, nh, hs): each head's attention-weighted sum of values [z]


class Run(NamedTuple):
    activations: Activations
    weights: list[torch.Tensor]  # per layer (B, nh, T, T), when asked for


class MLP(nn.Module):
    def __init__(self, cfg: Architecture) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.down = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x), approximate=self.approximate)))


class Block(nn.Module):
    """Pre-LayerNorm block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: Architecture) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_mlp = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        allowed: torch.Tensor | None,
        need_weights: bool,
        query_index: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Attended, torch.Tensor]:
        """Returns the block's output stream, what its attention gave, and its MLP's output."""
        attended = self.attn(self.ln_attn(x), allowed, need_weights, query_index, head_mask)
        if query_index is not None:
            x = at_positions(x, query_index)  # (B, 1, C)
        x = x + attended.out
        mlp_out = self.mlp(self.ln_mlp(x))
        return x + mlp_out, attended, mlp_out


class AttentionLM(nn.Module):
    def __init__(self, cfg: Architecture) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.positions == "learned":  # a GPT-2-family checkpoint's table (export/hf_import.py)
            self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model)
        else:
            self.register_buffer("pos_enc", sinusoidal_positions(cfg.context_length, cfg.d_model), persistent=False)
        if not cfg.tied_head:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        # Scaling the embeddings by sqrt(C) puts tokens and positional codes on the same scale.
        self.emb_scale = math.sqrt(cfg.d_model) if cfg.embedding_scale else 1.0
        self.apply(self._init_weights)
        # Residual projections start small so the residual stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith(("w_o.weight", "down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:  # the untied head (lm_head) has none
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token embeddings scaled by sqrt(C), plus each position's sine/cosine code: (..., C)."""
        table = self.pos_emb.weight if self.cfg.positions == "learned" else self.pos_enc
        return self.tok_emb(input_ids) * self.emb_scale + table[positions]

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        head_mask: torch.Tensor | None = None,
        steering: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """input_ids, attention_mask: (B, T), right padded; mask 1 for real tokens; head_mask
        (B, L, nh): 0 ablates a head (see CausalSelfAttention); steering (B, L, C): added to the
        residual stream before each block, at every position (activation addition).

        Returns the final normalised hidden states (B, T, C) and, if asked, one (B, nh, T, T)
        attention tensor per layer.
        """
        run = self.run_blocks(input_ids, attention_mask, need_weights, head_mask, steering)
        return self.ln_f(run.activations.resid[:, -1]), run.weights

    def run_blocks(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        head_mask: torch.Tensor | None = None,
        steering: torch.Tensor | None = None,
    ) -> Run:
        """Every position through every block, keeping what each site held (see Activations); the
        residual stream is before the final LayerNorm (the logit lens reads it through it)."""
        B, T = input_ids.shape
        x = self.emb_dropout(self.embed(input_ids, torch.arange(T, device=input_ids.device)))  # (B, T, C)
        allowed = None
        if attention_mask is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()  # (T, T)
            allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]  # (B, 1, T, T)
        resid, attn_out, mlp_out, z, weights = [], [], [], [], []
        for i, block in enumerate(self.blocks):
            if steering is not None:
                x = x + steering[:, i, None, :]
            resid.append(x)
            x, attended, mlp = block(x, allowed, need_weights, head_mask=None if head_mask is None else head_mask[:, i])
            attn_out.append(attended.out)
            mlp_out.append(mlp)
            z.append(attended.z.transpose(1, 2))  # (B, T, nh, hs)
            if attended.weights is not None:
                weights.append(attended.weights)
        resid.append(x)
        stack = lambda parts: torch.stack(parts, dim=1)  # noqa: E731
        return Run(Activations(stack(resid), stack(attn_out), stack(mlp_out), stack(z)), weights)

    def last_hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        steering: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final hidden state at each row's last real token, (B, C).

        Same result as hidden_states()[b, last[b]], for less work: the last block needs every
        position's keys and values but only the last position's query, attention output and MLP.
        """
        return self.prefill(input_ids, attention_mask, need_weights=False, head_mask=head_mask, steering=steering)[0]

    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        need_weights: bool = True,
        head_mask: torch.Tensor | None = None,
        steering: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Start generation from a right-padded prompt batch (B, T).

        Returns the last real token's hidden state (B, C), every layer's keys and values
        (B, L, nh, T, hs) for the KV cache, and (if asked) the last real token's attention
        weights (B, L, nh, T).
        """
        B, T = input_ids.shape
        x = self.embed(input_ids, torch.arange(T, device=input_ids.device))  # (B, T, C)
        key_ok = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()  # (T, T)
        last = attention_mask.sum(dim=1) - 1  # (B,): right padding, so every real key precedes it
        keys, values, weights = [], [], []
        for i, block in enumerate(self.blocks):
            final = i == len(self.blocks) - 1
            allowed = key_ok if final else causal[None, None] & key_ok
            if steering is not None:
                x = x + steering[:, i, None, :]
            x, attended, _ = block(
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

    def resume(self, stream: torch.Tensor, attention_mask: torch.Tensor, entry: torch.Tensor) -> torch.Tensor:
        """Run each row on from a point of the residual stream: what activation patching runs.

        stream (B, T, C) is each row's residual stream at its entry point, entry (B,): point 2l is
        before block l (resid_pre), 2l+1 after block l's attention (its output added), 2L after
        the last block. A row computes only what lies above its entry point: a patch at layer l
        changes nothing below it. Returns the final hidden state at each row's last real token (B, C).
        """
        L, T = len(self.blocks), stream.size(1)
        order = torch.argsort(entry)  # rows by entry point, so each stage takes a prefix of them
        stream, attention_mask = stream[order], attention_mask[order]
        entered = (entry[None, :] <= torch.arange(2 * L + 1, device=entry.device)[:, None]).sum(dim=1)  # (2L+1,)
        last = attention_mask.sum(dim=1) - 1  # (B,)
        causal = torch.ones(T, T, dtype=torch.bool, device=stream.device).tril()
        rows = lambda a, b: torch.arange(a, b, device=stream.device)  # noqa: E731

        def joined(x: torch.Tensor, point: int, final: bool) -> torch.Tensor:
            """x (the rows already running) with the rows that enter at point appended."""
            new = stream.index_select(0, rows(entered[point - 1] if point else 0, entered[point]))
            if final:  # past the last block's attention only each row's last position is needed
                new = at_positions(new, last.index_select(0, rows(entered[point - 1], entered[point])))
            return new if point == 0 else torch.cat([x, new])

        x = joined(stream[:0], 0, False)
        for i, block in enumerate(self.blocks):
            final = i == L - 1
            if i:
                x = joined(x, 2 * i, False)
            running = rows(0, entered[2 * i])
            key_ok = attention_mask.index_select(0, running).bool()[:, None, None, :]
            allowed = key_ok if final else causal[None, None] & key_ok
            attended = block.attn(block.ln_attn(x), allowed, False, last.index_select(0, running) if final else None)
            x = (at_positions(x, last.index_select(0, running)) if final else x) + attended.out
            x = joined(x, 2 * i + 1, final)
            x = x + block.mlp(block.ln_mlp(x))
        x = joined(x, 2 * L, True)
        return self.ln_f(x[:, 0])[torch.argsort(order)]  # (B, C), in the rows' own order

    def decode(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        key_caches: list[torch.Tensor],
        value_caches: list[torch.Tensor],
        head_mask: torch.Tensor | None = None,
        steering: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """One generation step against fixed-size caches: what the service's decode graph runs.

        input_ids (B, 1); positions (B,) the new token's position (the row's length so far);
        key_caches, value_caches: per layer (B, nh, S, hs), holding each row's earlier positions
        (anything at or after positions is ignored and overwritten); head_mask and steering as in
        hidden_states, applied at every step. Returns the new hidden state
        (B, C), the caches with the new token written at positions, and per layer the new token's
        weights (B, nh, S) over positions 0..positions (itself last; zero after).
        """
        x = self.embed(input_ids, positions[:, None])  # (B, 1, C)
        slots = torch.arange(key_caches[0].size(2), device=input_ids.device)  # (S,)
        visible = (slots[None, :] <= positions[:, None])[:, None, None, :]  # (B, 1, 1, S)
        # Where the new token's vectors go, the same in every layer: (row, head, position) per (B, nh).
        rows = torch.arange(input_ids.size(0), device=input_ids.device)[:, None].expand(-1, self.cfg.n_head)
        heads = torch.arange(self.cfg.n_head, device=input_ids.device)[None, :].expand_as(rows)
        write_at = torch.stack([rows, heads, positions[:, None].expand_as(rows)], dim=-1)  # (B, nh, 3)
        keys, values, weights = [], [], []
        for i, block in enumerate(self.blocks):
            if steering is not None:
                x = x + steering[:, i, None, :]
            y, w, k, v = block.attn.step(
                block.ln_attn(x),
                write_at,
                key_caches[i],
                value_caches[i],
                visible,
                None if head_mask is None else head_mask[:, i],
            )
            x = x + y
            x = x + block.mlp(block.ln_mlp(x))
            keys.append(k)
            values.append(v)
            weights.append(w[:, :, 0])  # (B, nh, S)
        return self.ln_f(x[:, 0]), keys, values, weights

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output layer (tied to the token embedding unless the architecture says not): (..., C) -> (..., V)."""
        return hidden @ self.unembedding().T

    def unembedding(self) -> torch.Tensor:
        """(vocab, C): the output layer's weight."""
        return self.tok_emb.weight if self.cfg.tied_head else self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None):
        """Training entry point: logits (B, T, V) and, with targets, the mean cross-entropy."""
        hidden, _ = self.hidden_states(input_ids)
        logits = self.logits(hidden)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

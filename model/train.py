"""Training: AdamW, warmup plus cosine decay, gradient clipping, periodic validation."""

from __future__ import annotations

import logging
import math
import platform
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from bundlespec.manifest import Architecture
from model.evaluate import total_nll
from model.transformer import AttentionLM

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 1800
    batch_size: int = 32
    seq_len: int = 128
    # The last part of training runs at the full context with the batch cut so that tokens per
    # step stay the same: attention costs grow with T^2, so short windows train faster, and the
    # final steps teach the positions beyond seq_len.
    full_context_fraction: float = 0.2
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_tokens: int = 16384  # validation tokens used for the periodic (not the final) figure
    seed: int = 1337


def lr_at(step: int, tc: TrainConfig) -> float:
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps)
    return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: AttentionLM, tc: TrainConfig) -> torch.optim.AdamW:
    # Decay matrices only; biases, LayerNorm gains and the like stay undecayed.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, 0.99))


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def train(
    cfg: Architecture,
    tc: TrainConfig,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray,
    val_chars: int,
    progress: bool = True,
) -> tuple[AttentionLM, dict]:
    """Train a model on token arrays; returns the model (eval mode) and a metrics dict."""
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AttentionLM(cfg).to(device)
    opt = make_optimizer(model, tc)
    data = torch.from_numpy(train_tokens.astype(np.int64))
    short_len = min(tc.seq_len, cfg.context_length, len(data) - 2)
    full_len = min(cfg.context_length, len(data) - 2)
    full_from = int(tc.max_steps * (1 - tc.full_context_fraction))
    val_sample = val_tokens[: tc.eval_tokens]
    val_sample_chars = val_chars * len(val_sample) / len(val_tokens)

    history: dict[str, list] = {"step": [], "train_loss": [], "val_step": [], "val_nats_per_char": []}
    bar = tqdm(range(tc.max_steps), disable=not progress, desc="train")
    started = time.perf_counter()
    seen_tokens = 0
    for step in bar:
        seq_len = full_len if step >= full_from else short_len
        batch = max(1, tc.batch_size * short_len // seq_len)
        starts = rng.integers(0, len(data) - seq_len - 1, size=batch)
        x = torch.stack([data[s : s + seq_len] for s in starts]).to(device)  # (B, T)
        y = torch.stack([data[s + 1 : s + 1 + seq_len] for s in starts]).to(device)  # (B, T)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tc)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        seen_tokens += x.numel()
        history["step"].append(step)
        history["train_loss"].append(loss.item())
        if (step + 1) % tc.eval_every == 0 or step + 1 == tc.max_steps:
            npc = total_nll(model, val_sample, cfg.context_length) / val_sample_chars
            history["val_step"].append(step)
            history["val_nats_per_char"].append(npc)
            log.info("step %d: train loss %.4f, val %.4f nats/char (sample)", step + 1, loss.item(), npc)
        elapsed = time.perf_counter() - started
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{seen_tokens / elapsed:,.0f}")
    train_seconds = time.perf_counter() - started
    model.eval()
    metrics = {
        "train_config": asdict(tc),
        "train_seconds": round(train_seconds, 1),
        "tokens_seen": seen_tokens,
        "tokens_per_second": round(seen_tokens / train_seconds, 1),
        "hardware": hardware(),
        "history": history,
    }
    return model, metrics

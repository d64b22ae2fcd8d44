"""The lectures' toy task, small enough to train in seconds (and seeded: the same model every time):
after "not like" comes "hate", after "do like" comes "like". A bigram model cannot do it (both
contexts end in "like"), so a model that gets it right has learnt to attend to the earlier word."""

from __future__ import annotations

import random

import numpy as np
import torch

from bundlespec.manifest import Architecture
from model.tokenizer import train_tokenizer
from model.train import TrainConfig, train

SENTENCES = ["I do not like hate.\n", "we do like like.\n", "you not like hate.\n", "they do like like.\n"]


def toy_corpus(lines: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(SENTENCES) for _ in range(lines))


def train_toy(steps: int = 300):
    torch.set_num_threads(1)  # a model this small only loses time to thread hand-offs
    text = toy_corpus()
    tokenizer = train_tokenizer([text], vocab_size=300)
    tokens = np.array(tokenizer.encode(text).ids, dtype=np.int32)
    cfg = Architecture(
        vocab_size=tokenizer.get_vocab_size(), n_layer=2, n_head=4, d_model=32, context_length=24, dropout=0.0
    )
    tc = TrainConfig(
        max_steps=steps,
        batch_size=16,
        seq_len=24,
        lr=1e-2,
        warmup_steps=10,
        eval_every=10_000,
        full_context_fraction=0.0,
    )
    model, metrics = train(
        cfg, tc, tokens, tokens[:200], val_chars=len(tokenizer.decode(tokens[:200].tolist())), progress=False
    )
    return model, tokenizer, metrics

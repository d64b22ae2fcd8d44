"""Train the model: python -m model --corpus PATH_OR_URL --out runs/default

Writes checkpoint.pt (config, weights, tokenizer), metrics.json and loss_curve.png to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from bundlespec.manifest import Architecture
from model.data import DEFAULT_CORPUS_URL, TINY_SHAKESPEARE_SHA256, CorpusError, fetch_corpus, sha256_file, split_text
from model.evaluate import bigram_nll, total_nll
from model.tokenizer import train_tokenizer
from model.train import TrainConfig, train

log = logging.getLogger("model")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m model", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=DEFAULT_CORPUS_URL, help="local path or http(s) URL of the corpus")
    p.add_argument("--corpus-sha256", default=TINY_SHAKESPEARE_SHA256, help="expected sha256; 'none' skips the check")
    p.add_argument("--corpus-chars", type=int, default=None, help="use only the first N characters (smoke tests)")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    p.add_argument("--out", type=Path, default=Path("runs/default"))
    p.add_argument("--no-progress", action="store_true")
    for name, field in Architecture.model_fields.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(field.default), default=field.default)
    for f in fields(TrainConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    return p.parse_args(argv)


def plot_losses(history: dict, path: Path, chars_per_token: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array(history["step"])
    train_npc = np.array(history["train_loss"]) / chars_per_token
    window = min(50, len(train_npc))
    smooth = np.convolve(train_npc, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps[window - 1 :], smooth, label=f"train (mean of {window} steps)")
    ax.plot(history["val_step"], history["val_nats_per_char"], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per character")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    cfg = Architecture(**{name: getattr(args, name) for name in Architecture.model_fields})
    tc = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    expected = None if args.corpus_sha256.lower() == "none" else args.corpus_sha256
    try:
        corpus_path = fetch_corpus(args.corpus, args.cache_dir, expected)
    except CorpusError as e:
        log.error("%s", e)
        return 2
    text = corpus_path.read_text(encoding="utf-8")
    if args.corpus_chars:
        text = text[: args.corpus_chars]
    split = split_text(text)
    tokenizer = train_tokenizer([split.train], cfg.vocab_size)
    if tokenizer.get_vocab_size() != cfg.vocab_size:
        # A tiny corpus can run out of merges before reaching the requested size.
        cfg = Architecture(**{**cfg.model_dump(), "vocab_size": tokenizer.get_vocab_size()})
    train_tokens = np.array(tokenizer.encode(split.train).ids, dtype=np.int32)
    val_tokens = np.array(tokenizer.encode(split.val).ids, dtype=np.int32)
    log.info(
        "corpus %d chars; train %d tokens, val %d tokens (%.2f chars/token); vocab %d",
        len(text),
        len(train_tokens),
        len(val_tokens),
        len(split.val) / len(val_tokens),
        cfg.vocab_size,
    )

    model, metrics = train(cfg, tc, train_tokens, val_tokens, len(split.val), progress=not args.no_progress)
    val_npc = total_nll(model, val_tokens, cfg.context_length) / len(split.val)
    bigram_npc = bigram_nll(train_tokens, val_tokens, cfg.vocab_size) / len(split.val)
    log.info(
        "validation: %.4f nats/char (bigram baseline %.4f); trained in %.0f s",
        val_npc,
        bigram_npc,
        metrics["train_seconds"],
    )

    args.out.mkdir(parents=True, exist_ok=True)
    metrics.update(
        val_nats_per_char=round(val_npc, 4),
        bigram_val_nats_per_char=round(bigram_npc, 4),
        val_chars=len(split.val),
        val_tokens=len(val_tokens),
        corpus_sha256=sha256_file(corpus_path),
        corpus_chars=len(text),
        model_config=cfg.model_dump(),
    )
    torch.save(
        {
            "config": cfg.model_dump(),
            "state_dict": model.state_dict(),
            "tokenizer": tokenizer.to_str(),
            "metrics": metrics,
        },
        args.out / "checkpoint.pt",
    )
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_losses(metrics["history"], args.out / "loss_curve.png", len(split.val) / len(val_tokens))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export a checkpoint to a verified bundle.

python -m export --checkpoint runs/default/checkpoint.pt --out bundles/default
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from export.bundle import write_bundle
from export.verify import ParityError, verify_bundle
from model.config import ModelConfig
from model.transformer import AttentionLM

log = logging.getLogger("export")


def load_checkpoint(path: Path) -> tuple[AttentionLM, str, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = AttentionLM(ModelConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt["tokenizer"], ckpt["metrics"]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("runs/default/checkpoint.pt"))
    p.add_argument("--out", type=Path, default=Path("bundles/default"))
    p.add_argument("--name", default="attnserve-shakespeare")
    p.add_argument("--version", default="1")
    args = p.parse_args(argv)
    if not args.checkpoint.is_file():
        log.error("checkpoint not found: %s (run 'make model' or 'python -m model' first)", args.checkpoint)
        return 2
    model, tokenizer_json, metrics = load_checkpoint(args.checkpoint)
    write_bundle(model, tokenizer_json, metrics, args.out, args.name, args.version)
    try:
        verify_bundle(model, args.out)
    except ParityError as e:
        log.error("verification failed, the bundle in %s is not usable: %s", args.out, e)
        return 1
    log.info("bundle verified: %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

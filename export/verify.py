"""Parity of the exported bundle against PyTorch; raises on any mismatch."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.graphs import GRAPHS
from model.transformer import AttentionLM
from service import contract

log = logging.getLogger(__name__)

TOLERANCE = {contract.NEXT_TOKEN: 1e-4, contract.SCORE: 1e-4, contract.ATTENTION: 1e-5}


class ParityError(AssertionError):
    pass


def random_batch(rng: np.random.Generator, vocab: int, context: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A right-padded batch of 1..5 rows with random lengths (at least one row at full length)."""
    batch = int(rng.integers(1, 6))
    longest = int(rng.integers(1, context + 1))
    lengths = [longest] + [int(rng.integers(1, longest + 1)) for _ in range(batch - 1)]
    ids = np.zeros((batch, longest), dtype=np.int64)
    mask = np.zeros((batch, longest), dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(0, vocab, n)
        mask[row, :n] = 1
    return ids, mask, lengths


def real_part(kind: str, out: np.ndarray, n: int) -> np.ndarray:
    """The part of one row's output that depends only on its n real tokens."""
    if kind == contract.ATTENTION:
        return out[:, :, :n, :n]
    if kind == contract.SCORE:
        return out[: n - 1]
    return out


def verify_bundle(model: AttentionLM, bundle_dir: Path, trials: int = 12, seed: int = 0) -> dict[str, float]:
    """Compare every graph with PyTorch on random padded batches; returns the worst error per graph."""
    rng = np.random.default_rng(seed)
    cfg = model.cfg
    worst: dict[str, float] = {}
    for kind, filename in contract.GRAPH_FILES.items():
        session = ort.InferenceSession(str(bundle_dir / filename), providers=["CPUExecutionProvider"])
        graph = GRAPHS[kind](model).eval()
        tol = TOLERANCE[kind]
        worst[kind] = 0.0
        for _ in range(trials):
            ids, mask, lengths = random_batch(rng, cfg.vocab_size, cfg.context_length)
            if kind == contract.SCORE and ids.shape[1] < 2:
                continue
            (got,) = session.run(None, {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask})
            with torch.no_grad():
                want = graph(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
            for row, n in enumerate(lengths):
                if kind == contract.SCORE and n < 2:
                    continue
                g, w = real_part(kind, got[row], n), real_part(kind, want[row], n)
                err = float(np.abs(g - w).max())
                worst[kind] = max(worst[kind], err)
                if err > tol:
                    raise ParityError(f"{kind}: ONNX Runtime differs from PyTorch by {err:.2e} > {tol:.0e}")
                if kind == contract.NEXT_TOKEN and g.argmax() != w.argmax():
                    raise ParityError(f"{kind}: top-1 token differs ({g.argmax()} vs {w.argmax()})")
                if kind == contract.ATTENTION and np.any(got[row][:, :, :n, n:]):
                    raise ParityError(f"{kind}: padded keys have non-zero weight")
                # The same text alone, without padding, must give the same answer.
                (alone,) = session.run(
                    None, {contract.INPUT_IDS: ids[row : row + 1, :n], contract.ATTENTION_MASK: mask[row : row + 1, :n]}
                )
                err = float(np.abs(real_part(kind, alone[0], n) - g).max())
                worst[kind] = max(worst[kind], err)
                if err > tol:
                    raise ParityError(f"{kind}: a padded row differs from the same text alone by {err:.2e}")
        log.info("%s parity: worst abs error %.2e (tolerance %.0e)", kind, worst[kind], tol)
    return worst

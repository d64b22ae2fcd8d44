"""In process: the int8 bundle against float32 (speed, and the quality cost on the corpus)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from benchmarks.int8_generation import int8_generation_bench, int8_generation_report
from benchmarks.timing import median_seconds
from loadtest.harness import ROOT

log = logging.getLogger("bench")


INT8_BATCHES = (1, 8, 32)
INT8_LENGTH = 64


def int8_bench(bundle_dir: Path, work: Path, corpus: str | None) -> dict:
    """The int8 variant (export/quantize.py) against the float32 bundle: next-token runner speed at
    several batch sizes, how far its log-probabilities move, and validation nats/char of both through
    the score graph (windows of the full context, overlapping by one token)."""
    from export.quantize import quantize_bundle
    from model.data import fetch_corpus, split_text
    from service.core.bundle import load_bundle
    from service.core.runner import ModelRunner
    from service.server.settings import Settings

    quantize_bundle(bundle_dir, work / "int8")
    bundles = {"float32": load_bundle(bundle_dir), "int8": load_bundle(work / "int8")}
    runners = {k: ModelRunner(b, device="cpu", max_padding=Settings().batch_max_padding) for k, b in bundles.items()}
    rng = np.random.default_rng(0)
    vocab = bundles["float32"].vocab_size
    speed = []
    for batch in INT8_BATCHES:
        rows = list(rng.integers(0, vocab, (batch, INT8_LENGTH)))
        ms = {k: median_seconds(lambda e=e, r=rows: e.run("next_token", r)) * 1000 for k, e in runners.items()}
        speed.append({"batch": batch, **{f"{k}_ms": v for k, v in ms.items()}, "speedup": ms["float32"] / ms["int8"]})
        log.info("int8 next-token batch %d: %.2f ms vs %.2f ms float32", batch, ms["int8"], ms["float32"])
    rows = list(rng.integers(0, vocab, (32, INT8_LENGTH)))
    diff = max(
        float(np.abs(np.exp(a) - np.exp(b)).max())
        for a, b in zip(
            runners["int8"].run("next_token", rows), runners["float32"].run("next_token", rows), strict=True
        )
    )
    result: dict = {"length": INT8_LENGTH, "speed": speed, "max_prob_diff": diff}
    val = split_text(fetch_corpus(corpus, ROOT / ".cache").read_text(encoding="utf-8")).val if corpus else None
    if val is not None:
        ids = np.asarray(bundles["float32"].tokenizer.encode(val).ids, dtype=np.int64)
        context = bundles["float32"].context_length
        windows = [ids[s : s + context] for s in range(0, len(ids) - 1, context - 1)]
        nats = {}
        for k, e in runners.items():
            total = 0.0
            for i in range(0, len(windows), 32):
                total -= sum(float(out[0].sum()) for out in e.run("score", windows[i : i + 32]))
            nats[k] = total / len(val)
        result.update(val_chars=len(val), nats_per_char=nats)
        log.info("int8 validation: %.4f vs %.4f nats/char", nats["int8"], nats["float32"])
    result["generation"] = int8_generation_bench(bundle_dir, work / "int8", work, val)
    return result


def int8_report(results: dict) -> list[str]:
    q = results.get("int8")
    if not q:
        return []
    out = [
        "## int8: quantized next-token, score and generation graphs",
        "",
        "`make int8` writes `bundles/attnserve-shakespeare-int8/1`, a model of the repository beside the float32 "
        "one: the next-token, score, prefill and decode graphs with int8 MatMul weights (ONNX Runtime's dynamic "
        "quantization, per output channel; in prefill and decode only the MatMuls with a weight, so that the "
        "attention scores and weights of generation stay float32); the attention graph stays float32, so its "
        "weights stay exact. The model runner alone, in-process, median of repeated calls on random ids of "
        f"{q['length']} tokens (`python -m benchmarks --only int8`).",
        "",
        "| batch | float32 ms | int8 ms | speed-up |",
        "|---|---|---|---|",
    ]
    out += [f"| {r['batch']} | {r['float32_ms']:.2f} | {r['int8_ms']:.2f} | {r['speedup']:.2f}x |" for r in q["speed"]]
    out.append("")
    if "nats_per_char" in q:
        n = q["nats_per_char"]
        out.append(
            f"Validation ({q['val_chars']:,} characters, the score graph over full-context windows): float32 "
            f"{n['float32']:.4f} nats/char, int8 {n['int8']:.4f} ({n['int8'] - n['float32']:+.4f})."
        )
    out += [f"The largest change of any next-token probability on 32 random rows: {q['max_prob_diff']:.4f}.", ""]
    return out + int8_generation_report(q.get("generation"))

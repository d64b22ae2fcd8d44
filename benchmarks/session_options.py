"""How ONNX Runtime's session options change next-token latency on this machine.

    python -m benchmarks.session_options [--bundle bundles/attnserve-shakespeare/1]

Prints the median latency (ms) of the next-token graph for each graph optimisation level and
intra-op thread count; service/core/runner.py's choices come from this measurement.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.bundle import load_bundle
from service.core.runner import session_options

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
SHAPES = ((1, 64), (8, 64), (1, 256))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.session_options", description=__doc__.splitlines()[0])
    p.add_argument(
        "--bundle",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "bundles" / "attnserve-shakespeare" / "1",
    )
    args = p.parse_args()
    bundle = load_bundle(args.bundle)
    sessions = {}
    for name, level in LEVELS.items():
        for threads in (1, 2):
            opts = session_options(threads)
            opts.graph_optimization_level = level
            path = str(bundle.graph_path("next_token"))
            sessions[f"{name}, {threads} thread{'s' if threads > 1 else ''}"] = ort.InferenceSession(
                path, opts, providers=["CPUExecutionProvider"]
            )
    rng = np.random.default_rng(0)
    sys.stdout.write("| options | " + " | ".join(f"B={b} T={t} ms" for b, t in SHAPES) + " |\n")
    sys.stdout.write("|---|" + "---|" * len(SHAPES) + "\n")
    medians: dict[str, list[float]] = {k: [] for k in sessions}
    for batch, length in SHAPES:
        ids = rng.integers(0, bundle.vocab_size, (batch, length)).astype(np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        samples: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(5):  # interleaved, so a slow moment of the machine hits every variant alike
            for key, session in sessions.items():
                session.run(None, feed)
                started = time.perf_counter()
                for _ in range(5):
                    session.run(None, feed)
                samples[key].append((time.perf_counter() - started) / 5 * 1000)
        for key in sessions:
            medians[key].append(statistics.median(samples[key]))
    for key, values in medians.items():
        sys.stdout.write(f"| {key} | " + " | ".join(f"{v:.2f}" for v in values) + " |\n")


if __name__ == "__main__":
    main()

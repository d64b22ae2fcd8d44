"""In process: PyTorch eager against ONNX Runtime on the same bundle's weights and inputs."""

from __future__ import annotations

import itertools
import logging
import math
import os
from pathlib import Path

import numpy as np

from benchmarks.timing import forward_flops, matmul_peak_gflops, median_seconds
from loadtest.workload import load_prompts

log = logging.getLogger("bench")


ROOT = Path(__file__).resolve().parent.parent
BATCHES = (1, 8, 32)


BATCHES = (1, 8, 32)
LENGTHS = (16, 64, 256)


def engine_bench(bundle_dir: Path) -> dict:
    import torch

    from bundlespec import ONE_SHOT
    from export.bundle import load_torch_model
    from export.graphs import wrap
    from service.core.bundle import load_bundle
    from service.core.runner import ModelRunner

    torch.set_num_threads(os.cpu_count() or 1)
    bundle = load_bundle(bundle_dir)
    from service.server.settings import Settings

    # The service's own grouping of rows by length, so the runner here is what the service runs.
    runner = ModelRunner(bundle, device="cpu", max_padding=Settings().batch_max_padding)
    model = load_torch_model(bundle_dir)
    torch_next_token = wrap("next_token", model)
    rng = np.random.default_rng(0)
    rows_out = []
    for batch in BATCHES:
        for length in LENGTHS:
            ids = rng.integers(0, bundle.vocab_size, (batch, length))
            rows = list(ids)
            ids_t, mask_t = torch.from_numpy(ids), torch.ones(batch, length, dtype=torch.long)
            row: dict = {"batch": batch, "length": length}
            for kind in ONE_SHOT:
                row[f"ort_{kind}_ms"] = median_seconds(lambda k=kind, r=rows: runner.run(k, r)) * 1000
            with torch.inference_mode():
                row["torch_next_token_ms"] = median_seconds(lambda i=ids_t, m=mask_t: torch_next_token(i, m)) * 1000
            row["speedup"] = row["torch_next_token_ms"] / row["ort_next_token_ms"]
            row["ort_tokens_per_s"] = batch * length / row["ort_next_token_ms"] * 1000
            row["torch_tokens_per_s"] = batch * length / row["torch_next_token_ms"] * 1000
            for kind in ONE_SHOT:
                row[f"ort_{kind}_gflops"] = (
                    forward_flops(bundle.arch.model_dump(), batch, length, kind) / row[f"ort_{kind}_ms"] / 1e6
                )
            log.info(
                "engine B=%d T=%d: ORT %.2f ms, torch %.2f ms (%.1fx)",
                batch,
                length,
                row["ort_next_token_ms"],
                row["torch_next_token_ms"],
                row["speedup"],
            )
            rows_out.append(row)

    # The runner on the serving workload: prompts from the load-test file, padded as the batcher pads.
    prompts = [np.asarray(e.ids[-bundle.context_length :]) for e in bundle.tokenizer.encode_batch(load_prompts())]
    workload = {}
    for batch in (1, 32):
        batches = [[prompts[(i * batch + j) % len(prompts)] for j in range(batch)] for i in range(len(prompts))]
        turns = itertools.cycle(batches)
        seconds = median_seconds(lambda t=turns: runner.run("next_token", next(t)), min_time=1.5)
        workload[batch] = batch / seconds
        log.info("engine on the prompt mix, batch %d: %.0f rows/s", batch, workload[batch])
    # The same batches of 32 padded to their longest row, as a server without length grouping runs them.
    padded_runner = ModelRunner(bundle, device="cpu", max_padding=math.inf)
    batches = [[prompts[(i * 32 + j) % len(prompts)] for j in range(32)] for i in range(len(prompts))]
    turns = itertools.cycle(batches)
    padded = 32 / median_seconds(lambda t=turns: padded_runner.run("next_token", next(t)), min_time=1.5)
    return {
        "rows": rows_out,
        "workload_rows_per_s": workload,
        "workload_padded_rows_per_s": padded,
        "peak_gflops": matmul_peak_gflops(),
        "config": bundle.arch.model_dump(),
        "provider": runner.provider,
    }


def plot_engine(engine: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = engine["rows"]
    labels = [f"B{r['batch']}\nT{r['length']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(x - 0.2, [r["torch_next_token_ms"] for r in rows], 0.4, label="PyTorch eager")
    ax.bar(x + 0.2, [r["ort_next_token_ms"] for r in rows], 0.4, label="ONNX Runtime")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("next-token latency (ms)")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""The GPU measurements in one command: python -m benchmarks --gpu (make bench-gpu), a few minutes on
a lent H100 or H200 (docs/development.md says how to bring ONNX Runtime's CUDA build there).

It stops at once unless ONNX Runtime really runs the graphs on CUDA (it falls back to the CPU
silently), then records, in process on the service's own core and labelled with the device:
  - the provider each graph got, and the CUDA answers against the CPU's (log-probs within 1e-3);
  - next-token and attention (every map) at 1/8/32 rows x 64/256 tokens, median ms per call;
  - generation at 1/8/32/128 streams through the scheduler, the KV cache resident on the device;
  - int8 (make int8's graphs) where the provider runs them, against float32 on the same device;
  - over the network (the server's own dependencies present): the service on CUDA over KServe v2
    gRPC, and Triton's gRPC endpoint when its virtual environment is there, from the same client
    (loadtest/grpc_load.py; the device has no wrk).
Results go into docs/bench/results.json ("gpu"), and BENCHMARKS.md's GPU section is written from them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import subprocess
from pathlib import Path

import numpy as np

from benchmarks.generation import generation_prompts, run_streams
from benchmarks.timing import median_seconds

log = logging.getLogger("bench")
ROWS = (1, 8, 32)
TOKENS = (64, 256)
STREAMS = (1, 8, 32, 128)


def device_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip() or "unknown device"
    except (OSError, subprocess.TimeoutExpired):
        return "no nvidia-smi"


def gpu_bench(bundle_dir: Path, work: Path, device: str = "cuda", quick: bool = False) -> dict:
    """Every figure of the GPU section. `device="cpu"` and `quick` run the same code on the CPU in
    seconds (make test does, so that this command does not rot between lent GPUs)."""
    from service.core.bundle import load_bundle
    from service.core.runner import ModelRunner

    bundle = load_bundle(bundle_dir)
    runner = ModelRunner(bundle, device, max_padding=0.1)  # DEVICE=cuda: refuses a CPU fall-back
    cpu = ModelRunner(bundle, "cpu", max_padding=0.1)
    out: dict = {"date": dt.date.today().isoformat(), "device": device_name() if device == "cuda" else "cpu"}
    out["providers"] = {name: s.get_providers()[0] for name, s in runner.sessions.items()}
    rng = np.random.default_rng(0)
    vocab = bundle.vocab_size
    rows = list(rng.integers(0, vocab, (8, 64)))
    answers = zip(runner.run("next_token", rows), cpu.run("next_token", rows), strict=True)
    out["max_logprob_diff_vs_cpu"] = diff = max(float(np.abs(a - b).max()) for a, b in answers)
    if diff > 1e-3:
        raise AssertionError(f"{device} next-token log-probs differ from the CPU's by {diff:.2e}")
    timed = (lambda f: median_seconds(f, min_time=0.0, min_reps=1)) if quick else median_seconds
    out["one_shot"] = []
    for n in ROWS[:1] if quick else ROWS:
        for t in TOKENS[:1] if quick else TOKENS:
            batch = list(rng.integers(0, vocab, (n, t)))
            point = {"rows": n, "tokens": t}
            for graph in ("next_token", "attention"):
                point[f"{graph}_ms"] = timed(lambda g=graph, b=batch: runner.run(g, b)) * 1000
            out["one_shot"].append(point)
            log.info(
                "gpu %s x %s: next-token %.2f ms, attention %.2f ms",
                n,
                t,
                point["next_token_ms"],
                point["attention_ms"],
            )
    prompts = generation_prompts(runner)
    out["generation"] = [
        asyncio.run(run_streams(runner, prompts, n, max(n, 32))) for n in (STREAMS[:1] if quick else STREAMS)
    ]
    out["int8"] = _int8(bundle_dir, work, device, timed)
    out["serving"] = {} if quick else _serving(bundle_dir, work)
    return out


def _int8(bundle_dir: Path, work: Path, device: str, timed) -> dict:
    """make int8's next-token graph on the device against float32, and where its nodes ran."""
    from export.quantize import quantize_bundle
    from service.core.bundle import load_bundle
    from service.core.runner import ModelRunner

    quantize_bundle(bundle_dir, work / "int8")
    rows = list(np.random.default_rng(1).integers(0, load_bundle(bundle_dir).vocab_size, (32, 64)))
    out = {}
    for label, path in (("float32", bundle_dir), ("int8", work / "int8")):
        try:
            runner = ModelRunner(load_bundle(path), device, max_padding=0.1)
        except Exception as e:  # a provider without these kernels: recorded, not fatal
            out[label] = {"error": str(e)}
            continue
        out[label] = {"next_token_32x64_ms": timed(lambda r=runner: r.run("next_token", rows)) * 1000}
    return out


def _serving(bundle_dir: Path, work: Path) -> dict:
    """The short-prompt request over KServe v2 gRPC at 64 clients: the service on CUDA, and Triton."""
    try:
        import fastapi  # noqa: F401  (the server's own dependencies must have been brought along)
    except ImportError:
        return {"skipped": "the server's dependencies (fastapi, uvicorn...) are not installed here"}
    from loadtest.grpc_load import grpc_bench

    # The device has no wrk: gRPC rows only, from the project's own client.
    return grpc_bench(bundle_dir, 10, work, env={"DEVICE": "cuda"}, http=False)["servers"]


def gpu_report(results: dict) -> list[str]:
    g = results.get("gpu")
    if not g:
        return []
    graphs = ", ".join(sorted({p for p in g["providers"].values()}))
    out = [
        f"## On a GPU: {g['device']}",
        "",
        f"Run on {g['date']} with `python -m benchmarks --gpu` ({g.get('wall_seconds', 0)} s), in process unless said: "
        f"the graphs ran on {graphs}; next-token log-probs within {g['max_logprob_diff_vs_cpu']:.1e} of the CPU's.",
        "",
        "| rows x tokens | next-token ms | attention (every map) ms |",
        "|---|---|---|",
    ]
    out += [
        f"| {p['rows']} x {p['tokens']} | {p['next_token_ms']:.2f} | {p['attention_ms']:.2f} |" for p in g["one_shot"]
    ]
    out += ["", "| generation streams | tokens/s | TTFT p50 ms | inter-token p50 ms |", "|---|---|---|---|"]
    out += [
        f"| {r['streams']} | {r['tokens_per_s']:.0f} | {r['ttft_p50_ms']:.1f} | {r['itl_p50_ms']:.2f} |"
        for r in g["generation"]
    ]
    out += ["", "int8 next-token, 32 x 64: " + "; ".join(f"{k}: {v}" for k, v in g["int8"].items())]
    if g["serving"]:
        served = [
            f"{k}: {v['rps']:.0f} req/s, p99 {v['p99_ms']:.1f} ms" if isinstance(v, dict) else f"{k}: {v}"
            for k, v in g["serving"].items()
        ]
        out += ["", "Over KServe v2 gRPC, 64 clients (the project's Python client): " + "; ".join(served) + "."]
    return [*out, ""]

"""NVIDIA's aiperf, unmodified, against the service: streamed completions at 1, 8 and 32 concurrent
streams (TTFT, inter-token latency, output tokens/s), as the field benchmarks a generation server.

aiperf runs from its own virtual environment (`make bench` creates .venv-aiperf), with the bundle's
own tokenizer from a local directory: nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from loadtest.harness import ROOT, Server, service_env

log = logging.getLogger("bench")
AIPERF = ROOT / ".venv-aiperf" / "bin" / "aiperf"
STREAMS = (1, 8, 32)
PROMPT_TOKENS, OUTPUT_TOKENS = 32, 96


def tokenizer_dir(bundle_dir: Path, work: Path) -> Path:
    """A directory that transformers' AutoTokenizer reads as a local tokenizer: the bundle's own."""
    out = work / "tokenizer"
    out.mkdir(exist_ok=True)
    (out / "tokenizer.json").write_bytes((bundle_dir / "tokenizer.json").read_bytes())
    context = json.loads((bundle_dir / "manifest.json").read_text())["architecture"]["context_length"]
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def aiperf_bench(bundle_dir: Path, work: Path) -> dict | None:
    if not AIPERF.exists():
        log.warning("aiperf is not installed (make bench creates .venv-aiperf); skipping its section")
        return None
    name = json.loads((bundle_dir / "manifest.json").read_text())["name"]
    tokenizer = tokenizer_dir(bundle_dir, work)
    server = Server("aiperf", [sys.executable, "-m", "service"], service_env(bundle_dir), work)
    points = []
    try:
        server.wait_ready("/readyz")
        for streams in STREAMS:
            out = work / f"aiperf-{streams}"
            args = [
                str(AIPERF), "profile", "--model", name, "--url", server.url,
                "--endpoint-type", "completions", "--streaming", "--tokenizer", str(tokenizer),
                "--concurrency", str(streams), "--request-count", str(max(8, 4 * streams)),
                "--warmup-request-count", str(streams),
                "--prompt-input-tokens-mean", str(PROMPT_TOKENS), "--prompt-input-tokens-stddev", "0",
                "--prompt-output-tokens-mean", str(OUTPUT_TOKENS), "--prompt-output-tokens-stddev", "0",
                "--extra-inputs", "ignore_eos:true", "--extra-inputs", "temperature:0",
                "--ui-type", "none", "--no-gpu-telemetry", "--no-server-metrics", "--artifact-dir", str(out),
            ]  # fmt: skip
            done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=work)
            if done.returncode != 0:
                raise RuntimeError(f"aiperf at {streams} streams failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
            result = json.loads((out / "profile_export_aiperf.json").read_text())
            point = {
                "streams": streams,
                "ttft_p50_ms": result["time_to_first_token"]["p50"],
                "ttft_p99_ms": result["time_to_first_token"]["p99"],
                "itl_p50_ms": result["inter_token_latency"]["p50"],
                "itl_p99_ms": result["inter_token_latency"]["p99"],
                "output_tokens_per_s": result["output_token_throughput"]["avg"],
                "requests": result["request_count"]["avg"],
                "errors": len(result.get("error_summary") or []),
            }
            log.info("aiperf %d streams: %.0f tokens/s, TTFT p50 %.1f ms", streams, point["output_tokens_per_s"],
                     point["ttft_p50_ms"])  # fmt: skip
            points.append(point)
    finally:
        server.stop()
    version = subprocess.run([str(AIPERF), "--version"], capture_output=True, text=True).stdout.strip()
    return {"aiperf": version, "prompt_tokens": PROMPT_TOKENS, "output_tokens": OUTPUT_TOKENS, "points": points}

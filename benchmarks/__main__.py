"""The benchmark behind BENCHMARKS.md: python -m benchmarks (make bench).

1. In process (this package): PyTorch eager against ONNX Runtime on the same bundle's weights and
   inputs (engine.py), the int8 bundle (int8.py) and the generation scheduler (generation.py).
2. Over HTTP (loadtest.serving): wrk against the service, Triton, bare FastAPI and a naive server;
   the KServe v2 workloads, payload sizes, the explorer's render time and the toy request path.
All ratios come from one run on one machine; report.py writes BENCHMARKS.md and the README summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.engine import engine_bench, plot_engine
from benchmarks.generation import generation_bench
from benchmarks.gpu import gpu_bench
from benchmarks.int8 import int8_bench
from benchmarks.report import machine_info, write_reports
from loadtest.aiperf import aiperf_bench
from loadtest.gpt2_small import gpt2_small_bench
from loadtest.grpc_load import grpc_bench
from loadtest.harness import ROOT
from loadtest.interventions import interventions_bench
from loadtest.serving import (
    client_check,
    explorer_bench,
    interpretability_bench,
    kserve_bench,
    next_token_check,
    payload_bench,
    plot_serving,
    serving_bench,
    toy_http_bench,
    workers_bench,
)
from loadtest.tracing import tracing_bench

log = logging.getLogger("bench")


def gpu_main(args: argparse.Namespace, notes: str) -> int:
    """--gpu: the GPU section into the last full run's results, and the report again."""
    from service.core.errors import DeviceError

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            gpu = gpu_bench(args.bundle, Path(tmp))
        except DeviceError as e:
            log.error("no GPU measurement: %s", e)
            return 2
    gpu["wall_seconds"] = round(time.monotonic() - started)
    results = json.loads((args.docs / "results.json").read_text())
    results["gpu"] = gpu
    (args.docs / "results.json").write_text(json.dumps(results, indent=2))
    write_reports(results, args, notes)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "attnserve-shakespeare" / "1")
    p.add_argument("--seconds", type=float, default=8.0, help="wrk duration per serving point")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--corpus", default=os.environ.get("CORPUS"), help="path or URL; for the int8 quality figure")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "bench")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the last results.json")
    p.add_argument(
        "--only",
        choices=[
            "generation",
            "payload",
            "kserve",
            "grpc",
            "explorer",
            "int8",
            "toy",
            "tracing",
            "workers",
            "interpretability",
            "interventions",
            "gpt2",
            "aiperf",
        ],
        help="re-run one section (kserve: the service and Triton on the same v2 requests) and rewrite the report",
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help="the GPU section alone (benchmarks/gpu.py), on a lent GPU: stops unless ONNX Runtime runs on CUDA",
    )
    p.add_argument(
        "--next-token-only",
        metavar="LABEL",
        help="measure only the service's next-token path and write docs/bench/next_token_LABEL.json "
        "(for before/after comparisons of one change)",
    )
    args = p.parse_args(argv)
    notes_file = Path(__file__).with_name("notes.md")
    notes = notes_file.read_text() if notes_file.exists() else ""
    if args.next_token_only:
        return next_token_check(args.bundle, args.seconds, args.docs, args.next_token_only)
    if args.gpu:
        return gpu_main(args, notes)
    if args.only:
        # One section again, into the last full run's results; the report says when each section ran.
        results = json.loads((args.docs / "results.json").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            if args.only == "generation":
                results["generation"] = generation_bench(args.bundle)
            elif args.only == "payload":
                results["payload"] = payload_bench(args.bundle, Path(tmp))
            elif args.only == "toy":
                results["toy_http"] = toy_http_bench(args.seconds, Path(tmp))
            elif args.only == "tracing":
                results["tracing"] = tracing_bench(args.seconds, Path(tmp))
            elif args.only == "workers":
                results["workers"] = workers_bench(args.bundle, args.seconds, Path(tmp))
            elif args.only == "aiperf":
                results["aiperf"] = aiperf_bench(args.bundle, Path(tmp))
            elif args.only == "interpretability":
                results["interpretability"] = interpretability_bench(args.bundle, Path(tmp))
            elif args.only == "interventions":
                results["interventions"] = interventions_bench(args.bundle, Path(tmp))
            elif args.only == "gpt2":
                results["gpt2_small"] = gpt2_small_bench(Path(tmp), args.corpus)
            elif args.only == "int8":
                results["int8"] = int8_bench(args.bundle, Path(tmp), args.corpus)
            elif args.only == "grpc":
                results["grpc"] = grpc_bench(args.bundle, args.seconds, Path(tmp))
            elif args.only == "explorer":
                results["explorer"] = explorer_bench(args.bundle, Path(tmp))
            else:
                results["kserve"] = kserve_bench(args.bundle, args.seconds, Path(tmp))
        results.setdefault("rerun", {})[args.only] = time.strftime("%Y-%m-%d")
        (args.docs / "results.json").write_text(json.dumps(results, indent=2))
        write_reports(results, args, notes)
        return 0
    if args.report_only:
        results = json.loads((args.docs / "results.json").read_text())
        plot_engine(results["engine"], args.docs / "engine.png")
        plot_serving(results["serving"], args.docs / "serving.png")
        write_reports(results, args, notes)
        return 0
    if shutil.which("wrk") is None:
        log.error("wrk is not installed (Debian: apt-get install wrk); the serving benchmark needs it")
        return 2
    args.docs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {"machine": machine_info(), "seconds": args.seconds}
        results["engine"] = engine_bench(args.bundle)
        results["client_check"] = client_check(5, work)
        results["serving"] = serving_bench(args.bundle, args.seconds, work)
        results["kserve"] = kserve_bench(args.bundle, args.seconds, work)
        results["grpc"] = grpc_bench(args.bundle, args.seconds, work)
        results["toy_http"] = toy_http_bench(args.seconds, work)
        results["tracing"] = tracing_bench(args.seconds, work)
        results["workers"] = workers_bench(args.bundle, args.seconds, work)
        results["interpretability"] = interpretability_bench(args.bundle, work)
        results["interventions"] = interventions_bench(args.bundle, work)
        results["gpt2_small"] = gpt2_small_bench(work, args.corpus)
        results["aiperf"] = aiperf_bench(args.bundle, work)
        results["generation"] = generation_bench(args.bundle)
        results["payload"] = payload_bench(args.bundle, work)
        results["explorer"] = explorer_bench(args.bundle, work)
        results["int8"] = int8_bench(args.bundle, work, args.corpus)
    results["wall_seconds"] = round(time.monotonic() - started)
    (args.docs / "results.json").write_text(json.dumps(results, indent=2))
    plot_engine(results["engine"], args.docs / "engine.png")
    plot_serving(results["serving"], args.docs / "serving.png")
    write_reports(results, args, notes)
    log.info("wrote %s in %d s", args.out, results["wall_seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

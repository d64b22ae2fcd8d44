"""The benchmark behind BENCHMARKS.md: python -m loadtest.bench (make bench).

1. Engine: PyTorch eager against ONNX Runtime on the same bundle's weights and inputs, in-process.
2. Serving: wrk against the service (dynamic batching, and MAX_BATCH_SIZE=1), a constant-body
   FastAPI endpoint (the HTTP layer's limit) and a naive per-request PyTorch server.
All ratios come from one run on one machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from loadtest.workload import kserve_bodies, load_prompts, request_bodies

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
BATCHES = (1, 8, 32)
LENGTHS = (16, 64, 256)
CONCURRENCY = (1, 4, 16, 64)


# -- measuring ------------------------------------------------------------------------------------


def median_seconds(fn: Callable[[], object], min_time: float = 0.4, min_reps: int = 3, max_reps: int = 200) -> float:
    fn()  # warm-up: first calls allocate
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - started < min_time and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak_gflops() -> float:
    """The machine's own float32 matrix-multiply rate: the ceiling for this model's arithmetic."""
    import torch

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(10))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def forward_flops(cfg: dict, batch: int, length: int, kind: str) -> float:
    """Floating-point operations (2 per multiply-add) of one call of a graph.

    Attention is counted over the full T x T square that is computed. The next-token graph runs its
    last block for the last position only: keys and values for every token, the rest for one.
    """
    c, n_layer, vocab, t = cfg["d_model"], cfg["n_layer"], cfg["vocab_size"], length
    qkvo, mlp, attn = 2 * 4 * c * c, 2 * 8 * c * c, 2 * 2 * t * c  # per token and layer
    if kind == "next_token":
        last_block = t * 2 * 2 * c * c + (2 * 2 * c * c + mlp + attn)
        per_row = (n_layer - 1) * t * (qkvo + mlp + attn) + last_block + 2 * c * vocab
    elif kind == "score":
        per_row = n_layer * t * (qkvo + mlp + attn) + (t - 1) * 2 * c * vocab
    else:
        per_row = n_layer * t * (qkvo + mlp + attn)
    return batch * per_row


# -- 1. engine ------------------------------------------------------------------------------------


def engine_bench(bundle_dir: Path) -> dict:
    import torch

    from bundlespec import ONE_SHOT
    from export.bundle import load_torch_model
    from export.graphs import wrap
    from service.core.bundle import load_bundle
    from service.core.engine import Engine

    torch.set_num_threads(os.cpu_count() or 1)
    bundle = load_bundle(bundle_dir)
    from service.settings import Settings

    # The service's own grouping of rows by length, so "the engine" is what the service runs.
    engine = Engine(bundle, device="cpu", max_padding=Settings().batch_max_padding)
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
                row[f"ort_{kind}_ms"] = median_seconds(lambda k=kind, r=rows: engine.run(k, r)) * 1000
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

    # The engine on the serving workload: prompts from the load-test file, padded as the batcher pads.
    prompts = [np.asarray(e.ids[-bundle.context_length :]) for e in bundle.tokenizer.encode_batch(load_prompts())]
    workload = {}
    for batch in (1, 32):
        batches = [[prompts[(i * batch + j) % len(prompts)] for j in range(batch)] for i in range(len(prompts))]
        turns = itertools.cycle(batches)
        seconds = median_seconds(lambda t=turns: engine.run("next_token", next(t)), min_time=1.5)
        workload[batch] = batch / seconds
        log.info("engine on the prompt mix, batch %d: %.0f rows/s", batch, workload[batch])
    # The same batches of 32 padded to their longest row, as a server without length grouping runs them.
    padded_engine = Engine(bundle, device="cpu", max_padding=math.inf)
    batches = [[prompts[(i * 32 + j) % len(prompts)] for j in range(32)] for i in range(len(prompts))]
    turns = itertools.cycle(batches)
    padded = 32 / median_seconds(lambda t=turns: padded_engine.run("next_token", next(t)), min_time=1.5)
    return {
        "rows": rows_out,
        "workload_rows_per_s": workload,
        "workload_padded_rows_per_s": padded,
        "peak_gflops": matmul_peak_gflops(),
        "config": bundle.arch.model_dump(),
        "provider": engine.provider,
    }


# -- generation ------------------------------------------------------------------------------------

GEN_STREAMS = (1, 8, 32)
GEN_TOKENS = 128


INT8_BATCHES = (1, 8, 32)
INT8_LENGTH = 64


def int8_bench(bundle_dir: Path, work: Path, corpus: str | None) -> dict:
    """The int8 variant (export/quantize.py) against the float32 bundle: next-token engine speed at
    several batch sizes, how far its log-probabilities move, and validation nats/char of both through
    the score graph (windows of the full context, overlapping by one token)."""
    from export.quantize import quantize_bundle
    from model.data import fetch_corpus, split_text
    from service.core.bundle import load_bundle
    from service.core.engine import Engine
    from service.settings import Settings

    quantize_bundle(bundle_dir, work / "int8")
    bundles = {"float32": load_bundle(bundle_dir), "int8": load_bundle(work / "int8")}
    engines = {k: Engine(b, device="cpu", max_padding=Settings().batch_max_padding) for k, b in bundles.items()}
    rng = np.random.default_rng(0)
    vocab = bundles["float32"].vocab_size
    speed = []
    for batch in INT8_BATCHES:
        rows = list(rng.integers(0, vocab, (batch, INT8_LENGTH)))
        ms = {k: median_seconds(lambda e=e, r=rows: e.run("next_token", r)) * 1000 for k, e in engines.items()}
        speed.append({"batch": batch, **{f"{k}_ms": v for k, v in ms.items()}, "speedup": ms["float32"] / ms["int8"]})
        log.info("int8 next-token batch %d: %.2f ms vs %.2f ms float32", batch, ms["int8"], ms["float32"])
    rows = list(rng.integers(0, vocab, (32, INT8_LENGTH)))
    diff = max(
        float(np.abs(np.exp(a) - np.exp(b)).max())
        for a, b in zip(
            engines["int8"].run("next_token", rows), engines["float32"].run("next_token", rows), strict=True
        )
    )
    result: dict = {"length": INT8_LENGTH, "speed": speed, "max_prob_diff": diff}
    if corpus:
        val = split_text(fetch_corpus(corpus, ROOT / ".cache").read_text(encoding="utf-8")).val
        ids = np.asarray(bundles["float32"].tokenizer.encode(val).ids, dtype=np.int64)
        context = bundles["float32"].context_length
        windows = [ids[s : s + context] for s in range(0, len(ids) - 1, context - 1)]
        nats = {}
        for k, e in engines.items():
            total = 0.0
            for i in range(0, len(windows), 32):
                total -= sum(float(out[0].sum()) for out in e.run("score", windows[i : i + 32]))
            nats[k] = total / len(val)
        result.update(val_chars=len(val), nats_per_char=nats)
        log.info("int8 validation: %.4f vs %.4f nats/char", nats["int8"], nats["float32"])
    return result


def int8_report(results: dict) -> list[str]:
    q = results.get("int8")
    if not q:
        return []
    out = [
        "## int8: quantized next-token and score graphs",
        "",
        "`make int8` writes `bundles/int8`: the next-token and score graphs with int8 MatMul weights (ONNX Runtime's "
        "dynamic quantization, per output channel); attention, prefill and decode stay float32, so the attention "
        "weights stay exact. Engine alone, in-process, median of repeated calls on random ids of "
        f"{q['length']} tokens (`python -m loadtest.bench --only int8`).",
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
    return out


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def generation_bench(bundle_dir: Path) -> dict:
    """Streams of GEN_TOKENS tokens, in-process on the service's own core (no HTTP).

    continuous: the service's scheduler (one decode step for every active sequence);
    one at a time: the same scheduler with MAX_ACTIVE_SEQUENCES=1 (the cache, no batching);
    recompute: no cache, the next-token graph over each whole sequence at every step, all
    streams batched together in lock-step (the engine groups them by length as the service does).
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from service.core.bundle import load_bundle
    from service.core.engine import Engine
    from service.core.generation import GenerationParams, Scheduler
    from service.core.sampling import SamplingParams
    from service.settings import Settings

    bundle = load_bundle(bundle_dir)
    engine = Engine(bundle, device="cpu", max_padding=Settings().batch_max_padding)
    room = bundle.context_length - GEN_TOKENS
    prompts = [np.asarray(e.ids[-room:], dtype=np.int64) for e in bundle.tokenizer.encode_batch(load_prompts())]
    params = GenerationParams(max_tokens=GEN_TOKENS, sampling=SamplingParams(temperature=0))

    def summary(n: int, wall: float, ttft: list[float], itl: list[float]) -> dict:
        return {
            "streams": n,
            "tokens_per_s": n * GEN_TOKENS / wall,
            "ttft_p50_ms": _percentile(ttft, 50),
            "ttft_p99_ms": _percentile(ttft, 99),
            "itl_p50_ms": _percentile(itl, 50),
            "itl_p99_ms": _percentile(itl, 99),
        }

    async def scheduled(n: int, max_active: int) -> dict:
        executor = ThreadPoolExecutor(1)
        sched = Scheduler(engine, executor, bundle.tokenizer, max_active, max_active * bundle.context_length, 1024, 60)
        sched.start()
        ttft: list[float] = []
        itl: list[float] = []

        async def one(stream) -> None:
            last = stream.submitted
            async for i, _ in _aenumerate(stream):
                now = time.perf_counter()
                (ttft if i == 0 else itl).append(now - last)
                last = now

        started = time.perf_counter()
        streams = sched.submit([(prompts[i % len(prompts)], params) for i in range(n)])
        await asyncio.gather(*(one(s) for s in streams))
        wall = time.perf_counter() - started
        await sched.stop(1)
        executor.shutdown()
        return summary(n, wall, ttft, itl)

    def recompute(n: int) -> dict:
        seqs = [list(prompts[i % len(prompts)]) for i in range(n)]
        steps = []
        started = time.perf_counter()
        for _ in range(GEN_TOKENS):
            t0 = time.perf_counter()
            out = engine.run("next_token", [np.asarray(s) for s in seqs])
            for s, lp in zip(seqs, out, strict=True):
                s.append(int(np.argmax(lp)))
            steps.append(time.perf_counter() - t0)
        wall = time.perf_counter() - started
        return summary(n, wall, [steps[0]] * n, [t for t in steps[1:] for _ in range(n)])

    asyncio.run(scheduled(4, 4))  # warm-up
    rows = []
    for n in GEN_STREAMS:
        for mode, run in (
            ("continuous batching", lambda n=n: asyncio.run(scheduled(n, 32))),
            ("one at a time, with the cache", lambda n=n: asyncio.run(scheduled(n, 1))),
            ("recompute, no cache", lambda n=n: recompute(n)),
        ):
            row = {"mode": mode, **run()}
            log.info("generation %s, %d streams: %.0f tokens/s", mode, n, row["tokens_per_s"])
            rows.append(row)
    return {"tokens": GEN_TOKENS, "rows": rows}


async def _aenumerate(stream):
    i = 0
    async for item in stream:
        yield i, item
        i += 1


# -- 2. serving -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {**os.environ, **env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.log_file = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(argv, env=environ, cwd=ROOT, stdout=self.log_file, stderr=self.log_file)

    def wait_ready(self, path: str, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {timeout}s")

    def metrics(self) -> str:
        import httpx

        return httpx.get(self.url + "/metrics", timeout=10).text

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log_file.close()


WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKJSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"non2xx\\": %d, "
    .. "\\"socket_errors\\": %d, \\"p50\\": %d, \\"p90\\": %d, \\"p99\\": %d}\\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def wrk_script(directory: Path, path: str, bodies: list[bytes] | None = None, name: str = "") -> Path:
    """A wrk Lua script that cycles through the bodies (POST), or GETs path, and prints JSON at the end."""
    if bodies:
        lua = ", ".join(f"[==[{b.decode()}]==]" for b in bodies)
        request = (
            f"bodies = {{{lua}}}\ncounter = 0\nrequest = function()\n  counter = counter + 1\n"
            f'  return wrk.format("POST", "{path}", {{["Content-Type"] = "application/json"}}, '
            "bodies[(counter % #bodies) + 1])\nend\n"
        )
    else:
        request = f'request = function() return wrk.format("GET", "{path}") end\n'
    script = directory / ("wrk" + re.sub(r"\W+", "_", path + name) + ".lua")
    script.write_text(request + WRK_DONE)
    return script


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> dict:
    # One wrk thread: on a 2-core machine the load generator must leave the server a core.
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    match = re.search(r"WRKJSON (\{.*\})", out.stdout)
    if not match:
        raise RuntimeError(f"wrk gave no result: {out.stdout}\n{out.stderr}")
    r = json.loads(match.group(1))
    ok = r["requests"] - r["non2xx"]
    seconds_run = r["duration_us"] / 1e6
    return {
        "concurrency": connections,
        "rps": ok / seconds_run,
        "requests": r["requests"],
        "errors": r["non2xx"],
        "socket_errors": r["socket_errors"],
        "p50_ms": r["p50"] / 1000,
        "p90_ms": r["p90"] / 1000,
        "p99_ms": r["p99"] / 1000,
    }


def batch_totals(metrics: str, endpoint: str = "next_token") -> tuple[float, float]:
    """(rows, batches) so far, from the service's batch-size histogram."""
    values = []
    for name in ("sum", "count"):
        m = re.search(rf'attnserve_batch_size_{name}{{endpoint="{endpoint}"}} ([0-9.e+]+)', metrics)
        values.append(float(m.group(1)) if m else 0.0)
    return values[0], values[1]


TRITON_VENV = ROOT / ".venv-triton"
TRITON = "Triton (PyTriton), KServe v2"
SHORT_PROMPT_TOKENS = 12
BASELINE_SERVER = [
    sys.executable,
    "-m",
    "uvicorn",
    "loadtest.baselines:app",
    "--port",
    "{port}",
    "--log-level",
    "warning",
    "--no-access-log",
]


def triton_server(bundle_dir: Path) -> tuple[list[str], dict[str, str]] | None:
    """PyTriton's command and environment, or None when its virtual environment is missing."""
    python = TRITON_VENV / "bin" / "python"
    if not python.exists():
        return None
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Triton's Python backend stub needs the interpreter's own libpython, not the one PyTriton ships.
    return (
        [str(python), "-m", "loadtest.triton_server", "--bundle", str(bundle_dir), "--http-port", "{port}"],
        {"LD_LIBRARY_PATH": libdir},
    )


Servers = dict[str, tuple[list[str], dict[str, str], str, Path]]  # name: (command, environment, ready path, wrk)


def drive(servers: Servers, seconds: float, work: Path) -> dict[str, list[dict]]:
    """Each server in turn, alone on the machine: wrk at each concurrency after a warm-up."""
    out = {}
    for name, (argv, env, ready, script) in servers.items():
        server = Server(re.sub(r"\W+", "_", name), argv, env, work)
        try:
            server.wait_ready(ready)
            run_wrk(server.url, script, 16, 2)  # warm-up
            points = []
            for c in CONCURRENCY:
                before = batch_totals(server.metrics()) if name.startswith("service") else None
                cpu_before = main_thread_cpu_s(server.process.pid)
                point = run_wrk(server.url, script, c, seconds)
                if name.startswith("service"):
                    # The event loop's own thread: the Python cost of each request, inference excluded.
                    spent = main_thread_cpu_s(server.process.pid) - cpu_before
                    point["loop_us_per_request"] = spent * 1e6 / max(1, point["requests"])
                log.info(
                    "%s c=%d: %.1f rps, p50 %.1f ms, p99 %.1f ms, errors %d",
                    name,
                    c,
                    point["rps"],
                    point["p50_ms"],
                    point["p99_ms"],
                    point["errors"],
                )
                points.append(point)
                if before is not None:
                    after = batch_totals(server.metrics())
                    point["mean_batch"] = (after[0] - before[0]) / max(1.0, after[1] - before[1])
            out[name] = points
        finally:
            server.stop()
    return out


def main_thread_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process's main thread, from /proc."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def short_prompt(bundle_dir: Path, tokens: int = SHORT_PROMPT_TOKENS) -> str:
    """The first prompt of the prompt file, cut to exactly `tokens` tokens by the bundle's tokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))
    ids = tok.encode(" ".join(load_prompts())).ids[:tokens]
    return tok.decode(ids)


def service_answer(env: dict[str, str], body: bytes, work: Path) -> str:
    """The service's own answer to one next-token request: the body a constant server replays."""
    import httpx

    server = Server("answer_source", [sys.executable, "-m", "service"], env, work)
    try:
        server.wait_ready("/readyz")
        return httpx.post(
            server.url + "/v1/next-token", content=body, headers={"content-type": "application/json"}
        ).text
    finally:
        server.stop()


def by_concurrency(servers: dict[str, list[dict]]) -> dict[str, dict[int, dict]]:
    """Each server's points keyed by their concurrency."""
    return {name: {p["concurrency"]: p for p in points} for name, points in servers.items()}


def service_env(bundle_dir: Path) -> dict[str, str]:
    return {"MODEL_DIR": str(bundle_dir), "DEVICE": "cpu", "LOG_LEVEL": "warning"}


def serving_bench(bundle_dir: Path, seconds: float, work: Path) -> dict:
    """The service against MAX_BATCH_SIZE=1, the HTTP layer alone and a naive PyTorch server."""
    bodies = request_bodies("next-token")
    script = wrk_script(work, "/v1/next-token", bodies)
    py = sys.executable
    env = service_env(bundle_dir)
    # The constant server answers with a real answer of the service, of the size the service sends.
    constant_body = service_answer(env, bodies[0], work)
    servers: Servers = {
        "service (dynamic batching)": ([py, "-m", "service"], env, "/readyz", script),
        "service, MAX_BATCH_SIZE=1": ([py, "-m", "service"], {**env, "MAX_BATCH_SIZE": "1"}, "/readyz", script),
        "bare FastAPI, constant body": (
            BASELINE_SERVER,
            {"BASELINE": "constant", "CONSTANT_BODY": constant_body},
            "/healthz",
            script,
        ),
        "naive PyTorch server": (
            BASELINE_SERVER,
            {"BASELINE": "naive", "MODEL_DIR": str(bundle_dir)},
            "/healthz",
            script,
        ),
    }
    return {"servers": drive(servers, seconds, work), "constant_body_bytes": len(constant_body)}


def kserve_bench(bundle_dir: Path, seconds: float, work: Path) -> dict:
    """The service and Triton on the same KServe v2 request bytes from the same wrk, with the
    service's native route on the same prompts for reference, all in one run, on two workloads:
    the prompt mix, and one fixed short prompt (where the request path, not the model, is the cost)."""
    py = sys.executable
    env = service_env(bundle_dir)
    triton = triton_server(bundle_dir)
    if triton is None:
        log.warning("no %s: the Triton column is left out (make bench creates it)", TRITON_VENV)
    workloads = {
        "prompt mix": load_prompts(),
        f"short prompt ({SHORT_PROMPT_TOKENS} tokens)": [short_prompt(bundle_dir)],
    }
    out: dict = {"date": dt.date.today().isoformat(), "seconds": seconds, "workloads": {}}
    for label, prompts in workloads.items():
        tag = re.sub(r"\W+", "_", label)
        v2_script = wrk_script(work, "/v2/models/next_token/infer", kserve_bodies(prompts), tag)
        servers: Servers = {
            "service, native /v1/next-token": (
                [py, "-m", "service"],
                env,
                "/readyz",
                wrk_script(work, "/v1/next-token", request_bodies("next-token", prompts), tag),
            ),
            "service, KServe v2": ([py, "-m", "service"], env, "/v2/models/next_token/ready", v2_script),
        }
        if triton is not None:
            # Triton is ready before PyTriton has bound the model, so wait for the model itself.
            servers[TRITON] = (triton[0], triton[1], "/v2/models/next_token/ready", v2_script)
        out["workloads"][label] = {"prompts": len(prompts), "servers": drive(servers, seconds, work)}
    return out


def toy_http_bench(seconds: float, work: Path) -> dict:
    """The HTTP-bound regime, where the model costs almost nothing (as on a GPU): the service on the
    tests' toy model against the bare FastAPI endpoint of the same shape, on the same requests."""
    from export.toy import build_toy_bundle

    bundle = build_toy_bundle(work / "toy")
    bodies = request_bodies("next-token", ["I do not like"])
    script = wrk_script(work, "/v1/next-token", bodies, "toy")
    env = service_env(bundle)
    body = service_answer(env, bodies[0], work)
    servers: Servers = {
        "service, toy model": ([sys.executable, "-m", "service"], env, "/readyz", script),
        "bare FastAPI, the same answer": (
            BASELINE_SERVER,
            {"BASELINE": "constant", "CONSTANT_BODY": body},
            "/healthz",
            script,
        ),
    }
    return {"servers": drive(servers, seconds, work), "body_bytes": len(body)}


def toy_report(results: dict, docs: Path) -> list[str]:
    toy = results.get("toy_http")
    if not toy:
        return []
    ours, bare = (toy["servers"][k] for k in ("service, toy model", "bare FastAPI, the same answer"))
    out = [
        "## The HTTP-bound regime: a model that costs almost nothing",
        "",
        "The tests' toy model (2 layers, width 32, context 24) makes inference nearly free, as a GPU does for the "
        "real one, so the request path is all that is left. The service on it against the bare FastAPI endpoint "
        f"that returns the service's own {toy['body_bytes']}-byte answer, on the same request, from the same wrk.",
        "",
        "| clients | service req/s | bare FastAPI req/s | ratio | service p99 ms | bare p99 ms | loop µs/request |",
        "|---|---|---|---|---|---|---|",
    ]
    for a, b in zip(ours, bare, strict=True):
        out.append(
            f"| {a['concurrency']} | {a['rps']:.0f} | {b['rps']:.0f} | {a['rps'] / b['rps']:.0%} | {a['p99_ms']:.1f} | "
            f"{b['p99_ms']:.1f} | {a.get('loop_us_per_request', 0):.0f} |"
        )
    before_file = docs / "toy_http_before.json"
    if before_file.exists():
        # The lean-path change, measured with this section before it (its commit) and in this run after.
        before = json.loads(before_file.read_text())
        then = {p["concurrency"]: p for p in before["servers"]["service, toy model"]}
        out += [
            "",
            f"The request path before and after the lean-path change (before: commit {before['commit']}, "
            f"`{before['note']}`; after: this run):",
            "",
            "| clients | loop µs/request before | after | req/s before | after |",
            "|---|---|---|---|---|",
        ]
        for a in ours:
            b = then.get(a["concurrency"])
            if b:
                out.append(
                    f"| {a['concurrency']} | {b['loop_us_per_request']:.0f} | {a['loop_us_per_request']:.0f} | "
                    f"{b['rps']:.0f} | {a['rps']:.0f} |"
                )
    return [*out, ""]


def payload_bench(bundle_dir: Path, work: Path, reps: int = 5) -> dict:
    """A full-context attention answer (every layer and head), from one httpx client and one server:
    attnserve's JSON (/v1/attention) against KServe v2 with JSON data and with binary tensors.

    Time is what the client sees: the request, the transfer, and decoding into a float32 array.
    """
    import httpx

    env = {"MODEL_DIR": str(bundle_dir), "DEVICE": "cpu", "LOG_LEVEL": "warning"}
    server = Server("payload", [sys.executable, "-m", "service"], env, work)
    text = " ".join(load_prompts()) * 4  # longer than the context: truncated to its last tokens
    v2_input = {"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}

    def native(client: httpx.Client) -> tuple[int, np.ndarray]:
        r = client.post("/v1/attention", json={"texts": [text], "truncate": True})
        r.raise_for_status()
        return len(r.content), np.asarray(r.json()["results"][0]["attention"], dtype=np.float32)

    def v2(binary: bool) -> Callable[[httpx.Client], tuple[int, np.ndarray]]:
        body = {
            "inputs": [v2_input],
            "parameters": {"truncate": True},
            "outputs": [{"name": "attention_weights", "parameters": {"binary_data": binary}}],
        }

        def call(client: httpx.Client) -> tuple[int, np.ndarray]:
            r = client.post("/v2/models/attention/infer", json=body)
            r.raise_for_status()
            if binary:
                n = int(r.headers["inference-header-content-length"])
                out = json.loads(r.content[:n])["outputs"][0]
                return len(r.content), np.frombuffer(r.content, np.float32, offset=n).reshape(out["shape"])[0]
            out = r.json()["outputs"][0]
            return len(r.content), np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])[0]

        return call

    forms = {"attnserve JSON (/v1/attention)": native, "KServe v2, JSON data": v2(False), "KServe v2, binary": v2(True)}
    rows = []
    try:
        server.wait_ready("/readyz")
        with httpx.Client(base_url=server.url, timeout=120) as client:
            reference = None
            for name, call in forms.items():
                size, weights = call(client)  # warm-up, and the answer to compare
                times = []
                for _ in range(reps):
                    started = time.perf_counter()
                    call(client)
                    times.append(time.perf_counter() - started)
                reference = weights if reference is None else reference
                rows.append(
                    {
                        "form": name,
                        "bytes": size,
                        "median_ms": statistics.median(times) * 1000,
                        "values": int(weights.size),
                        "max_abs_diff": float(np.abs(weights - reference).max()),
                    }
                )
                log.info("payload %s: %d bytes, %.0f ms", name, size, rows[-1]["median_ms"])
    finally:
        server.stop()
    return {"shape": list(reference.shape) if reference is not None else [], "reps": reps, "rows": rows}


def explorer_bench(bundle_dir: Path, work: Path) -> dict | None:
    """The explorer's full-context model view in Debian's chromium, or None where chromium is missing."""
    from loadtest.browser import CHROMIUM
    from loadtest.explorer import render_bench

    if CHROMIUM is None:
        log.warning("no chromium: the explorer's render time is left out (apt-get install chromium)")
        return None
    result = render_bench(bundle_dir, work)
    log.info("explorer model view: drawn in %.0f ms, %.0f ms from load", result["draw_ms"], result["load_ms"])
    return result


def explorer_report(results: dict) -> list[str]:
    e = results.get("explorer")
    if not e:
        return []
    return [
        "## The attention explorer at the full context",
        "",
        f"The model view (every layer x head as a {e['tokens']} x {e['tokens']} heatmap) in Debian's chromium, "
        f"headless, driven by Playwright; median of {e['reps']} page loads after a warm-up "
        "(`python -m loadtest.bench --only explorer`). Drawing, by the page's own clock: "
        f"**{e['draw_ms']:.0f} ms**. From navigation to drawn, with the page, the score, next-token and "
        f"binary attention requests and the drawing: **{e['load_ms']:.0f} ms**.",
        "",
    ]


def payload_report(results: dict) -> list[str]:
    payload = results.get("payload")
    if not payload:
        return []
    rows = {r["form"]: r for r in payload["rows"]}
    native, binary = rows["attnserve JSON (/v1/attention)"], rows["KServe v2, binary"]
    out = [
        "## Attention payloads: JSON against KServe v2 binary tensors",
        "",
        f"One full-context attention answer, every layer and head: {' x '.join(map(str, payload['shape']))} "
        f"(layers x heads x query x key) = {native['values']:,} float32 weights. One httpx client, one server, "
        f"median of {payload['reps']} after a warm-up; the time covers the request, the transfer and decoding "
        "into a float32 numpy array on the client (`python -m loadtest.bench --only payload`).",
        "",
        "| form | bytes | client ms | largest difference from the JSON answer |",
        "|---|---|---|---|",
    ]
    for r in payload["rows"]:
        out.append(f"| {r['form']} | {r['bytes']:,} | {r['median_ms']:.0f} | {r['max_abs_diff']:.1e} |")
    out += [
        "",
        f"Binary is {native['bytes'] / binary['bytes']:.1f}x smaller and "
        f"{native['median_ms'] / binary['median_ms']:.1f}x faster end to end. "
        + (
            "All three forms decode to the same float32 values (JSON writes each weight's shortest float32 decimal)."
            if all(r["max_abs_diff"] == 0 for r in payload["rows"])
            else "The forms' values differ by the largest difference shown."
        ),
        "",
    ]
    return out


def next_token_check(bundle_dir: Path, seconds: float, docs: Path, label: str) -> int:
    """The next-token serving curve of the service alone, saved under a label; see report()."""
    bodies = request_bodies("next-token")
    env = {"MODEL_DIR": str(bundle_dir), "DEVICE": "cpu", "LOG_LEVEL": "warning"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        script = wrk_script(work, "/v1/next-token", bodies)
        server = Server("service", [sys.executable, "-m", "service"], env, work)
        try:
            server.wait_ready("/readyz")
            run_wrk(server.url, script, 16, 2)  # warm-up
            points = [run_wrk(server.url, script, c, seconds) for c in CONCURRENCY]
        finally:
            server.stop()
    for point in points:
        log.info(
            "%s c=%d: %.1f rps, p50 %.1f ms, p99 %.1f ms",
            label,
            point["concurrency"],
            point["rps"],
            point["p50_ms"],
            point["p99_ms"],
        )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    result = {"label": label, "commit": commit.stdout.strip(), "seconds": seconds, "points": points}
    docs.mkdir(parents=True, exist_ok=True)
    (docs / f"next_token_{label}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def client_check(seconds: float, work: Path) -> dict:
    """Our Python load client against wrk on the trivial endpoint: can it keep up?"""
    server = Server("client_check", BASELINE_SERVER, {"BASELINE": "constant"}, work)
    try:
        server.wait_ready("/healthz")
        wrk = run_wrk(server.url, wrk_script(work, "/healthz"), 16, seconds)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "loadtest",
                "--url",
                server.url,
                "--path",
                "/healthz",
                "--concurrency",
                "16",
                "--duration",
                str(seconds),
                "--out",
                str(work / "client.json"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        ours = json.loads((work / "client.json").read_text())
        log.info("client check: wrk %.0f rps, python -m loadtest %.0f rps", wrk["rps"], ours["throughput_rps"])
        return {"wrk_rps": wrk["rps"], "loadtest_rps": ours["throughput_rps"], "loadtest_stdout": out.stdout.strip()}
    finally:
        server.stop()


# -- report ---------------------------------------------------------------------------------------


def plot_serving(serving: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, points in serving["servers"].items():
        cs = [p["concurrency"] for p in points]
        ax1.plot(cs, [p["rps"] for p in points], "o-", label=name)
        ax2.plot(cs, [p["p99_ms"] for p in points], "o-", label=name)
    for ax, title in ((ax1, "throughput (successful requests/s)"), (ax2, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in (ax1, ax2):
        ax.set_yscale("log")  # the HTTP-only baseline is two orders of magnitude above the rest
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _kserve_workloads(results: dict) -> dict[str, dict]:
    kserve = results.get("kserve", {})
    if "servers" in kserve:  # a run from before the short-prompt workload
        return {"prompt mix": kserve}
    return kserve.get("workloads", {})


def triton_rows(results: dict, top: int) -> list[str]:
    """Both servers on the same KServe v2 request bytes, from the same wrk, per workload; the short
    prompt has the 1.3x target of the lean request path."""
    rows = []
    for label, w in _kserve_workloads(results).items():
        at = by_concurrency(w["servers"])
        triton, ours = at.get(TRITON), at.get("service, KServe v2")
        factor = 1.3 if label.startswith("short") else 1.0
        goal = f">= {factor:g}x Triton's throughput at concurrency {top}, {label}, same v2 requests, lower p99"
        if triton is None or ours is None:
            rows.append(f"| {goal} | not measured (no .venv-triton) | - |")
            continue
        ratio = ours[top]["rps"] / triton[top]["rps"]
        ok = ratio >= factor and ours[top]["p99_ms"] <= triton[top]["p99_ms"]
        rows.append(
            f"| {goal} | {ours[top]['rps']:.0f} vs {triton[top]['rps']:.0f} req/s ({ratio:.2f}x); "
            f"p99 {ours[top]['p99_ms']:.0f} vs {triton[top]['p99_ms']:.0f} ms | {verdict(ok)} |"
        )
    return rows


def more_target_rows(results: dict) -> list[str]:
    """Targets of the HTTP-bound regime and of int8, from their sections."""
    rows = []
    if results.get("toy_http"):
        toy = results["toy_http"]["servers"]
        ours, bare = toy["service, toy model"][-1], toy["bare FastAPI, the same answer"][-1]
        ratio = ours["rps"] / bare["rps"]
        rows.append(
            f"| toy model >= 50% of bare FastAPI's requests/s (concurrency {ours['concurrency']}) | "
            f"{ours['rps']:.0f} vs {bare['rps']:.0f} req/s = {ratio:.0%} | {verdict(ratio >= 0.5)} |"
        )
    q = results.get("int8")
    if q and "nats_per_char" in q:
        big = [r for r in q["speed"] if r["batch"] >= 8]
        delta = q["nats_per_char"]["int8"] - q["nats_per_char"]["float32"]
        ok = all(r["speedup"] >= 2 for r in big) and delta <= 0.005
        rows.append(
            "| int8 next-token >= 2x the engine's throughput at batch 8 to 32, for at most 0.005 nats/char | "
            + ", ".join(f"{r['speedup']:.2f}x at {r['batch']}" for r in big)
            + f"; {delta:+.4f} nats/char | {verdict(ok)} |"
        )
    return rows


def kserve_report(results: dict) -> list[str]:
    kserve = results.get("kserve")
    if not kserve:
        return []
    out = [
        "## KServe v2: attnserve and Triton on the same requests",
        "",
        f"Run on {kserve['date']}, all rows in that one run (`python -m loadtest.bench --only kserve`; also part of "
        "`make bench`). The two v2 rows get the same request bytes from the same wrk (one thread, "
        f"{kserve['seconds']:g} s per point after a warm-up): each prompt as a BYTES `text` input to "
        "`/v2/models/next_token/infer`, the top 5 from the classification extension. Triton runs through "
        "PyTriton, its dynamic batcher at max_batch_size 32 and 2 ms queue delay, in its own virtual environment, "
        "with the same ONNX graph, tokenizer, session options, padding and length grouping as the service "
        "(`loadtest/triton_server.py`): the comparison is of the servers, not of how they pad. The native row is "
        "the service on the same prompts through `/v1/next-token`, for reference. *Loop µs/request* is the "
        "CPU time of the service's event-loop thread (from `/proc`) over the requests served: the Python cost "
        "of a request, inference excluded.",
        "",
    ]
    for label, w in _kserve_workloads(results).items():
        out += [
            f"**{label}**" + (" (`loadtest/prompts.txt`)" if label == "prompt mix" else ", the same text every time"),
            "",
            "| server | clients | requests/s | p50 ms | p90 ms | p99 ms | errors | mean batch | loop µs/request |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, points in w["servers"].items():
            for p in points:
                batch = f"{p['mean_batch']:.1f}" if "mean_batch" in p else ""
                loop = f"{p['loop_us_per_request']:.0f}" if "loop_us_per_request" in p else ""
                out.append(
                    f"| {name} | {p['concurrency']} | {p['rps']:.1f} | {p['p50_ms']:.1f} | {p['p90_ms']:.1f} | "
                    f"{p['p99_ms']:.1f} | {p['errors'] + p['socket_errors']} | {batch} | {loop} |"
                )
        out.append("")
    return out


def report(results: dict, docs: Path, notes: str) -> str:
    engine, serving, check, machine = results["engine"], results["serving"], results["client_check"], results["machine"]
    servers = serving["servers"]
    at = by_concurrency(servers)
    dyn, one = at["service (dynamic batching)"], at["service, MAX_BATCH_SIZE=1"]
    naive = at["naive PyTorch server"]
    http_limit = max(p["rps"] for p in servers["bare FastAPI, constant body"])
    top = max(CONCURRENCY)
    by_shape = {(r["batch"], r["length"]): r for r in engine["rows"]}
    b1 = [by_shape[(1, t)]["speedup"] for t in LENGTHS]
    workload = {int(k): v for k, v in engine["workload_rows_per_s"].items()}  # JSON keys are strings
    engine_32 = workload[32]
    best_service = max(p["rps"] for p in servers["service (dynamic batching)"])
    out = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`python -m loadtest.bench`) on {machine['date']}. Every figure below comes",
        "from that one run on one machine; the ratios compare numbers taken minutes apart under the same",
        "conditions. Raw results: `docs/bench/results.json`.",
        "",
        f"- machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; no GPU",
        f"- software: Python {machine['python']}, onnxruntime {machine['onnxruntime']}, torch {machine['torch']}, "
        f"uvicorn {machine['uvicorn']}, wrk {machine['wrk']}",
        f"- model: {engine['config']['n_layer']} layers, {engine['config']['n_head']} heads, width "
        f"{engine['config']['d_model']}, vocabulary {engine['config']['vocab_size']}, context "
        f"{engine['config']['context_length']}; ONNX Runtime provider {engine['provider']}",
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        f"| ONNX Runtime next-token >= 3x PyTorch eager at batch 1 | {', '.join(f'{s:.1f}x' for s in b1)} "
        f"(T = {', '.join(map(str, LENGTHS))}) | {verdict(min(b1) >= 3)} |",
        f"| dynamic batching >= 4x MAX_BATCH_SIZE=1 at concurrency {top}, lower p99 | "
        f"{dyn[top]['rps'] / one[top]['rps']:.1f}x; p99 {dyn[top]['p99_ms']:.0f} vs {one[top]['p99_ms']:.0f} ms | "
        f"{verdict(dyn[top]['rps'] >= 4 * one[top]['rps'] and dyn[top]['p99_ms'] < one[top]['p99_ms'])} |",
        f"| service at saturation >= 80% of the engine at the same batch size | {best_service:.0f} req/s vs engine "
        f"{engine_32:.0f} rows/s at batch 32 on the same prompts = {best_service / engine_32:.0%} | "
        f"{verdict(best_service >= 0.8 * engine_32)} |",
        f"| >= 5x the naive PyTorch server (concurrency {top}) | {dyn[top]['rps'] / naive[top]['rps']:.1f}x | "
        f"{verdict(dyn[top]['rps'] >= 5 * naive[top]['rps'])} |",
        *triton_rows(results, top),
        *more_target_rows(results),
        "",
        "## 1. Engine: PyTorch eager vs ONNX Runtime",
        "",
        "Same weights (PyTorch rebuilt from the bundle), same random token ids, in-process, median of",
        f"repeated calls. Each uses all {machine['cores']} cores. The machine's own float32 matrix-multiply",
        f"rate (2048 x 2048 x 2048, PyTorch, best of 10) is **{engine['peak_gflops']:.0f} GFLOP/s**.",
        "",
        "| batch | tokens | PyTorch next-token ms | ORT next-token ms | speed-up | ORT tokens/s | ORT GFLOP/s "
        "(% of peak) | ORT attention ms | ORT score ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in engine["rows"]:
        out.append(
            f"| {r['batch']} | {r['length']} | {r['torch_next_token_ms']:.2f} | {r['ort_next_token_ms']:.2f} | "
            f"{r['speedup']:.1f}x | {r['ort_tokens_per_s']:,.0f} | {r['ort_next_token_gflops']:.1f} "
            f"({r['ort_next_token_gflops'] / engine['peak_gflops']:.0%}) | {r['ort_attention_ms']:.2f} | "
            f"{r['ort_score_ms']:.2f} |"
        )
    out += [
        "",
        f"On the load test's own prompt mix (in the batcher's length groups), the engine alone runs "
        f"{workload[1]:.0f} rows/s one at a time and {engine_32:.0f} rows/s in batches of 32"
        + (
            f"; the same batches padded to their longest row run {engine['workload_padded_rows_per_s']:.0f} rows/s."
            if "workload_padded_rows_per_s" in engine
            else "."
        ),
        "",
        "![engine](docs/bench/engine.png)",
        "",
        "## 2. Serving: throughput and latency against concurrency",
        "",
        f"`POST /v1/next-token`, one prompt per request from `loadtest/prompts.txt` (short to long), "
        f"driven by wrk (one thread) for {results['seconds']:g} s per point after a warm-up. The constant server "
        f"returns a fixed {serving['constant_body_bytes']}-byte next-token answer. Triton is in section 3, on "
        "the protocol both servers speak.",
        "",
        "| server | clients | requests/s | p50 ms | p90 ms | p99 ms | errors | mean batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, points in servers.items():
        for p in points:
            batch = f"{p['mean_batch']:.1f}" if "mean_batch" in p else ""
            out.append(
                f"| {name} | {p['concurrency']} | {p['rps']:.1f} | {p['p50_ms']:.1f} | {p['p90_ms']:.1f} | "
                f"{p['p99_ms']:.1f} | {p['errors'] + p['socket_errors']} | {batch} |"
            )
    out += [
        "",
        "![serving](docs/bench/serving.png)",
        "",
        f"The HTTP layer alone (bare FastAPI, constant body) peaks at {http_limit:.0f} requests/s here; the "
        f"service reaches {best_service / http_limit:.0%} of it.",
        "",
        *kserve_report(results),
        *toy_report(results, docs),
        *generation_report(results),
        *payload_report(results),
        *explorer_report(results),
        *int8_report(results),
        *refactor_report(docs),
        "## The load client against wrk",
        "",
        f"On the trivial `GET /healthz` of the constant server, 16 connections: wrk {check['wrk_rps']:.0f} requests/s, "
        f"`python -m loadtest` {check['loadtest_rps']:.0f} requests/s ({check['loadtest_rps'] / check['wrk_rps']:.0%} "
        "of wrk). The Python client shares the two cores with the server, so the benchmark drives load with wrk; "
        "the Python client is for users' own runs, where the model, not the client, is the limit.",
        "",
        notes.strip(),
        "",
    ]
    return "\n".join(out)


def generation_report(results: dict) -> list[str]:
    gen = results.get("generation")
    if not gen:
        return []
    by = {(r["mode"], r["streams"]): r for r in gen["rows"]}
    one = min(GEN_STREAMS)
    top = max(GEN_STREAMS)
    cache_x = (
        by[("one at a time, with the cache", one)]["tokens_per_s"] / by[("recompute, no cache", one)]["tokens_per_s"]
    )
    batch_x = (
        by[("continuous batching", top)]["tokens_per_s"] / by[("one at a time, with the cache", top)]["tokens_per_s"]
    )
    out = [
        "## Generation: KV cache and continuous batching",
        "",
        f"Streams of {gen['tokens']} greedy tokens from prompts of `loadtest/prompts.txt` (cut to leave room), "
        "in-process on the service's own core, no HTTP. *Continuous batching* is the service's scheduler; "
        "*one at a time* is the same scheduler with MAX_ACTIVE_SEQUENCES=1; *recompute* has no cache and runs "
        "the next-token graph over every whole sequence at each step, all streams batched in lock-step (the "
        "same length grouping as the service). Time to first token (TTFT) counts from submission, so under "
        "one-at-a-time it includes the wait for earlier streams.",
        "",
        f"- the cache vs recomputation, one stream: **{cache_x:.1f}x** tokens/s (target >= 5x: "
        f"{verdict(cache_x >= 5)})",
        f"- continuous batching vs one at a time, {top} streams: **{batch_x:.1f}x** tokens/s (target >= 4x: "
        f"{verdict(batch_x >= 4)})",
        "",
        "| mode | streams | tokens/s | TTFT p50 ms | TTFT p99 ms | inter-token p50 ms | inter-token p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in gen["rows"]:
        out.append(
            f"| {r['mode']} | {r['streams']} | {r['tokens_per_s']:.0f} | {r['ttft_p50_ms']:.1f} | "
            f"{r['ttft_p99_ms']:.1f} | {r['itl_p50_ms']:.1f} | {r['itl_p99_ms']:.1f} |"
        )
    return [*out, ""]


def refactor_report(docs: Path) -> list[str]:
    """Next-token serving before and after a change, from --next-token-only runs."""
    runs = [
        json.loads(f.read_text())
        for f in (docs / "next_token_before.json", docs / "next_token_after.json")
        if f.exists()
    ]
    if len(runs) < 2:
        return []
    before, after = ({p["concurrency"]: p for p in r["points"]} for r in runs)
    out = [
        "## Next-token path before and after the protocol-neutral core",
        "",
        f"`python -m loadtest.bench --next-token-only before` on {runs[0]['commit']} (before the refactor) and "
        f"`--next-token-only after` on {runs[1]['commit']}: the service alone, `POST /v1/next-token`, wrk for "
        f"{runs[1]['seconds']:g} s per point. Raw: `docs/bench/next_token_{{before,after}}.json`.",
        "",
        "| clients | before req/s | after req/s | before p99 ms | after p99 ms |",
        "|---|---|---|---|---|",
    ]
    for c in sorted(after):
        b, a = before[c], after[c]
        out.append(f"| {c} | {b['rps']:.0f} | {a['rps']:.0f} | {b['p99_ms']:.1f} | {a['p99_ms']:.1f} |")
    return [*out, ""]


def machine_info() -> dict:
    import onnxruntime
    import torch
    import uvicorn

    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1:2]
    return {
        "date": dt.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "uvicorn": uvicorn.__version__,
        "wrk": wrk[0] if wrk else "?",
    }


README = ROOT / "README.md"
SUMMARY_START, SUMMARY_END = "<!-- bench-summary: written by make bench -->", "<!-- /bench-summary -->"


def readme_summary(results: dict) -> str:
    """The README's performance summary, from the results alone."""
    serving = by_concurrency(results["serving"]["servers"])
    dyn = serving["service (dynamic batching)"]
    lines = [
        f"From the latest `make bench` ({results['machine']['date']}, {results['machine']['cores']} CPU cores, the "
        "load generator on the same cores):",
        "",
        f"- next-token on the prompt mix: {dyn[1]['rps']:.0f} req/s for 1 client (p50 {dyn[1]['p50_ms']:.0f} ms), "
        f"{dyn[16]['rps']:.0f} req/s for 16 (p99 {dyn[16]['p99_ms']:.0f} ms);",
    ]
    for label, w in _kserve_workloads(results).items():
        at = by_concurrency(w["servers"])
        if TRITON in at:
            ours, tri = at["service, KServe v2"][64], at[TRITON][64]
            lines.append(
                f"- against Triton on the same KServe v2 requests, {label}, 64 clients: "
                f"{ours['rps'] / tri['rps']:.2f}x its throughput, p99 {ours['p99_ms']:.0f} vs {tri['p99_ms']:.0f} ms;"
            )
    if results.get("toy_http"):
        toy = results["toy_http"]["servers"]
        ours, bare = toy["service, toy model"][-1], toy["bare FastAPI, the same answer"][-1]
        lines.append(f"- with a model that costs nothing (the toy): {ours['rps'] / bare['rps']:.0%} of bare FastAPI;")
    if results.get("int8"):
        q = results["int8"]
        speed = ", ".join(f"{r['speedup']:.1f}x at batch {r['batch']}" for r in q["speed"])
        delta = q["nats_per_char"]["int8"] - q["nats_per_char"]["float32"] if "nats_per_char" in q else None
        lines.append(f"- int8 next-token graph: {speed}" + (f", {delta:+.4f} nats/char;" if delta is not None else ";"))
    if results.get("payload"):
        rows = {r["form"]: r for r in results["payload"]["rows"]}
        js, bi = rows["attnserve JSON (/v1/attention)"], rows["KServe v2, binary"]
        lines.append(
            f"- a full-context attention answer: {js['bytes'] / 1e6:.1f} MB of JSON in {js['median_ms']:.0f} ms, or "
            f"{bi['bytes'] / 1e6:.1f} MB of binary v2 in {bi['median_ms']:.0f} ms."
        )
    return "\n".join(lines)


def write_reports(results: dict, args: argparse.Namespace, notes: str) -> None:
    args.out.write_text(report(results, args.docs, notes))
    text = README.read_text()
    if SUMMARY_START in text and SUMMARY_END in text:
        head, rest = text.split(SUMMARY_START, 1)
        tail = rest.split(SUMMARY_END, 1)[1]
        README.write_text(f"{head}{SUMMARY_START}\n{readme_summary(results)}\n{SUMMARY_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "attnserve-shakespeare" / "1")
    p.add_argument("--seconds", type=float, default=8.0, help="wrk duration per serving point")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--corpus", default=os.environ.get("CORPUS"), help="path or URL; for the int8 quality figure")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "bench")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the last results.json")
    p.add_argument(
        "--only",
        choices=["generation", "payload", "kserve", "explorer", "int8", "toy"],
        help="re-run one section (kserve: the service and Triton on the same v2 requests) and rewrite the report",
    )
    p.add_argument(
        "--next-token-only",
        metavar="LABEL",
        help="measure only the service's next-token path and write docs/bench/next_token_LABEL.json "
        "(for before/after comparisons of one change)",
    )
    args = p.parse_args(argv)
    notes_file = Path(__file__).with_name("bench_notes.md")
    notes = notes_file.read_text() if notes_file.exists() else ""
    if args.next_token_only:
        return next_token_check(args.bundle, args.seconds, args.docs, args.next_token_only)
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
            elif args.only == "int8":
                results["int8"] = int8_bench(args.bundle, Path(tmp), args.corpus)
            elif args.only == "explorer":
                results["explorer"] = explorer_bench(args.bundle, Path(tmp))
            else:
                results["kserve"] = kserve_bench(args.bundle, args.seconds, Path(tmp))
        (args.docs / "results.json").write_text(json.dumps(results, indent=2))
        write_reports(results, args, notes)
        return 0
    notes_file = Path(__file__).with_name("bench_notes.md")
    notes = notes_file.read_text() if notes_file.exists() else ""
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
        results["toy_http"] = toy_http_bench(args.seconds, work)
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

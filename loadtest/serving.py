"""The HTTP benchmarks: wrk against the service and its peers, every server on loopback."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from loadtest.harness import (
    CONCURRENCY,
    ROOT,
    Server,
    Servers,
    drive,
    run_wrk,
    service_answer,
    service_env,
    short_prompt,
    wrk_script,
)
from loadtest.triton import BASELINE_SERVER, SHORT_PROMPT_TOKENS, TRITON, TRITON_VENV, triton_server
from loadtest.workload import kserve_bodies, load_prompts, request_bodies

log = logging.getLogger("bench")


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
            # Triton's C++ frontend serves HTTP from several threads; the service's lever for that is WORKERS.
            "service, KServe v2, WORKERS=2": (
                [py, "-m", "service"],
                {**env, "WORKERS": "2"},
                "/v2/models/next_token/ready",
                v2_script,
            ),
        }
        if triton is not None:
            # Triton is ready before PyTriton has bound the model, so wait for the model itself.
            servers[TRITON] = (triton[0], triton[1], "/v2/models/next_token/ready", v2_script)
        out["workloads"][label] = {"prompts": len(prompts), "servers": drive(servers, seconds, work)}
    return out


def toy_http_bench(seconds: float, work: Path) -> dict:
    """The HTTP-bound regime, where the model costs almost nothing (as on a GPU): the service on the
    lectures' toy model (the repository's second model) against the bare FastAPI endpoint of the same
    shape, on the same requests."""
    bundle = ROOT / "bundles" / "toy" / "1"
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


WORKER_COUNTS = (1, 2)
WORKERS_CONNECTIONS = 64


def workers_bench(bundle_dir: Path, seconds: float, work: Path) -> dict:
    """WORKERS=1 against WORKERS=2 on the same next-token requests from the same wrk at 64
    connections: the toy model (the request path is the cost) and the real one (inference is)."""
    models = {"toy model": ROOT / "bundles" / "toy" / "1", "Shakespeare model": bundle_dir}
    out: dict = {"connections": WORKERS_CONNECTIONS, "seconds": seconds, "models": {}}
    for label, bundle in models.items():
        prompts = ["I do not like"] if label == "toy model" else load_prompts()
        script = wrk_script(work, "/v1/next-token", request_bodies("next-token", prompts), re.sub(r"\W+", "_", label))
        rows = []
        for n in WORKER_COUNTS:
            server = Server(
                f"workers_{n}", [sys.executable, "-m", "service"], {**service_env(bundle), "WORKERS": str(n)}, work
            )
            try:
                server.wait_ready("/readyz")
                time.sleep(2)  # every worker listening, not only the first one ready
                run_wrk(server.url, script, 16, 2)  # warm-up
                point = run_wrk(server.url, script, WORKERS_CONNECTIONS, seconds)
            finally:
                server.stop()
            log.info("%s, WORKERS=%d: %.0f rps, p99 %.1f ms", label, n, point["rps"], point["p99_ms"])
            rows.append({"workers": n, **point})
        out["models"][label] = rows
    return out


def interpretability_bench(bundle_dir: Path, work: Path, reps: int = 5, tokens: int = 64) -> dict:
    """One client, one server: the time of the interpretability routes for one text of `tokens`
    tokens, median of `reps` after a warm-up, against /v1/score on the same text. head-importance runs
    n_layer x n_head + 1 score rows."""
    import statistics

    import httpx

    text = short_prompt(bundle_dir, tokens)
    server = Server("interpretability", [sys.executable, "-m", "service"], service_env(bundle_dir), work)
    routes = {
        "/v1/score": {"texts": [text]},
        "/v1/logit-lens": {"texts": [text], "top_k": 5},
        "/v1/logit-lens, positions last": {"texts": [text], "top_k": 5, "positions": "last"},
        "/v1/head-importance": {"texts": [text]},
    }
    out = {"tokens": tokens}
    try:
        server.wait_ready("/readyz")
        with httpx.Client(timeout=120) as http:
            for name, body in routes.items():
                path = name.split(",")[0]
                http.post(server.url + path, json=body).raise_for_status()  # warm-up
                times = []
                for _ in range(reps):
                    started = time.perf_counter()
                    http.post(server.url + path, json=body).raise_for_status()
                    times.append((time.perf_counter() - started) * 1000)
                out[name] = statistics.median(times)
                log.info("%s: %.1f ms for %d tokens", name, out[name], tokens)
    finally:
        server.stop()
    return out


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

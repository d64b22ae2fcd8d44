"""int8 generation against float32: greedy continuations, validation nats/char through the prefill
graph, and tokens/s through HTTP at 1, 8 and 32 streams (python -m benchmarks --only int8)."""

from __future__ import annotations

import concurrent.futures
import logging
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.timing import verdict
from loadtest.harness import Server, service_env
from loadtest.workload import load_prompts

log = logging.getLogger("bench")
STREAMS = (1, 8, 32)
GREEDY_PROMPTS = 50
GREEDY_TOKENS = 64
QUALITY_WINDOWS = 64  # validation windows of the full context scored through prefill


def int8_generation_bench(float32: Path, int8: Path, work: Path, val: str | None) -> dict:
    """Both bundles served in turn by the real server: each prompt's greedy continuation, sent alone
    (int8's activation scales are computed per call, over the whole batch, so a row's answer can
    depend on its batch mates; alone, it cannot), then `streams` concurrent completions of 64 tokens."""
    prompts = (load_prompts() * 8)[:GREEDY_PROMPTS]
    out: dict = {"greedy_tokens": GREEDY_TOKENS, "prompts": len(prompts), "tokens_per_s": {}}
    continuations: dict[str, list[str]] = {}
    for label, bundle in (("float32", float32), ("int8", int8)):
        server = Server(f"generation_{label}", [sys.executable, "-m", "service"], service_env(bundle), work)
        try:
            server.wait_ready("/readyz")
            continuations[label] = [_greedy(server.url, p) for p in prompts]
            out["tokens_per_s"][label] = {str(n): _throughput(server.url, n) for n in STREAMS}
            log.info("int8 generation: %s %s tokens/s", label, out["tokens_per_s"][label])
        finally:
            server.stop()
    same = sum(a == b for a, b in zip(continuations["float32"], continuations["int8"], strict=True))
    out["identical_continuations"] = same
    if val is not None:
        out["prefill_nats_per_char"] = {k: _prefill_nats(b, val) for k, b in (("float32", float32), ("int8", int8))}
        out["val_chars"] = len(val)
    return out


def _greedy(url: str, prompt: str) -> str:
    import httpx

    body = {"prompt": prompt, "max_tokens": GREEDY_TOKENS, "temperature": 0, "ignore_eos": True}
    return httpx.post(url + "/v1/completions", json=body, timeout=120).raise_for_status().json()["choices"][0]["text"]


def _throughput(url: str, streams: int) -> float:
    import httpx

    body = {"prompt": "ROMEO:", "max_tokens": 64, "temperature": 0, "ignore_eos": True}
    with httpx.Client(base_url=url, timeout=300) as http:
        http.post("/v1/completions", json=body).raise_for_status()  # warm-up
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(streams) as pool:
            answers = list(pool.map(lambda _: http.post("/v1/completions", json=body), range(streams)))
        elapsed = time.perf_counter() - started
    return sum(a.raise_for_status().json()["usage"]["completion_tokens"] for a in answers) / elapsed


def _prefill_nats(bundle_dir: Path, val: str) -> float:
    """Validation nats/char through the prefill graph: every prefix of each full-context window as a
    row of one call, scored on the token after it (prefill answers only for a row's last token)."""
    from service.core.bundle import load_bundle
    from service.core.runner import Job, ModelRunner

    bundle = load_bundle(bundle_dir)
    runner = ModelRunner(bundle, "cpu", max_padding=0.1)
    ids = np.asarray(bundle.tokenizer.encode(val).ids, dtype=np.int64)
    context = bundle.context_length
    starts = range(0, len(ids) - 1, context - 1)[:QUALITY_WINDOWS]
    nats, chars = 0.0, 0
    for s in starts:
        window = ids[s : s + context]
        rows = runner.prefill([Job(window[:n]) for n in range(1, len(window))])
        nats -= sum(float(r.logprobs[window[n]]) for n, r in zip(range(1, len(window)), rows, strict=True))
        chars += len(bundle.tokenizer.decode(window[1:].tolist()))
    return nats / chars


def int8_generation_report(g: dict | None) -> list[str]:
    if not g:
        return []
    rates = g["tokens_per_s"]
    out = [
        "**Generation.** Through HTTP (`/v1/completions`, 64 tokens each, greedy, `ignore_eos`), the float32 and "
        "the int8 bundle served in turn by the real server:",
        "",
        "| streams | float32 tokens/s | int8 tokens/s | int8 / float32 |",
        "|---|---|---|---|",
    ]
    for n in rates["float32"]:
        a, b = rates["float32"][n], rates["int8"][n]
        out.append(f"| {n} | {a:.0f} | {b:.0f} | {b / a:.2f}x |")
    top = str(max(int(n) for n in rates["float32"]))
    ratio = rates["int8"][top] / rates["float32"][top]
    same = g["identical_continuations"] / g["prompts"]
    out += [
        "",
        f"- {top} streams: int8 gives {ratio:.2f}x float32's tokens/s (target >= 1.5x: {verdict(ratio >= 1.5)}).",
        f"- Greedy continuations of {g['greedy_tokens']} tokens, each prompt alone: {g['identical_continuations']} of "
        f"{g['prompts']} identical ({same:.0%}; target >= 90%: {verdict(same >= 0.9)}).",
    ]
    if "prefill_nats_per_char" in g:
        n = g["prefill_nats_per_char"]
        gap = n["int8"] - n["float32"]
        out.append(
            f"- Validation through the prefill graph (every prefix of {QUALITY_WINDOWS} full-context windows, each "
            f"scored on its next token): float32 {n['float32']:.4f} nats/char, int8 {n['int8']:.4f} ({gap:+.4f}; "
            f"target within 0.005: {verdict(abs(gap) <= 0.005)})."
        )
    out += [
        "",
        "int8's activation scales are computed per call over the whole batch (dynamic quantization), so an int8 "
        "row's numbers can move with its batch mates, which float32's never do; the greedy comparison sends each "
        "prompt alone for that reason.",
        "",
    ]
    return out

"""int8 generation against float32: greedy continuations, validation nats/char through the decode
graph, and tokens/s through HTTP at 1, 8 and 32 streams (python -m benchmarks --only int8)."""

from __future__ import annotations

import concurrent.futures
import logging
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.generation import decode_on_cache, engine_tokens_per_s
from benchmarks.timing import verdict
from loadtest.harness import Server, service_env
from loadtest.workload import load_prompts

log = logging.getLogger("bench")
STREAMS = (1, 8, 32)
GREEDY_PROMPTS = 50
GREEDY_TOKENS = 64
CHUNK = 64  # validation windows decoded together
PROMPT, MAX_TOKENS = "ROMEO:", 64  # the throughput runs' completions


def int8_generation_bench(float32: Path, int8: Path, work: Path, val: str | None) -> dict:
    """Both bundles served in turn by the real server, `streams` concurrent completions of 64 tokens
    (the median of three runs); then, in process, each bundle's graphs alone on the same generations,
    the greedy continuations of 50 prompts, and the validation text through the decode graph."""
    out: dict = {"greedy_tokens": GREEDY_TOKENS, "tokens_per_s": {}, "engine_tokens_per_s": {}}
    for label, bundle in (("float32", float32), ("int8", int8)):
        server = Server(f"generation_{label}", [sys.executable, "-m", "service"], service_env(bundle), work)
        try:
            server.wait_ready("/readyz")
            out["tokens_per_s"][label] = {str(n): _throughput(server.url, n) for n in STREAMS}
            log.info("int8 generation: %s %s tokens/s", label, out["tokens_per_s"][label])
        finally:
            server.stop()
        out["engine_tokens_per_s"][label] = _engine(bundle)  # once the server has gone
    out.update(_greedy_parity(float32, int8))
    if val is not None:
        out["decode_nats_per_char"] = {k: _decode_nats(b, val) for k, b in (("float32", float32), ("int8", int8))}
        out["val_chars"] = len(val)
    return out


def _throughput(url: str, streams: int, runs: int = 3) -> float:
    """Tokens/s of `streams` concurrent completions, the median of `runs` (one 64-token answer lasts
    tens of ms: a single run is mostly noise)."""
    import statistics

    import httpx

    body = {"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
    rates = []
    with httpx.Client(base_url=url, timeout=300) as http:
        http.post("/v1/completions", json=body).raise_for_status()  # warm-up
        for _ in range(runs):
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(streams) as pool:
                answers = list(pool.map(lambda _: http.post("/v1/completions", json=body), range(streams)))
            elapsed = time.perf_counter() - started
            rates.append(sum(a.raise_for_status().json()["usage"]["completion_tokens"] for a in answers) / elapsed)
    return statistics.median(rates)


def _greedy_parity(float32: Path, int8: Path) -> dict:
    """Each prompt's greedy continuation alone (int8's activation scales are computed per call, over
    the whole batch, so in a batch a row's answer can move with its batch mates) through prefill and
    the decode graph on the KV cache, in both precisions; where they part, how close float32's top two
    tokens were there (the bound: a near-tie flips under any perturbation)."""
    from service.core.bundle import load_bundle
    from service.core.runner import ModelRunner

    runners = [ModelRunner(load_bundle(b), "cpu", max_padding=0.1) for b in (float32, int8)]
    tokenizer = runners[0].bundle.tokenizer
    room = runners[0].bundle.context_length - GREEDY_TOKENS
    prompts = [
        np.asarray(tokenizer.encode(p).ids[-room:], dtype=np.int64) for p in (load_prompts() * 8)[:GREEDY_PROMPTS]
    ]
    gaps = []
    same = 0
    for prompt in prompts:
        (ref, ref_lp), (got, _) = (_greedy(r, prompt) for r in runners)
        if ref == got:
            same += 1
            continue
        step = next(i for i, (a, b) in enumerate(zip(ref, got, strict=True)) if a != b)
        top2 = np.sort(ref_lp[step])[-2:]
        gaps.append(float(top2[1] - top2[0]))
    return {"prompts": len(prompts), "identical_continuations": same, "divergence_top2_gaps": gaps}


def _greedy(runner, prompt: np.ndarray) -> tuple[list[int], list[np.ndarray]]:
    logprobs = [lp[0] for lp in decode_on_cache(runner, prompt[None], GREEDY_TOKENS)]
    return [int(lp.argmax()) for lp in logprobs], logprobs


def _engine(bundle_dir: Path) -> dict[str, float]:
    from service.core.bundle import load_bundle
    from service.core.runner import ModelRunner

    runner = ModelRunner(load_bundle(bundle_dir), "cpu", max_padding=0.1)
    prompt = np.asarray(runner.bundle.tokenizer.encode(PROMPT).ids, dtype=np.int64)
    return {str(n): engine_tokens_per_s(runner, prompt, n, MAX_TOKENS) for n in STREAMS}


def _decode_nats(bundle_dir: Path, val: str) -> float:
    """Validation nats/char through generation's own path: each full-context window of the validation
    text prefilled with its first token, then fed its true tokens one decode step at a time (teacher
    forcing) on the KV cache, scored on each next token; CHUNK windows decode together."""
    from service.core.bundle import load_bundle
    from service.core.runner import ModelRunner

    bundle = load_bundle(bundle_dir)
    runner = ModelRunner(bundle, "cpu", max_padding=0.1)
    context = bundle.context_length
    ids = np.asarray(bundle.tokenizer.encode(val).ids, dtype=np.int64)
    windows = np.stack([ids[s : s + context] for s in range(0, len(ids) - context + 1, context)])
    nats, chars = 0.0, 0
    for chunk in (windows[i : i + CHUNK] for i in range(0, len(windows), CHUNK)):
        rows = np.arange(len(chunk))
        # After the first token, then after each true token up to the last but one: each predicts the next.
        for s, lp in enumerate(decode_on_cache(runner, chunk[:, :1], context - 1, forced=chunk[:, 1:-1])):
            nats -= float(lp[rows, chunk[:, s + 1]].sum())
        chars += sum(len(bundle.tokenizer.decode(w[1:].tolist())) for w in chunk)
    return nats / chars


def int8_generation_report(g: dict | None) -> list[str]:
    if not g:
        return []
    rates = g["tokens_per_s"]
    out = [
        "**Generation.** Through HTTP (`/v1/completions`, 64 tokens each, greedy, `ignore_eos`), the float32 and "
        "the int8 bundle served in turn by the real server:",
        "",
        "| streams | float32 tokens/s | int8 tokens/s | int8 / float32 | float32: HTTP / graphs alone | "
        "int8: HTTP / graphs alone |",
        "|---|---|---|---|---|---|",
    ]
    engine = g["engine_tokens_per_s"]
    for n in rates["float32"]:
        a, b = rates["float32"][n], rates["int8"][n]
        out.append(
            f"| {n} | {a:.0f} | {b:.0f} | {b / a:.2f}x | {a / engine['float32'][n]:.0%} | {b / engine['int8'][n]:.0%} |"
        )
    top = str(max(int(n) for n in rates["float32"]))
    ratio = rates["int8"][top] / rates["float32"][top]
    same = g["identical_continuations"] / g["prompts"]
    gaps = sorted(g["divergence_top2_gaps"])
    out += [
        "",
        f"- {top} streams: int8 gives {ratio:.2f}x float32's tokens/s (target >= 1.5x: {verdict(ratio >= 1.5)}); "
        f"the graphs alone give it {engine['int8'][top] / engine['float32'][top]:.2f}x, the bound on what serving "
        "can show: a decode step of one token per row quantizes its activations on every call, and keeps its "
        "attention and output layer float32.",
        f"- HTTP against the graphs alone (the same {top} generations as one prefill and a decode step per token on "
        f"the service's cache, in process, no scheduler, no HTTP): float32 "
        f"{rates['float32'][top] / engine['float32'][top]:.0%} at {top} streams (target >= 85%: "
        f"{verdict(rates['float32'][top] >= 0.85 * engine['float32'][top])}).",
        f"- Greedy continuations of {g['greedy_tokens']} tokens, each prompt alone through prefill and decode: "
        f"{g['identical_continuations']} of {g['prompts']} identical ({same:.0%}; target >= 90%: "
        f"{verdict(same >= 0.9)}). Where the two part, float32's top two tokens were "
        + (f"{gaps[len(gaps) // 2]:.3f} nats apart at the median, {gaps[-1]:.3f} at most: " if gaps else "")
        + "near-ties, which any change of the arithmetic can flip, and after which the texts differ, while the "
        "mean quality (below) does not move.",
    ]
    if "decode_nats_per_char" in g:
        n = g["decode_nats_per_char"]
        gap = n["int8"] - n["float32"]
        out.append(
            f"- Validation through generation's own path (each full-context window prefilled with its first token, "
            f"then its true tokens fed one decode step at a time on the KV cache): float32 {n['float32']:.4f} "
            f"nats/char, int8 {n['int8']:.4f} ({gap:+.4f}; target within 0.005: {verdict(abs(gap) <= 0.005)})."
        )
    out += [
        "",
        "int8's activation scales are computed per call over the whole batch (dynamic quantization), so an int8 "
        "row's numbers can move with its batch mates, which float32's never do; the greedy comparison sends each "
        "prompt alone for that reason.",
        "",
    ]
    return out

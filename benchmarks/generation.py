"""In process: the generation scheduler at 1, 8 and 32 streams (tokens/s, TTFT), without HTTP."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from benchmarks.timing import percentile, verdict
from loadtest.workload import load_prompts

log = logging.getLogger("bench")


# -- generation ------------------------------------------------------------------------------------

GEN_STREAMS = (1, 8, 32)
GEN_TOKENS = 128
REPEATS = 3
BURSTS_S = (0.0, 0.002, 0.005, 0.02)


def generation_bench(bundle_dir: Path) -> dict:
    """Streams of GEN_TOKENS tokens, in-process on the service's own core (no HTTP).

    continuous: the service's scheduler (one decode step for every active sequence);
    one at a time: the same scheduler with MAX_ACTIVE_SEQUENCES=1 (the cache, no batching);
    recompute: no cache, the next-token graph over each whole sequence at every step, all
    streams batched together in lock-step (the runner groups them by length as the service does).
    """
    import asyncio

    from service.core.bundle import load_bundle
    from service.core.runner import ModelRunner
    from service.server.settings import Settings

    runner = ModelRunner(load_bundle(bundle_dir), device="cpu", max_padding=Settings().batch_max_padding)
    prompts = generation_prompts(runner)

    async def scheduled(n: int, max_active: int, burst_s: float = 0.005) -> dict:
        return await run_streams(runner, prompts, n, max_active, burst_s)

    def recompute(n: int) -> dict:
        seqs = [list(prompts[i % len(prompts)]) for i in range(n)]
        steps = []
        started = time.perf_counter()
        for _ in range(GEN_TOKENS):
            t0 = time.perf_counter()
            out = runner.run("next_token", [np.asarray(s) for s in seqs])
            for s, lp in zip(seqs, out, strict=True):
                s.append(int(np.argmax(lp)))
            steps.append(time.perf_counter() - t0)
        wall = time.perf_counter() - started
        return _summary(n, wall, [steps[0]] * n, [t for t in steps[1:] for _ in range(n)])

    asyncio.run(scheduled(4, 4))  # warm-up
    rows = []
    for n in GEN_STREAMS:
        for mode, run in (
            ("continuous batching", lambda n=n: asyncio.run(scheduled(n, 32))),
            ("one at a time, with the cache", lambda n=n: asyncio.run(scheduled(n, 1))),
            ("recompute, no cache", lambda n=n: recompute(n)),
        ):
            row = {"mode": mode, **_median(run)}
            log.info("generation %s, %d streams: %.0f tokens/s", mode, n, row["tokens_per_s"])
            rows.append(row)
    # The decode burst: steps run back to back on the executor for up to burst_s before the hand-off.
    bursts = []
    for n in (1, 8):
        for burst_s in BURSTS_S:
            runs = sorted(
                (asyncio.run(scheduled(n, 32, burst_s)) for _ in range(REPEATS)), key=lambda r: r["tokens_per_s"]
            )
            bursts.append({"burst_ms": burst_s * 1000, **runs[len(runs) // 2]})
            log.info(
                "generation, %d streams, burst %g ms: %.0f tokens/s", n, burst_s * 1000, bursts[-1]["tokens_per_s"]
            )
    return {
        "tokens": GEN_TOKENS,
        "repeats": REPEATS,
        "rows": rows,
        "decode_steps": decode_step_bench(runner),
        "bursts": bursts,
    }


def generation_prompts(runner) -> list[np.ndarray]:
    """The load test's prompts, each cut to leave room for GEN_TOKENS in the context."""
    bundle = runner.bundle
    room = bundle.context_length - GEN_TOKENS
    return [np.asarray(e.ids[-room:], dtype=np.int64) for e in bundle.tokenizer.encode_batch(load_prompts())]


async def run_streams(runner, prompts: list[np.ndarray], n: int, max_active: int, burst_s: float = 0.005) -> dict:
    """n greedy streams of GEN_TOKENS tokens through the service's scheduler, on the runner's device
    (its KV cache storage is there too): tokens/s, time to first token, inter-token latency."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from service.core.generation import GenerationParams, Scheduler
    from service.core.sampling import SamplingParams

    bundle = runner.bundle
    params = GenerationParams(max_tokens=GEN_TOKENS, sampling=SamplingParams(temperature=0))
    executor = ThreadPoolExecutor(1)
    sched = Scheduler(
        runner, executor, bundle.tokenizer, max_active, max_active * bundle.context_length, 1024, 60, burst_s=burst_s
    )
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
    return _summary(n, wall, ttft, itl)


def _summary(n: int, wall: float, ttft: list[float], itl: list[float]) -> dict:
    return {
        "streams": n,
        "tokens_per_s": n * GEN_TOKENS / wall,
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "itl_p50_ms": percentile(itl, 50),
        "itl_p99_ms": percentile(itl, 99),
    }


def decode_step_bench(runner, steps: int = 200) -> list[dict]:
    """The decode graph alone, on the service's cache storage: time per step by batch size and
    capacity, and what fetching the attention weights adds. What bounds tokens/s at many streams."""
    rows = []
    for batch in GEN_STREAMS:
        for capacity in (64, runner.bundle.context_length):
            for attention in (False, True) if batch == max(GEN_STREAMS) else (False,):
                us = decode_step_us(runner, batch, capacity, attention, steps)
                rows.append({"batch": batch, "capacity": capacity, "attention": attention, "step_us": us})
                log.info("decode step: batch %d, capacity %d, attention %s: %.0f us", batch, capacity, attention, us)
    return rows


def engine_tokens_per_s(runner, prompt: np.ndarray, streams: int, tokens: int, repeats: int = 3) -> float:
    """The graphs' own pace for `streams` copies of a prompt generating `tokens` greedily: one prefill
    of them all, then one decode step per token on the cache, growing it as the scheduler does, and
    nothing else (no scheduler, no HTTP, no sampling beyond an argmax). The median of `repeats` runs,
    as the served tokens/s it is compared with (the best of three gave the graphs help that the served
    figure did not get)."""
    prompts = np.tile(prompt, (streams, 1))
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        decode_on_cache(runner, prompts, tokens, keep=False)
        rates.append(streams * tokens / (time.perf_counter() - started))
    return float(np.median(rates))


def decode_on_cache(
    runner, prompts: np.ndarray, steps: int, forced: np.ndarray | None = None, keep: bool = True
) -> list[np.ndarray]:
    """The prompts (B, n) prefilled together, then decode steps on the service's KV cache, grown as the
    scheduler grows it: each step feeds each row's greedy token, or forced[:, s - 1] (teacher forcing)
    when given. Returns `steps` (B, V) log-probs: after the prompt, then after each fed token; with
    keep=False only the last (a timing that should do nothing but the steps)."""
    from service.core.kvcache import KVCache
    from service.core.runner import Job

    arch = runner.bundle.arch
    rows, n = prompts.shape
    cache: KVCache[int] = KVCache(arch.n_layer, arch.n_head, arch.d_head, rows, arch.context_length, runner)
    first = runner.prefill([Job(p) for p in prompts])
    for row, p in enumerate(first):
        cache.add(row, p.keys, p.values)
    logprobs = [np.stack([p.logprobs for p in first])]
    for s in range(1, steps):
        fed = forced[:, s - 1] if forced is not None else logprobs[-1].argmax(-1).astype(np.int64)
        cache.fit(n + s - 1)
        step = runner.decode(fed, np.full(rows, n + s - 1, dtype=np.int64), cache.bound())
        # A step's log-probs lie in memory the next step reuses: kept ones are copied out.
        if keep:
            logprobs.append(step.logprobs.copy())
        else:
            logprobs[-1] = step.logprobs
    return logprobs


def decode_step_us(runner, batch: int, capacity: int, attention: bool = False, steps: int = 200) -> float:
    """One decode step of `batch` rows on the service's cache storage at `capacity` positions, alone:
    the engine's own pace, which generation through HTTP can at best reach."""
    from service.core.kvcache import KVCache

    arch = runner.bundle.arch
    cache: KVCache[int] = KVCache(arch.n_layer, arch.n_head, arch.d_head, batch, arch.context_length, runner)
    prompt = np.zeros((arch.n_layer, arch.n_head, capacity - 1, arch.d_head), dtype=np.float32)
    for b in range(batch):
        cache.add(b, prompt, prompt)
    tokens = np.zeros(batch, dtype=np.int64)
    positions = np.full(batch, capacity - 1, dtype=np.int64)
    for _ in range(10):
        runner.decode(tokens, positions, cache.bound(), attention=attention)
    started = time.perf_counter()
    for _ in range(steps):
        runner.decode(tokens, positions, cache.bound(), attention=attention)
    return (time.perf_counter() - started) / steps * 1e6


def _median(run) -> dict:
    """A stream of 128 tokens lasts a fraction of a second: the median of REPEATS runs, by tokens/s."""
    runs = sorted((run() for _ in range(REPEATS)), key=lambda r: r["tokens_per_s"])
    return runs[len(runs) // 2]


async def _aenumerate(stream):
    i = 0
    async for item in stream:
        yield i, item
        i += 1


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
    continuous = {n: by[("continuous batching", n)]["tokens_per_s"] for n in GEN_STREAMS}
    vs_one, vs_eight = continuous[top] / continuous[one], continuous[top] / continuous[8]
    out = [
        "## Generation: KV cache and continuous batching",
        "",
        f"Streams of {gen['tokens']} greedy tokens (each point the median of {gen.get('repeats', 1)} runs) "
        "from prompts of `loadtest/prompts.txt` (cut to leave room), "
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
        f"- continuous batching, {top} streams against {one}: **{vs_one:.1f}x** tokens/s (target >= 4x: "
        f"{verdict(vs_one >= 4)}); against 8: **{vs_eight:.2f}x** (target >= 1.5x: {verdict(vs_eight >= 1.5)})",
        "",
        "| mode | streams | tokens/s | TTFT p50 ms | TTFT p99 ms | inter-token p50 ms | inter-token p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in gen["rows"]:
        out.append(
            f"| {r['mode']} | {r['streams']} | {r['tokens_per_s']:.0f} | {r['ttft_p50_ms']:.1f} | "
            f"{r['ttft_p99_ms']:.1f} | {r['itl_p50_ms']:.1f} | {r['itl_p99_ms']:.1f} |"
        )
    steps = gen.get("decode_steps")
    if steps:
        out += [
            "",
            "The decode graph alone (`runner.decode` on the service's cache storage, every row at its last "
            "position, 200 steps after a warm-up): what a step costs by batch and cache capacity. A step reads "
            "every row's keys and values up to the capacity; the graph-only ceiling on tokens/s is "
            "batch / step time.",
            "",
            "| batch | capacity | attention fetched | step us | us per token | graph-only tokens/s |",
            "|---|---|---|---|---|---|",
        ]
        for r in steps:
            out.append(
                f"| {r['batch']} | {r['capacity']} | {'yes' if r['attention'] else 'no'} | {r['step_us']:.0f} | "
                f"{r['step_us'] / r['batch']:.0f} | {r['batch'] / r['step_us'] * 1e6:.0f} |"
            )
    if gen.get("bursts"):
        out += [
            "",
            "The decode burst (the scheduler's `burst_s`; the service uses 5 ms): while nothing new waits, decode "
            "steps run back to back on the executor for up to this long before the tokens go to the event loop.",
            "",
            "| streams | burst ms | tokens/s | inter-token p50 ms | inter-token p99 ms |",
            "|---|---|---|---|---|",
        ]
        for r in gen["bursts"]:
            out.append(
                f"| {r['streams']} | {r['burst_ms']:g} | {r['tokens_per_s']:.0f} | {r['itl_p50_ms']:.1f} | "
                f"{r['itl_p99_ms']:.1f} |"
            )
    return [*out, ""]

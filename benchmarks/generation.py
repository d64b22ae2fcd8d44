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


GEN_STREAMS = (1, 8, 32)
GEN_TOKENS = 128


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
    from service.server.settings import Settings

    bundle = load_bundle(bundle_dir)
    engine = Engine(bundle, device="cpu", max_padding=Settings().batch_max_padding)
    room = bundle.context_length - GEN_TOKENS
    prompts = [np.asarray(e.ids[-room:], dtype=np.int64) for e in bundle.tokenizer.encode_batch(load_prompts())]
    params = GenerationParams(max_tokens=GEN_TOKENS, sampling=SamplingParams(temperature=0))

    def summary(n: int, wall: float, ttft: list[float], itl: list[float]) -> dict:
        return {
            "streams": n,
            "tokens_per_s": n * GEN_TOKENS / wall,
            "ttft_p50_ms": percentile(ttft, 50),
            "ttft_p99_ms": percentile(ttft, 99),
            "itl_p50_ms": percentile(itl, 50),
            "itl_p99_ms": percentile(itl, 99),
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

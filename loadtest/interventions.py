"""The intervention routes' benchmark: a full patching sweep, steering's decode cost, and the size
and time of an activations answer, each through HTTP against one server on loopback."""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path

from loadtest.harness import Server, service_env, short_prompt

log = logging.getLogger("bench")

SWEEP_TOKENS = 64
STREAMS = (1, 8, 32)


def interventions_bench(bundle_dir: Path, work: Path, reps: int = 5) -> dict:
    import httpx

    server = Server("interventions", [sys.executable, "-m", "service"], service_env(bundle_dir), work)
    try:
        server.wait_ready("/readyz")
        with httpx.Client(base_url=server.url, timeout=300) as http:
            out = {"sweep": _sweep(http, bundle_dir, reps), "activations": _activations(http, bundle_dir, reps)}
        out["steering"] = asyncio.run(_steering(server.url))
    finally:
        server.stop()
    out["sweep"]["eager_hooks_s"] = _eager_sweep(bundle_dir, out["sweep"]["pair"])
    return out


def _median_ms(call, reps: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _sweep(http, bundle_dir: Path, reps: int) -> dict:
    """Heads plus resid_pre, attn_out and mlp_out at every layer and position of a 64-token pair,
    against what one request per variant costs at least: a full forward of the same tokens each
    (sequential /v1/next-token requests of SWEEP_TOKENS tokens)."""
    clean = http.post("/v1/score", json={"texts": [short_prompt(bundle_dir, SWEEP_TOKENS)]}).json()
    clean_ids = clean["results"][0]["token_ids"][:SWEEP_TOKENS]
    corrupted_ids = list(clean_ids)
    corrupted_ids[SWEEP_TOKENS // 2] = (corrupted_ids[SWEEP_TOKENS // 2] + 1) % 2048
    top = http.post("/v1/next-token", json={"token_ids": [clean_ids], "top_k": 2}).json()["results"][0]["top"]
    answer = {"correct": top[0]["token_id"], "incorrect": top[1]["token_id"]}
    body = {"clean": clean_ids, "corrupted": corrupted_ids, "answer": answer}
    answer_json = http.post("/v1/patch", json=body).raise_for_status().json()
    cells = sum(len(layer) for site in answer_json["sites"].values() for layer in site["score"])
    sweep_ms = _median_ms(lambda: http.post("/v1/patch", json=body).raise_for_status(), reps)

    def one_per_variant() -> None:
        for _ in range(cells):
            http.post("/v1/next-token", json={"token_ids": [corrupted_ids], "top_k": 1}).raise_for_status()

    per_variant_ms = _median_ms(one_per_variant, 1)
    log.info("patching sweep: %d cells in %.0f ms; one request each: %.0f ms", cells, sweep_ms, per_variant_ms)
    return {
        "tokens": SWEEP_TOKENS,
        "cells": cells,
        "sweep_ms": sweep_ms,
        "one_request_per_variant_ms": per_variant_ms,
        "pair": body,
    }


def _activations(http, bundle_dir: Path, reps: int) -> dict:
    text = short_prompt(bundle_dir, SWEEP_TOKENS)
    out = {}
    for label, extra in {
        "every site, layer and position": {"sites": ["resid_pre", "resid_post", "attn_out", "mlp_out", "z"]},
        "resid_pre, last position": {"sites": ["resid_pre"], "positions": "last"},
    }.items():
        body = {"texts": [text], **extra}
        size = len(http.post("/v1/activations", json=body).raise_for_status().content)
        ms = _median_ms(lambda b=body: http.post("/v1/activations", json=b).raise_for_status(), reps)
        out[label] = {"bytes": size, "ms": ms}
        log.info("activations, %s: %d bytes in %.1f ms", label, size, ms)
    return out


async def _steering(url: str, tokens: int = 128, rounds: int = 3) -> dict:
    """Decode throughput with every stream steered against none, at each stream count: greedy
    completions of `tokens` tokens, alternating plain and steered rounds, best of `rounds` each. The
    vector is sent as numbers (from /v1/steering-vector, as a client that reuses one does), so that
    what is measured is the decode step's cost, not deriving the vector from texts."""
    import httpx

    base = {"prompt": "ROMEO:", "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    out = {}
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        texts = {"layer": 1, "add": " love", "subtract": " hate"}
        vector = (await http.post("/v1/steering-vector", json=texts)).raise_for_status().json()["vector"]
        steer = [{"layer": 1, "vector": vector, "scale": 2.0}]

        async def round_(streams: int, steered: bool) -> float:
            body = {**base, **({"steer": steer} if steered else {})}
            started = time.perf_counter()
            answers = await asyncio.gather(*(http.post("/v1/completions", json=body) for _ in range(streams)))
            elapsed = time.perf_counter() - started
            done = sum(a.raise_for_status().json()["usage"]["completion_tokens"] for a in answers)
            return done / elapsed

        for streams in STREAMS:
            await round_(streams, False)  # warm-up: the batch shapes of this many streams
            await round_(streams, True)
            plain, steered = [], []
            for _ in range(rounds):
                plain.append(await round_(streams, False))
                steered.append(await round_(streams, True))
            out[str(streams)] = {"plain_tokens_per_s": max(plain), "steered_tokens_per_s": max(steered)}
            log.info("steering at %d streams: %.0f tok/s plain, %.0f steered", streams, max(plain), max(steered))
    return out


def _eager_sweep(bundle_dir: Path, pair: dict) -> float:
    """The same cells as TransformerLens's patching helpers run them: one full PyTorch forward per
    variant, in process, with a hook putting the clean activation in (seconds)."""
    import torch

    from export.bundle import load_torch_model

    model = load_torch_model(bundle_dir)
    torch.set_num_threads(2)
    clean, corrupted = torch.tensor([pair["clean"]]), torch.tensor([pair["corrupted"]])
    cache: dict[str, torch.Tensor] = {}
    handles = []
    for i, block in enumerate(model.blocks):
        handles.append(block.register_forward_pre_hook(lambda m, a, i=i: cache.__setitem__(f"resid{i}", a[0])))
        handles.append(block.attn.register_forward_hook(lambda m, a, o, i=i: cache.__setitem__(f"attn{i}", o.out)))
        handles.append(block.mlp.register_forward_hook(lambda m, a, o, i=i: cache.__setitem__(f"mlp{i}", o)))
    with torch.no_grad():
        model.hidden_states(clean)
    for h in handles:
        h.remove()
    n = clean.size(1)

    def forward_with(module, kind: str, fn) -> None:
        handle = module.register_forward_pre_hook(fn) if kind == "pre" else module.register_forward_hook(fn)
        with torch.no_grad():
            model.hidden_states(corrupted)
        handle.remove()

    started = time.perf_counter()
    for i, block in enumerate(model.blocks):
        for _ in range(model.cfg.n_head):  # a head's cell: a full forward, as each position's is
            forward_with(block.attn, "post", lambda m, a, o, i=i: o._replace(out=cache[f"attn{i}"]))
        for p in range(n):
            sites = ((block, "pre", "resid"), (block.attn, "post", "attn"), (block.mlp, "post", "mlp"))
            for module, kind, key in sites:

                def put(t: torch.Tensor, p: int = p, key: str = f"{key}{i}") -> torch.Tensor:
                    t = t.clone()
                    t[:, p] = cache[key][:, p]
                    return t

                if kind == "pre":
                    forward_with(module, kind, lambda m, a, f=put: (f(a[0]), *a[1:]))
                elif key == "attn":
                    forward_with(module, kind, lambda m, a, o, f=put: o._replace(out=f(o.out)))
                else:
                    forward_with(module, kind, lambda m, a, o, f=put: f(o))
    elapsed = time.perf_counter() - started
    log.info("eager PyTorch, one forward per variant: %.2f s", elapsed)
    return elapsed

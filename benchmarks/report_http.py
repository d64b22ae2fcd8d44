"""The report's HTTP sections: Triton and KServe v2, payloads, the explorer, the toy request path."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.timing import verdict
from loadtest.harness import by_concurrency
from loadtest.tracing import TRACING_VARIANTS
from loadtest.triton import TRITON


def aiperf_report(results: dict) -> list[str]:
    r = results.get("aiperf")
    if not r:
        return []
    by = {p["streams"]: p for p in r["points"]}
    out = [
        "## The field's benchmark client: aiperf",
        "",
        f"NVIDIA's aiperf ({r['aiperf']}), unmodified, from its own virtual environment, against the service on the "
        "committed Shakespeare model: `/v1/completions` streamed, the bundle's own tokenizer from a local "
        f"directory, {r['prompt_tokens']}-token synthetic prompts and {r['output_tokens']} output tokens each "
        "(`ignore_eos`, greedy). Request count 4 x the streams (at least 8), after a warm-up.",
        "",
        "| streams | output tokens/s | TTFT p50 ms | TTFT p99 ms | inter-token p50 ms | inter-token p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in r["points"]:
        out.append(
            f"| {p['streams']} | {p['output_tokens_per_s']:.0f} | {p['ttft_p50_ms']:.1f} | {p['ttft_p99_ms']:.1f} | "
            f"{p['itl_p50_ms']:.2f} | {p['itl_p99_ms']:.2f} | {p['errors']} |"
        )
    if 1 in by and 8 in by and 32 in by:
        one, eight, many = (by[s]["output_tokens_per_s"] for s in (1, 8, 32))
        out += [
            "",
            f"Tokens/s at 32 streams: {many / one:.1f}x one stream (target >= 4x: {verdict(many >= 4 * one)}), "
            f"{many / eight:.2f}x 8 streams (target >= 1.5x: {verdict(many >= 1.5 * eight)}). On this CPU a decode "
            "step's cost grows with its batch: the decode-graph table of the next section shows the ceiling.",
        ]
    return [*out, ""]


def tracing_report(results: dict) -> list[str]:
    tracing = results.get("tracing")
    if not tracing:
        return []
    servers = tracing["servers"]
    off, on, sampled, quiet = (servers[f"service, {v}"] for v in (TRACING_VARIANTS[i] for i in (0, 1, 2, -1)))
    unsampled = servers.get(f"service, {TRACING_VARIANTS[3]}")
    top = max(p["concurrency"] for p in off)

    def cost(points: list[dict]) -> float:
        return 1 - points[-1]["rps"] / off[-1]["rps"]

    targets = [(on, 0.15, "every request traced"), (sampled, 0.05, "one in ten sampled")]
    if unsampled is not None:
        targets.insert(0, (unsampled, 0.03, "a request not sampled"))
    out = [
        "## What observability costs",
        "",
        "The toy model's next-token path (where the request path is nearly all the cost), from the same wrk: "
        "tracing off (the default: no `OTEL_*` endpoint), tracing on (every request's span, with its batch event, and "
        "its batch's inference span exported over OTLP/HTTP to a sink on loopback that answers at once), one trace "
        "in ten sampled (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.1`), none "
        "sampled (the same sampler at 0: what a request that is not sampled costs), and the access log off; "
        f"{tracing.get('rounds', 1)} round(s) of every variant in turn, the better of each point. "
        f"Targets, as the cost in requests/s at {top} clients against tracing off: "
        + "; ".join(
            f"{label} at most {limit:.0%}: {cost(p):.1%}, {verdict(cost(p) <= limit)}" for p, limit, label in targets
        )
        + ".",
        "",
        "| clients | tracing off req/s | on req/s | on / off | 10% sampled req/s | none sampled req/s | access log off "
        "req/s | off p99 ms | on p99 ms | loop µs/request off | on | 10% | none |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def loop(p: dict | None) -> str:
        return f"{p['loop_us_per_request']:.0f}" if p is not None and "loop_us_per_request" in p else ""

    for i, (a, b, s, c) in enumerate(zip(off, on, sampled, quiet, strict=True)):
        n = unsampled[i] if unsampled is not None else None
        u = f"{n['rps']:.0f}" if n is not None else ""
        out.append(
            f"| {a['concurrency']} | {a['rps']:.0f} | {b['rps']:.0f} | {b['rps'] / a['rps']:.0%} | {s['rps']:.0f} | "
            f"{u} | {c['rps']:.0f} | {a['p99_ms']:.1f} | {b['p99_ms']:.1f} | {loop(a)} | {loop(b)} | {loop(s)} | "
            f"{loop(n)} |"
        )
    return [*out, ""]


def workers_report(results: dict) -> list[str]:
    w = results.get("workers")
    if not w:
        return []
    out = [
        "## More cores: WORKERS=N",
        "",
        f"`WORKERS=1` against `WORKERS=2` (two whole servers on one port, SO_REUSEPORT), next-token requests from "
        f"one wrk thread at {w['connections']} connections for {w['seconds']:g} s each, on this machine's "
        f"{results['machine']['cores']} cores (wrk takes a share of them too).",
        "",
        "| model | workers | req/s | p50 ms | p99 ms | vs one worker |",
        "|---|---|---|---|---|---|",
    ]
    for label, rows in w["models"].items():
        one = rows[0]["rps"]
        for r in rows:
            out.append(
                f"| {label} | {r['workers']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['rps'] / one:.2f}x |"
            )
    return [*out, ""]


def toy_report(results: dict, docs: Path) -> list[str]:
    toy = results.get("toy_http")
    if not toy:
        return []
    ours, bare = (toy["servers"][k] for k in ("service, toy model", "bare FastAPI, the same answer"))
    out = [
        "## The HTTP-bound regime: a model that costs almost nothing",
        "",
        "The lectures' toy model (`bundles/toy/1`: 2 layers, width 32, context 24) makes inference nearly free, "
        "as a GPU does for the real one, so the request path is all that is left. The service on it against the "
        f"bare FastAPI endpoint that returns the service's own {toy['body_bytes']}-byte answer, on the same "
        "request, from the same wrk.",
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
        # The last request-path change, measured with this section before it (its commit) and in this run after.
        before = json.loads(before_file.read_text())
        then = {p["concurrency"]: p for p in before["servers"]["service, toy model"]}
        out += [
            "",
            f"The request path before and after the last request-path change (before: commit {before['commit']}, "
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


def explorer_report(results: dict) -> list[str]:
    e = results.get("explorer")
    if not e:
        return []
    return [
        "## The attention explorer at the full context",
        "",
        f"The model view (every layer x head as a {e['tokens']} x {e['tokens']} heatmap) in Debian's chromium, "
        f"headless, driven by Playwright; median of {e['reps']} page loads after a warm-up "
        "(`python -m benchmarks --only explorer`). Drawing, by the page's own clock: "
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
        "into a float32 numpy array on the client (`python -m benchmarks --only payload`).",
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
        rows.append(_against_triton(goal, ours[top], triton[top], factor))
        two = at.get("service, KServe v2, WORKERS=2")
        if two is not None:
            rows.append(_against_triton("the same, the service with WORKERS=2", two[top], triton[top], factor))
    return rows


def _against_triton(goal: str, ours: dict, triton: dict, factor: float) -> str:
    """A target row: at least factor x Triton's requests/s, with a p99 no higher."""
    ratio = ours["rps"] / triton["rps"]
    ok = ratio >= factor and ours["p99_ms"] <= triton["p99_ms"]
    return (
        f"| {goal} | {ours['rps']:.0f} vs {triton['rps']:.0f} req/s ({ratio:.2f}x); "
        f"p99 {ours['p99_ms']:.0f} vs {triton['p99_ms']:.0f} ms | {verdict(ok)} |"
    )


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
        f"Run on {kserve['date']}, all rows in that one run (`python -m benchmarks --only kserve`; also part of "
        "`make bench`). The two v2 rows get the same request bytes from the same wrk (one thread, "
        f"{kserve['seconds']:g} s per point after a warm-up): each prompt as a BYTES `text` input to "
        "`/v2/models/next_token/infer`, the top 5 from the classification extension. Triton runs through "
        "PyTriton, its dynamic batcher at max_batch_size 32 and 2 ms queue delay, in its own virtual environment, "
        "with the same ONNX graph, tokenizer, session options, padding and length grouping as the service "
        "(`benchmarks/peers/triton_server.py`): the comparison is of the servers, not of how they pad. "
        "The native row is the service on the same prompts through `/v1/next-token`, for reference. "
        "*Loop µs/request* is the CPU time of the service's event-loop thread (from `/proc`) over the "
        "requests served: the Python cost of a request, inference excluded.",
        "",
    ]
    for label, w in _kserve_workloads(results).items():
        out += [
            f"**{label}**" + (" (`loadtest/prompts.txt`)" if label == "prompt mix" else ", the same text every time"),
            "",
            "| server | clients | requests/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | mean batch "
            "| loop µs/request |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, points in w["servers"].items():
            for p in points:
                batch = f"{p['mean_batch']:.1f}" if "mean_batch" in p else ""
                loop = f"{p['loop_us_per_request']:.0f}" if "loop_us_per_request" in p else ""
                tail = f"{p['p99.9_ms']:.1f}" if "p99.9_ms" in p else ""
                out.append(
                    f"| {name} | {p['concurrency']} | {p['rps']:.1f} | {p['p50_ms']:.1f} | {p['p90_ms']:.1f} | "
                    f"{p['p99_ms']:.1f} | {tail} | {p['errors'] + p['socket_errors']} | {batch} | {loop} |"
                )
        out += ["", *_stages(w["servers"])]
    return out


def _stages(servers: dict[str, list[dict]]) -> list[str]:
    """Where a request's time went in the service, per point: means from its own histograms."""
    rows = [
        f"| {name} | {p['concurrency']} | {s['request']:.1f} | {s['queue wait']:.1f} | {s['inference']:.1f} | "
        f"{s['request'] - s['queue wait'] - s['inference']:.1f} |"
        for name, points in servers.items()
        for p in points
        if (s := p.get("stages_ms")) is not None
    ]
    if not rows:
        return []
    return [
        "Where the time went inside the service, as means from its histograms over each point: the request "
        "(arrival to the last byte written), its row's wait for a batch, the batch's inference, and the rest "
        "(reading, tokenizing and answering the request, and waiting for the event loop between them).",
        "",
        "| server | clients | request ms | queue wait ms | inference ms | the rest ms |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def grpc_report(results: dict) -> list[str]:
    r = results.get("grpc")
    if not r:
        return []
    out = [
        "## KServe v2 over gRPC: the service and Triton",
        "",
        f"Run on {r['date']} (`python -m benchmarks --only grpc`; also part of `make bench`): the short-prompt "
        f"next-token request of the section above, {r['concurrency']} clients, one worker, {r['seconds']:g} s "
        "after a warm-up, each server alone on the machine. The gRPC rows come from one client for both servers "
        "(`loadtest/grpc_load.py`: grpc.aio in a process of its own, the request serialised once, four channels), "
        "the HTTP rows from wrk, a C client that costs less per request on these shared two cores: compare gRPC "
        "with gRPC and HTTP with HTTP. Triton's gRPC endpoint is its own C++ frontend, in the same PyTriton "
        "setup as above.",
        "",
        "| server and protocol | requests/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p in r["servers"].items():
        out.append(
            f"| {name} | {p['rps']:.0f} | {p['p50_ms']:.1f} | {p['p90_ms']:.1f} | {p['p99_ms']:.1f} | "
            f"{p['p99.9_ms']:.1f} | {p['errors']} |"
        )
    ours, theirs = r["servers"].get("service, KServe v2 gRPC"), r["servers"].get("Triton (PyTriton), KServe v2 gRPC")
    if ours and theirs:
        out += [
            "",
            f"Over gRPC the service gives {ours['rps'] / theirs['rps']:.2f}x Triton's requests/s, at p99 "
            f"{ours['p99_ms']:.1f} ms against {theirs['p99_ms']:.1f} ms.",
        ]
    return [*out, ""]

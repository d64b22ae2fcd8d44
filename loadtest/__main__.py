"""Closed-loop load test: N clients, each sending its next request as soon as the last is answered.

    python -m loadtest --url http://127.0.0.1:8000 --endpoint next-token --concurrency 16 --duration 20

Prints throughput, latency percentiles and errors by status, and writes the same as JSON (--out).
The client speaks HTTP/1.1 over keep-alive connections with pre-built requests, so that it costs
the machine little next to the server it measures (see BENCHMARKS.md for how it compares with wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from loadtest.workload import ENDPOINTS, request_bodies


@dataclass
class Result:
    endpoint: str
    concurrency: int
    duration_s: float
    requests: int
    throughput_rps: float
    latency_ms: dict[str, float]
    status_counts: dict[str, int]
    errors: int
    transport_errors: int


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def build_request(method: str, host: str, path: str, body: bytes | None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
    if body is None:
        return (head + "\r\n").encode()
    return (head + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response and return its status; only Content-Length bodies (what uvicorn sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def worker(
    host: str,
    port: int,
    requests: itertools.cycle,
    stop_at: float,
    max_requests: int | None,
    counter: list[int],
    latencies: list[float],
    statuses: Counter,
    transport_errors: list[int],
) -> None:
    reader = writer = None
    while time.perf_counter() < stop_at and (max_requests is None or counter[0] < max_requests):
        counter[0] += 1
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            started = time.perf_counter()
            writer.write(next(requests))
            status = await read_response(reader)
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[str(status)] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            transport_errors[0] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def run(
    url: str,
    endpoint: str,
    concurrency: int,
    duration_s: float,
    max_requests: int | None = None,
    warmup_s: float = 1.0,
    path: str | None = None,
) -> Result:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if path is not None:  # a plain GET, for measuring the client itself against a trivial endpoint
        payloads = [build_request("GET", host, path, None)]
    else:
        payloads = [build_request("POST", host, ENDPOINTS[endpoint], b) for b in request_bodies(endpoint)]

    async def phase(seconds: float, limit: int | None) -> tuple[float, int, list[float], Counter, int]:
        latencies: list[float] = []
        statuses: Counter = Counter()
        counter, errors = [0], [0]
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(
            *(
                worker(
                    host,
                    port,
                    itertools.cycle(payloads[i % len(payloads) :] + payloads[: i % len(payloads)]),
                    stop_at,
                    limit,
                    counter,
                    latencies,
                    statuses,
                    errors,
                )
                for i in range(concurrency)
            )
        )
        return time.perf_counter() - started, counter[0], latencies, statuses, errors[0]

    if warmup_s > 0:
        await phase(warmup_s, None)
    elapsed, sent, latencies, statuses, transport_errors = await phase(duration_s, max_requests)
    latencies.sort()
    ok = sum(n for s, n in statuses.items() if s.startswith("2"))
    return Result(
        endpoint=path or endpoint,
        concurrency=concurrency,
        duration_s=round(elapsed, 3),
        requests=len(latencies),
        throughput_rps=round(ok / elapsed, 2),
        latency_ms={f"p{q}": round(percentile(latencies, q), 2) for q in (50, 90, 99)}
        | {"mean": round(sum(latencies) / max(1, len(latencies)), 2)},
        status_counts=dict(statuses),
        errors=len(latencies) - ok,
        transport_errors=transport_errors,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="next-token")
    p.add_argument("--path", help="GET this path instead of an endpoint (to measure the client itself)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=20.0, help="seconds (after a 1 s warm-up)")
    p.add_argument("--requests", type=int, default=None, help="stop after this many requests")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--out", type=Path, help="write the result as JSON")
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        run(args.url, args.endpoint, args.concurrency, args.duration, args.requests, args.warmup, args.path)
    )
    summary = asdict(result)
    lat = result.latency_ms
    sys.stdout.write(
        f"{result.endpoint} concurrency={result.concurrency}: {result.requests} requests in {result.duration_s:.1f}s, "
        f"{result.throughput_rps:.1f} ok/s; latency ms p50={lat['p50']} p90={lat['p90']} p99={lat['p99']}; "
        f"status {result.status_counts}; transport errors {result.transport_errors}\n"
    )
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    return 0 if result.errors == 0 and result.transport_errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

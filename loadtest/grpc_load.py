"""KServe v2 over gRPC under load: a closed-loop client, and the benchmark that drives the service's
gRPC and HTTP endpoints and Triton's own gRPC endpoint with the short-prompt next-token request.

    python -m loadtest.grpc_load --address 127.0.0.1:8001 --prompt "To be, or not" --concurrency 64

No gRPC load generator is packaged for this machine (ghz is not in Debian, and Triton's perf_analyzer
comes only in its SDK image), so the client is grpc.aio in a process of its own: `concurrency`
callers on four channels, each sending the same request, serialised once, as soon as its last answer
came. Every gRPC server in the comparison is driven by this one client, so the gRPC columns compare
the servers; the HTTP columns come from wrk, a C client that costs less per request on this shared
machine, and are labelled so.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

from loadtest.harness import Server, free_port, run_wrk, service_env, short_prompt, wrk_script
from loadtest.triton import TRITON, triton_server
from loadtest.workload import kserve_bodies

log = logging.getLogger(__name__)
METHOD = "/inference.GRPCInferenceService/ModelInfer"
CHANNELS = 4
CONCURRENCY = 64
TOP_K = 5  # as the HTTP benchmark's requests (loadtest.workload.kserve_body)


def request_bytes(prompt: str, model: str = "next_token") -> bytes:
    """The short-prompt request of the HTTP benchmark, in gRPC: text BYTES [1, 1], the top 5 by
    Triton's classification extension."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="text", datatype="BYTES", shape=[1, 1])
    output = request.outputs.add(name="next_token_logprobs")
    output.parameters["classification"].int64_param = TOP_K
    encoded = prompt.encode()
    request.raw_input_contents.append(struct.pack("<I", len(encoded)) + encoded)
    return request.SerializeToString()


async def closed_loop(address: str, body: bytes, concurrency: int, seconds: float) -> dict:
    import grpc

    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    # Bytes in, bytes out: the client does no protobuf work per call.
    calls = [c.unary_unary(METHOD, request_serializer=None, response_deserializer=None) for c in channels]
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds

    async def caller(i: int) -> None:
        nonlocal errors
        call = calls[i % CHANNELS]
        while (started := time.perf_counter()) < end:
            try:
                await call(body)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    for c in channels:
        await c.close()
    cuts = statistics.quantiles(latencies, n=1000) if len(latencies) > 1 else [0.0] * 999
    return {
        "concurrency": concurrency,
        "rps": len(latencies) / elapsed,
        "requests": len(latencies),
        "errors": errors,
        **{f"p{q}_ms": cuts[round(q * 10) - 1] * 1000 for q in (50, 90, 99, 99.9)},
    }


def drive_grpc(address: str, prompt: str, concurrency: int, seconds: float) -> dict:
    """The client in its own process (its event loop must not share one with anything else here)."""
    argv = [sys.executable, "-m", "loadtest.grpc_load", "--address", address, "--prompt", prompt]
    argv += ["--concurrency", str(concurrency), "--seconds", str(seconds)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def grpc_bench(
    bundle_dir: Path, seconds: float, work: Path, env: dict[str, str] | None = None, http: bool = True
) -> dict:
    """The short-prompt next-token request at concurrency 64, one worker: the service over gRPC and over
    HTTP (one server, both ports), then Triton over gRPC and HTTP; requests/s and latency percentiles.
    `env`: more settings for the service (DEVICE=cuda); http=False leaves out wrk's HTTP rows."""
    prompt = short_prompt(bundle_dir)
    script = wrk_script(work, "/v2/models/next_token/infer", kserve_bodies([prompt]), "grpc_bench")
    out: dict = {"date": dt.date.today().isoformat(), "seconds": seconds, "concurrency": CONCURRENCY, "servers": {}}
    grpc_port = free_port()
    peers: list[tuple[str, list[str], dict[str, str], int | None]] = [
        (
            "service",
            [sys.executable, "-m", "service"],
            {**service_env(bundle_dir), **(env or {}), "GRPC_PORT": str(grpc_port)},
            None,
        )
    ]
    triton = triton_server(bundle_dir)
    if triton is None:
        log.warning("no Triton virtual environment: its columns are left out (make bench creates it)")
    else:
        peers.append((TRITON.split(",")[0], triton[0], triton[1], 1))  # its gRPC port is its HTTP port + 1
    for name, argv, env, offset in peers:
        server = Server(f"{name.split()[0].lower()}_grpc", argv, env, work)
        try:
            server.wait_ready("/v2/models/next_token/ready")
            address = f"127.0.0.1:{server.port + offset if offset else grpc_port}"
            drive_grpc(address, prompt, 16, 2)  # warm-up
            out["servers"][f"{name}, KServe v2 gRPC"] = drive_grpc(address, prompt, CONCURRENCY, seconds)
            if http:
                run_wrk(server.url, script, 16, 2)
                out["servers"][f"{name}, KServe v2 HTTP (wrk)"] = run_wrk(server.url, script, CONCURRENCY, seconds)
            for label in (k for k in out["servers"] if k.startswith(f"{name}, ")):
                p = out["servers"][label]
                log.info("%s: %.0f req/s, p99 %.1f ms, errors %d", label, p["rps"], p["p99_ms"], p["errors"])
        finally:
            server.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", required=True, help="host:port of a KServe v2 gRPC endpoint")
    p.add_argument("--prompt", required=True)
    p.add_argument("--model", default="next_token")
    p.add_argument("--concurrency", type=int, default=CONCURRENCY)
    p.add_argument("--seconds", type=float, default=10)
    args = p.parse_args(argv)
    body = request_bytes(args.prompt, args.model)
    print(json.dumps(asyncio.run(closed_loop(args.address, body, args.concurrency, args.seconds))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

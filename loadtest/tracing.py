"""What observability costs, for the benchmark: the service on the toy model's next-token path with
tracing off, on, sampled one in ten, sampled never, and with the access log off, from the same wrk."""

from __future__ import annotations

import sys
from pathlib import Path

from loadtest.harness import ROOT, Servers, drive, free_port, service_env, wrk_script
from loadtest.workload import request_bodies

TRACING_ROUNDS = 2
TRACING_VARIANTS = (
    "tracing off",
    "tracing on",
    "tracing on, 10% sampled",
    "tracing on, none sampled",
    "tracing off, no access log",
)


def tracing_bench(seconds: float, work: Path) -> dict:
    """What observability costs where it shows most, on the toy model's next-token path: tracing off
    (the default), tracing on (every span exported over OTLP/HTTP to a sink on loopback that answers
    at once), tracing on with one trace in ten sampled and with none sampled (what a request that is
    not sampled costs), and the access log off."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    sink = ThreadingHTTPServer(("127.0.0.1", free_port()), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    env = service_env(ROOT / "bundles" / "toy" / "1")
    script = wrk_script(work, "/v1/next-token", request_bodies("next-token", ["I do not like"]), "tracing")
    otlp = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}"}
    ratio = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
    sampled, unsampled = {**ratio, "OTEL_TRACES_SAMPLER_ARG": "0.1"}, {**ratio, "OTEL_TRACES_SAMPLER_ARG": "0"}
    variants = (
        env,
        {**env, **otlp},
        {**env, **otlp, **sampled},
        {**env, **otlp, **unsampled},
        {**env, "ACCESS_LOG": "false"},
    )
    servers: Servers = {
        f"service, {name}": ([sys.executable, "-m", "service"], e, "/readyz", script)
        for name, e in zip(TRACING_VARIANTS, variants, strict=True)
    }
    try:
        # Two rounds, every variant in turn in each, and the better of each point: a few per cent is
        # what is measured here, and one run of one server can lose that much to the machine alone.
        rounds = [drive(servers, seconds, work) for _ in range(TRACING_ROUNDS)]
        best = {
            name: [max(points, key=lambda p: p["rps"]) for points in zip(*(r[name] for r in rounds), strict=True)]
            for name in servers
        }
        return {"rounds": TRACING_ROUNDS, "servers": best}
    finally:
        sink.shutdown()

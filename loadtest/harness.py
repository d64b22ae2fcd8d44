"""Running servers and wrk for the HTTP benchmarks: processes on loopback ports, wrk scripts, CPU time."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from loadtest.workload import load_prompts

log = logging.getLogger("bench")


log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent


LENGTHS = (16, 64, 256)
CONCURRENCY = (1, 4, 16, 64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {**os.environ, **env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.log_file = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(argv, env=environ, cwd=ROOT, stdout=self.log_file, stderr=self.log_file)

    def wait_ready(self, path: str, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {timeout}s")

    def metrics(self) -> str:
        import httpx

        return httpx.get(self.url + "/metrics", timeout=10).text

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log_file.close()


WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKJSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"non2xx\\": %d, "
    .. "\\"socket_errors\\": %d, \\"p50\\": %d, \\"p90\\": %d, \\"p99\\": %d, \\"p999\\": %d}\\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
"""


def wrk_script(directory: Path, path: str, bodies: list[bytes] | None = None, name: str = "") -> Path:
    """A wrk Lua script that cycles through the bodies (POST), or GETs path, and prints JSON at the end."""
    if bodies:
        lua = ", ".join(f"[==[{b.decode()}]==]" for b in bodies)
        request = (
            f"bodies = {{{lua}}}\ncounter = 0\nrequest = function()\n  counter = counter + 1\n"
            f'  return wrk.format("POST", "{path}", {{["Content-Type"] = "application/json"}}, '
            "bodies[(counter % #bodies) + 1])\nend\n"
        )
    else:
        request = f'request = function() return wrk.format("GET", "{path}") end\n'
    script = directory / ("wrk" + re.sub(r"\W+", "_", path + name) + ".lua")
    script.write_text(request + WRK_DONE)
    return script


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> dict:
    # One wrk thread: on a 2-core machine the load generator must leave the server a core.
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    match = re.search(r"WRKJSON (\{.*\})", out.stdout)
    if not match:
        raise RuntimeError(f"wrk gave no result: {out.stdout}\n{out.stderr}")
    r = json.loads(match.group(1))
    ok = r["requests"] - r["non2xx"]
    seconds_run = r["duration_us"] / 1e6
    return {
        "concurrency": connections,
        "rps": ok / seconds_run,
        "requests": r["requests"],
        "errors": r["non2xx"],
        "socket_errors": r["socket_errors"],
        "p50_ms": r["p50"] / 1000,
        "p90_ms": r["p90"] / 1000,
        "p99_ms": r["p99"] / 1000,
        "p99.9_ms": r["p999"] / 1000,
    }


def histogram_totals(metrics: str, histogram: str, label: str) -> tuple[float, float]:
    """(sum, count) so far of one of the service's histograms, over the series with this label
    (`endpoint="next_token"`), summed over the others (model versions, routes)."""
    totals = {"sum": 0.0, "count": 0.0}
    for line in metrics.splitlines():
        # Line by line: a label value may hold braces (the route template /v2/models/{name}/infer).
        for name in totals:
            if line.startswith(f"{histogram}_{name}{{") and label in line:
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals["sum"], totals["count"]


def batch_totals(metrics: str, endpoint: str = "next_token") -> tuple[float, float]:
    """(rows, batches) so far, from the service's batch-size histogram."""
    return histogram_totals(metrics, "attnserve_batch_size", f'endpoint="{endpoint}"')


# Where a request's time goes in the server, as means from its histograms: its whole time there (to
# the last byte written), its rows' wait for a batch, and the batch's inference.
STAGES = {
    "request": ("attnserve_request_latency_seconds", 'protocol="http"'),
    "queue wait": ("attnserve_queue_wait_seconds", 'endpoint="next_token"'),
    "inference": ("attnserve_inference_seconds", 'endpoint="next_token"'),
}


def stage_means_ms(before: str, after: str) -> dict[str, float]:
    """Each stage's mean in ms between two /metrics texts."""
    out = {}
    for stage, (histogram, label) in STAGES.items():
        (s0, n0), (s1, n1) = histogram_totals(before, histogram, label), histogram_totals(after, histogram, label)
        out[stage] = (s1 - s0) * 1000 / max(1.0, n1 - n0)
    return out


TRITON = "Triton (PyTriton), KServe v2"
SHORT_PROMPT_TOKENS = 12


Servers = dict[str, tuple[list[str], dict[str, str], str, Path]]  # name: (command, environment, ready path, wrk)


def drive(servers: Servers, seconds: float, work: Path) -> dict[str, list[dict]]:
    """Each server in turn, alone on the machine: wrk at each concurrency after a warm-up."""
    out = {}
    for name, (argv, env, ready, script) in servers.items():
        server = Server(re.sub(r"\W+", "_", name), argv, env, work)
        try:
            server.wait_ready(ready)
            run_wrk(server.url, script, 16, 2)  # warm-up
            points = []
            for c in CONCURRENCY:
                before = server.metrics() if name.startswith("service") else None
                cpu_before = main_thread_cpu_s(server.process.pid)
                point = run_wrk(server.url, script, c, seconds)
                if name.startswith("service") and env.get("WORKERS", "1") == "1":
                    # The event loop's own thread: the Python cost of each request, inference excluded
                    # (with WORKERS > 1 the process is the supervisor, whose loop serves nothing).
                    spent = main_thread_cpu_s(server.process.pid) - cpu_before
                    point["loop_us_per_request"] = spent * 1e6 / max(1, point["requests"])
                log.info(
                    "%s c=%d: %.1f rps, p50 %.1f ms, p99 %.1f ms, errors %d",
                    name,
                    c,
                    point["rps"],
                    point["p50_ms"],
                    point["p99_ms"],
                    point["errors"],
                )
                points.append(point)
                if before is not None:
                    after = server.metrics()
                    (rows0, batches0), (rows1, batches1) = batch_totals(before), batch_totals(after)
                    point["mean_batch"] = (rows1 - rows0) / max(1.0, batches1 - batches0)
                    point["stages_ms"] = stage_means_ms(before, after)
            out[name] = points
        finally:
            server.stop()
    return out


def main_thread_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process's main thread, from /proc."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def short_prompt(bundle_dir: Path, tokens: int = SHORT_PROMPT_TOKENS) -> str:
    """The first prompt of the prompt file, cut to exactly `tokens` tokens by the bundle's tokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))
    ids = tok.encode(" ".join(load_prompts())).ids[:tokens]
    return tok.decode(ids)


def service_answer(env: dict[str, str], body: bytes, work: Path) -> str:
    """The service's own answer to one next-token request: the body a constant server replays."""
    import httpx

    server = Server("answer_source", [sys.executable, "-m", "service"], env, work)
    try:
        server.wait_ready("/readyz")
        return httpx.post(
            server.url + "/v1/next-token", content=body, headers={"content-type": "application/json"}
        ).text
    finally:
        server.stop()


def by_concurrency(servers: dict[str, list[dict]]) -> dict[str, dict[int, dict]]:
    """Each server's points keyed by their concurrency."""
    return {name: {p["concurrency"]: p for p in points} for name, points in servers.items()}


def service_env(bundle_dir: Path) -> dict[str, str]:
    return {"MODEL_DIR": str(bundle_dir), "DEVICE": "cpu", "LOG_LEVEL": "warning"}

"""WORKERS=N: N whole servers on one port, one process each (Triton's instance groups).

Why instances and not vLLM's split (API processes that hand every request to one engine process):
the split exists to keep one copy of a large model and whole batches on one GPU. attnserve's model
is tens of MB, so N copies cost nothing, while what limits it is the per-request Python work (HTTP,
validation, tokenizing, answering), which an engine process behind IPC would still do on one core
for every request, plus a serialisation each way. Each instance here has its own event loop, ONNX
Runtime session, batcher and scheduler; its batches are 1/N as wide, which costs a GPU some
efficiency at low load and nothing once every instance is busy.

Each worker binds the port with SO_REUSEPORT and the kernel spreads new connections across them.
This process (the supervisor) starts the workers, forwards SIGTERM and SIGINT (each worker drains as
a single server would; a second signal stops them at once), and, if a worker dies, stops the rest
and exits non-zero, so that the container restarts as a whole rather than serving on fewer workers
than it was sized for.

What is per worker: every limit (connections, queues, in-flight bytes, KV cache) and the model
repository's state; MODEL_CONTROL_MODE=explicit is refused with WORKERS > 1, since a load or unload
call would reach one worker only (poll mode converges: every worker polls the same directory).
Metrics are gathered: each worker writes its own to a shared directory every second, and /metrics on
any worker answers every worker's series, each with a `worker` label.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from service.server.settings import Settings

log = logging.getLogger("service")

# Set by the supervisor for its workers only; not settings a user gives.
WORKER_ENV = "ATTNSERVE_WORKER_INDEX"
METRICS_DIR_ENV = "ATTNSERVE_WORKER_METRICS_DIR"
METRICS_WRITE_S = 1.0


def worker_index() -> int | None:
    """This process's worker number when a supervisor started it, else None."""
    raw = os.environ.get(WORKER_ENV)
    return int(raw) if raw is not None else None


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """The worker's own listening socket on the shared port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _die_with_parent() -> None:
    """In each worker, before it runs: SIGTERM when the supervisor dies, even by SIGKILL, so that no
    worker is left serving the port without it (Linux's PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def supervise(settings: Settings) -> int:
    """Run settings.workers workers until they stop; returns the exit status."""
    n = settings.workers
    metrics_dir = tempfile.mkdtemp(prefix="attnserve-metrics-")
    # Each worker's ONNX Runtime gets its share of the cores unless INTRA_OP_THREADS says otherwise.
    threads = settings.intra_op_threads or max(1, (os.cpu_count() or 1) // n)
    procs = []
    for i in range(n):
        env = {**os.environ, WORKER_ENV: str(i), METRICS_DIR_ENV: metrics_dir, "INTRA_OP_THREADS": str(threads)}
        procs.append(subprocess.Popen([sys.executable, "-m", "service"], env=env, preexec_fn=_die_with_parent))
    log.info("supervising %d workers on port %d (pids %s)", n, settings.port, [p.pid for p in procs])
    stopping = False
    status = 0

    def forward(sig: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        while any(p.poll() is None for p in procs):
            for i, p in enumerate(procs):
                if p.returncode is not None and not stopping:
                    log.error("worker %d exited with status %s: stopping the others", i, p.returncode)
                    status = 1
                    forward(signal.SIGTERM, None)
            time.sleep(0.1)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    # uvicorn ends a drained server by raising the signal again, so a worker that stopped because it
    # was told to reports the signal: that is a clean stop.
    told = {0, -signal.SIGTERM, -signal.SIGINT}
    return status or next((p.returncode for p in procs if p.returncode not in told), 0)


class WorkerMetrics:
    """One worker's share of the gathered metrics: it writes its own, and answers everyone's.

    Why not prometheus_client's multiprocess mode, which does this for a pre-fork server: it sums
    counters and histograms across processes, so a worker that sheds load or has a slow batcher is
    invisible in them, and its gauges are keyed by pid, which differs at every start. The `worker`
    label (0..N-1) is the same at every start and is on every series, which is what a dashboard per
    worker needs. The cost is this class: the library's own exposition text, written to a file per
    worker and merged at scrape time.
    """

    def __init__(self, index: int, directory: Path, registry: CollectorRegistry) -> None:
        self.index = index
        self.directory = directory
        self.registry = registry

    async def publish(self) -> None:
        """Write this worker's metrics every METRICS_WRITE_S until cancelled."""
        while True:
            self._write()
            await asyncio.sleep(METRICS_WRITE_S)

    def _write(self) -> None:
        tmp = self.directory / f".{self.index}.prom"
        tmp.write_bytes(generate_latest(self.registry))
        os.replace(tmp, self.directory / f"{self.index}.prom")  # readers never see half a file

    def exposition(self) -> bytes:
        """Every worker's series with a `worker` label: this worker's live, the others' as last written."""
        texts = {self.index: generate_latest(self.registry).decode()}
        for path in self.directory.glob("*.prom"):
            if path.stem.isdigit() and int(path.stem) != self.index:
                texts[int(path.stem)] = path.read_text()
        families: dict[str, Metric] = {}
        for worker, text in sorted(texts.items()):
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type, family.unit)
                )
                for s in family.samples:
                    labels = {**s.labels, "worker": str(worker)}
                    merged.samples.append(Sample(s.name, labels, s.value, s.timestamp, s.exemplar))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(families.values()))
        return generate_latest(registry)


class _Families:
    """A collector that hands prometheus_client's renderer families already built."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from export.toy import build_toy_bundle

ROOT = Path(__file__).resolve().parent.parent


def _gpu_usable() -> bool:
    import onnxruntime as ort

    from service.core.runner import CUDA, gpu_present

    return CUDA in ort.get_available_providers() and gpu_present()


# Most tests pin DEVICE=cpu; the few about device choice expect what this machine has.
GPU = _gpu_usable()
DEFAULT_BUNDLE = ROOT / "bundles" / "attnserve-shakespeare" / "1"


@pytest.fixture(scope="session")
def toy_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle: the toy model trained, exported and verified by the project's own code."""
    return build_toy_bundle(tmp_path_factory.mktemp("bundle") / "toy")


def place_version(bundle: Path, version_dir: Path) -> Path:
    """A copy of the bundle as a version of a repository model: the server refuses a version directory
    that is a symlink out of its repository (and a copy can be changed without touching the original)."""
    shutil.copytree(bundle, version_dir)
    return version_dir


def model_repository(tmp: Path, toy: Path, *, shakespeare: bool = True) -> Path:
    """A repository of the toy model (version 1) and, unless told not to, the Shakespeare model."""
    repo = tmp / "repo"
    place_version(toy, repo / "toy" / "1")
    if shakespeare:
        place_version(DEFAULT_BUNDLE, repo / "attnserve-shakespeare" / "1")
    return repo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def start_server(bundle: Path, tmp: Path, command: Sequence[str] = (), **env: str | int | float) -> Server:
    """Start `python -m service` (or `command`) on a free loopback port and wait until /readyz says 200."""
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    environ = {**os.environ, "MODEL_DIR": str(bundle), "HOST": "127.0.0.1", "PORT": str(port), "DEVICE": "cpu"}
    environ["GRPC_PORT"] = "0"  # off unless a test asks for it: servers of one run would share 8001
    environ.update({k.upper(): str(v) for k, v in env.items()})
    with open(log_path, "wb") as log:
        argv = list(command) or [sys.executable, "-m", "service"]
        process = subprocess.Popen(argv, env=environ, stdout=log, stderr=log, cwd=ROOT)
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready in time:\n{server.log()}")


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def factory(bundle: Path, **env: str | int | float) -> Server:
        server = start_server(bundle, tmp_path, **env)
        started.append(server)
        return server

    yield factory
    for s in started:
        if s.process.poll() is None:
            s.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def toy_server(toy_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One shared server over the toy bundle, for tests that do not change settings."""
    server = start_server(toy_bundle, tmp_path_factory.mktemp("server"), max_batch_delay_ms=5)
    yield server
    server.stop()


def metric_value(metrics: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include these (0 when there are none)."""
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in metrics.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head = line.rsplit(" ", 1)[0]
            if all(w in head for w in wanted):
                total += float(line.split()[-1])
    return total


def batches_larger_than_one(metrics: str, endpoint: str) -> float:
    count = metric_value(metrics, "attnserve_batch_size_count", endpoint=endpoint)
    return count - metric_value(metrics, "attnserve_batch_size_bucket", endpoint=endpoint, le="1.0")

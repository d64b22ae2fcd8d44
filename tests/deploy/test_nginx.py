"""The compose stack's nginx configuration, run outside containers: two real replicas on loopback,
load through nginx, one replica killed mid-run; clients must see no failure."""

import asyncio
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, metric_value

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")


def requests_served(url: str) -> float:
    metrics = httpx.get(url + "/metrics").text
    return metric_value(metrics, "attnserve_requests_total", route="/v1/next-token", status="200")


@pytest.fixture
def nginx_in_front(tmp_path, server_factory, toy_bundle):
    replicas = [server_factory(toy_bundle, max_batch_delay_ms=2) for _ in range(2)]
    conf = tmp_path / "nginx"
    shutil.copytree(ROOT / "deploy" / "nginx", conf)
    port = free_port()
    # The same files as the compose stack; only the listening port and the upstream list differ.
    proxy = (conf / "proxy.conf").read_text()
    assert "listen 8080;" in proxy
    (conf / "proxy.conf").write_text(proxy.replace("listen 8080;", f"listen 127.0.0.1:{port};"))
    servers = "\n".join(f"    server {r.url.removeprefix('http://')} max_fails=1 fail_timeout=5s;" for r in replicas)
    (conf / "upstream.conf").write_text(f"upstream attnserve_api {{\n{servers}\n    keepalive 64;\n}}\n")
    process = subprocess.Popen(
        [NGINX, "-c", str(conf / "nginx.conf"), "-g", f"daemon off; pid {tmp_path / 'nginx.pid'};"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    yield url, replicas
    process.send_signal(signal.SIGQUIT)
    process.wait(10)


def test_clients_see_no_failure_when_a_replica_dies(nginx_in_front):
    url, replicas = nginx_in_front

    async def load(seconds: float) -> list[int]:
        statuses: list[int] = []

        async def client(i: int) -> None:
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                stop = time.monotonic() + seconds
                while time.monotonic() < stop:
                    r = await c.post("/v1/next-token", json={"texts": [f"I do not like {i}"]})
                    statuses.append(r.status_code)

        await asyncio.gather(*(client(i) for i in range(8)))
        return statuses

    before = asyncio.run(load(1.5))
    served = [requests_served(r.url) for r in replicas]
    assert all(n > 0 for n in served), f"both replicas should have served traffic: {served}"

    async def load_and_kill() -> list[int]:
        task = asyncio.create_task(load(3.0))
        await asyncio.sleep(1.0)
        replicas[0].process.send_signal(signal.SIGKILL)
        return await task

    during = asyncio.run(load_and_kill())
    assert replicas[0].process.wait(10) == -signal.SIGKILL
    assert set(before) == {200} and set(during) == {200}, {s: during.count(s) for s in set(during)}
    assert len(during) > 20
    assert requests_served(replicas[1].url) > served[1]

"""How the server behaves for operators: overload, timeouts, draining, settings, start-up."""

import asyncio
import json
import os
import signal
import subprocess
import sys

import httpx

from tests.conftest import GPU, ROOT, batches_larger_than_one

JSON = {"content-type": "application/json"}


async def _burst(url: str, n: int, body: dict, path: str = "/v1/next-token") -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.post(path, json=body) for _ in range(n)))


def test_overload_answers_503_at_once_and_serves_everything_it_accepted(server_factory, toy_bundle):
    # Room for two requests of four rows each; one row per batch keeps the queue full.
    server = server_factory(
        toy_bundle, max_queue_rows=8, max_texts_per_request=8, max_batch_size=1, max_batch_delay_ms=0
    )
    responses = asyncio.run(_burst(server.url, 60, {"texts": ["I do not like hate. " * 4] * 4, "truncate": True}))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) > 0 and codes.count(200) > 0
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1" and "queue is full" in r.json()["error"]["message"]
        else:
            assert r.json()["results"][0]["top"]
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert httpx.post(server.url + "/v1/next-token", json={"texts": ["we"]}).status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    assert 'status="500"' not in metrics and "attnserve_rejected_rows_total" in metrics


def test_a_request_that_waits_too_long_gets_504(server_factory, toy_bundle):
    # One row per batch, 8 rows per request and a 50 ms budget: the back of a burst of 80 waits longer.
    server = server_factory(toy_bundle, max_batch_size=1, request_timeout_s=0.05, max_queue_rows=1000)
    body = {"texts": ["I do not like hate. " * 4] * 8, "truncate": True}
    responses = asyncio.run(_burst(server.url, 80, body, path="/v1/attention"))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 504} and 504 in codes, codes
    timed_out = next(r for r in responses if r.status_code == 504)
    assert "REQUEST_TIMEOUT_S" in timed_out.json()["error"]["message"]
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert httpx.post(server.url + "/v1/score", json={"texts": ["I do"]}).status_code == 200


def test_dynamic_batching_groups_concurrent_requests(server_factory, toy_bundle):
    server = server_factory(toy_bundle, max_batch_delay_ms=50, max_batch_size=16)
    responses = asyncio.run(_burst(server.url, 32, {"texts": ["we do like"]}))
    assert all(r.status_code == 200 for r in responses)
    assert batches_larger_than_one(httpx.get(server.url + "/metrics").text, "next_token") > 0


def test_sigterm_drains_accepted_requests_then_exits(server_factory, toy_bundle):
    # A long batch delay keeps the requests in the queue while SIGTERM arrives.
    server = server_factory(toy_bundle, max_batch_delay_ms=1000, max_batch_size=64)

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            pending = [
                asyncio.create_task(client.post("/v1/next-token", json={"texts": [f"I do {i}"]})) for i in range(12)
            ]
            await asyncio.sleep(0.5)
            server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            try:
                ready = (await client.get("/readyz")).status_code
            except httpx.TransportError:
                ready = "refused"  # new connections are no longer accepted
            return await asyncio.gather(*pending), ready

    responses, ready = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 12
    assert ready in (503, "refused")
    # uvicorn re-raises the signal once it has drained, so the exit status is the signal's own.
    assert server.process.wait(30) in (0, -signal.SIGTERM)
    assert "INFO service.server.app: stopped" in server.log() and "Traceback" not in server.log()
    try:
        httpx.get(server.url + "/healthz", timeout=2)
        raise AssertionError("the server still accepts connections after draining")
    except httpx.TransportError:
        pass


def run_service(**env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PORT": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "service"], env=environ, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_invalid_settings_stop_the_start_with_a_clear_message(toy_bundle):
    result = run_service(MODEL_DIR=str(toy_bundle), MAX_BATCH_SIZE="0", DEVICE="tpu")
    assert result.returncode == 2
    assert "MAX_BATCH_SIZE" in result.stderr and "DEVICE" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_bundle_or_gpu_stops_the_start_with_a_clear_message(toy_bundle, tmp_path):
    result = run_service(MODEL_DIR=str(tmp_path))
    assert result.returncode == 2 and "manifest.json" in result.stderr and "Traceback" not in result.stderr
    if not GPU:  # on a machine with a usable GPU, DEVICE=cuda starts: test_start_up_names_its_provider covers it
        result = run_service(MODEL_DIR=str(toy_bundle), DEVICE="cuda")
        assert result.returncode == 2 and "CUDA cannot be used" in result.stderr


def test_the_service_never_imports_torch():
    code = (
        "import sys, service.__main__, service.server.app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_start_up_names_its_provider_in_one_line(server_factory, toy_bundle):
    server = server_factory(toy_bundle, device="auto")
    httpx.get(server.url + "/healthz")
    server.stop()
    log = server.log()
    # DEVICE=auto takes the GPU where one works, and says why not where none does.
    assert ("on CUDAExecutionProvider" if GPU else "on CPUExecutionProvider (no usable GPU found)") in log
    assert "Traceback" not in log and "ERROR" not in log


def test_clients_that_hang_up_do_not_break_the_batch_for_the_others(server_factory, toy_bundle):
    server = server_factory(toy_bundle, max_batch_size=8, max_batch_delay_ms=50)
    body = json.dumps({"texts": ["I do not like hate. " * 4] * 4, "truncate": True}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    raw = (
        f"POST /v1/attention HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def hang_up() -> None:
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        await writer.drain()
        writer.close()  # gone before the answer: its rows are still in the queue or in a batch

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            patient = [asyncio.create_task(client.post("/v1/attention", content=body, headers=JSON)) for _ in range(12)]
            await asyncio.gather(*(hang_up() for _ in range(12)))
            return await asyncio.gather(*patient)

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 12
    assert all(len(r.json()["results"]) == 4 for r in responses)
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert 'status="500"' not in httpx.get(server.url + "/metrics").text
    assert "Traceback" not in server.log()

"""Build the Dockerfile and run the image and the compose stack for real, with podman."""

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port
from tests.deploy import podman as pm

WHY_NOT = pm.available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"container tests skipped: {WHY_NOT}")
IMAGE = "localhost/attnserve:cpu"
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.cpu.yml", "docker-compose.scale.yml"]


def venv_tool(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).parent / name)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = pm.environment(tmp_path_factory.mktemp("podman"))
    pm.import_base(env)
    pm.podman(
        env,
        "build",
        "--format",
        "docker",
        "--pull=never",
        "--target",
        "serve",
        "--build-arg",
        "LOCK=requirements/image-cpu.txt",
        "-t",
        IMAGE,
        str(ROOT),
        timeout=1200,
    )
    yield env
    pm.podman(env, "rm", "--all", "--force", check=False)


def wait_ready(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready in {timeout}s")


def test_image_serves_runs_as_non_root_without_torch_and_drains_on_sigterm(env):
    port = free_port()
    name = f"attnserve-test-{port}"
    pm.podman(
        env,
        "run",
        "-d",
        "--name",
        name,
        "-p",
        f"127.0.0.1:{port}:8000",
        "-e",
        "MAX_BATCH_DELAY_MS=800",
        "-e",
        "MAX_BATCH_SIZE=64",
        IMAGE,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    r = httpx.post(url + "/v1/next-token", json={"texts": ["ROMEO:"], "top_k": 2}, timeout=30)
    assert r.status_code == 200 and len(r.json()["results"][0]["top"]) == 2

    inspect = json.loads(pm.podman(env, "inspect", IMAGE).stdout)[0]
    health = (inspect.get("Healthcheck") or inspect["Config"].get("Healthcheck"))["Test"]  # podman: top level
    assert "/readyz" in " ".join(health)
    assert pm.podman(env, "healthcheck", "run", name, check=False).returncode == 0
    assert pm.podman(env, "exec", name, "id", "-u").stdout.strip() == "10001"
    no_torch = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
    assert pm.podman(env, "exec", name, "python", "-c", no_torch, check=False).returncode == 0

    # Requests wait in the batcher (800 ms) while SIGTERM arrives: every one must still be answered.
    statuses: list[int] = []

    def ask(i: int) -> None:
        statuses.append(httpx.post(url + "/v1/next-token", json={"texts": [f"KING {i}:"]}, timeout=30).status_code)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    pm.podman(env, "kill", "--signal", "TERM", name)
    for t in threads:
        t.join(30)
    assert statuses == [200] * 6
    pm.podman(env, "wait", name, timeout=60)
    out = pm.podman(env, "logs", name)
    # The image logs JSON, one object per line, from every logger.
    lines = [line for stream in (out.stderr, out.stdout) for line in stream.splitlines() if line.strip()]
    not_json = [line for line in lines if not line.startswith("{")]
    assert not not_json, not_json[:5]
    records = [json.loads(line) for line in lines]
    assert {"logger": "service.server.app", "message": "stopped"}.items() <= next(
        r for r in records if r["message"] == "stopped"
    ).items()
    assert not any("exception" in r or "Traceback" in r["message"] for r in records)


def compose(
    env: dict, *args: str, files: list[str] = COMPOSE_FILES, project: str = "attnserve-test", timeout: float = 900
) -> subprocess.CompletedProcess:
    file_args = [a for f in files for a in ("-f", f)]
    result = subprocess.run(
        [venv_tool("podman-compose"), "-p", project, *file_args, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"podman-compose {' '.join(args)}: {result.stdout}\n{result.stderr}")
    return result


def test_compose_stack_serves_through_nginx(env):
    env = {**env, "LB_PORT": str(free_port()), "ATTNSERVE_TAG": "cpu"}
    url = f"http://127.0.0.1:{env['LB_PORT']}"
    try:
        compose(env, "up", "-d")
        wait_ready(url, timeout=120)  # podman 4.3 ignores `condition: service_healthy`: poll instead
        r = httpx.post(url + "/v1/next-token", json={"texts": ["To be"]}, headers={"X-Request-ID": "through-nginx"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "through-nginx"
        r = httpx.post(url + "/v1/attention", json={"texts": ["To be"], "layers": [0], "heads": [0]})
        assert r.status_code == 200 and r.json()["results"][0]["attention"]
    finally:
        compose(env, "down", "-t", "30")


def test_merged_compose_files_are_valid_compose(env):
    check = venv_tool("check-jsonschema")
    # The override files use !reset, which only a Compose implementation understands: merge, then check.
    merged = compose({**env, "ATTNSERVE_TAG": "cpu"}, "config").stdout
    out = Path(ROOT / ".cache")
    out.mkdir(exist_ok=True)
    (out / "compose-merged.yml").write_text(merged)
    result = subprocess.run(
        [check, "--builtin-schema", "vendor.compose-spec", str(out / "compose-merged.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nvidia" not in merged and "nginx" in merged


def test_compose_loadtest_profile_runs_locust_against_the_api(env):
    env = {**env, "ATTNSERVE_TAG": "cpu", "PORT": str(free_port()), "LOCUST_USERS": "4", "LOCUST_TIME": "5s"}
    files, project = ["docker-compose.yml", "docker-compose.cpu.yml"], "attnserve-loadtest"
    try:
        compose(env, "--profile", "loadtest", "up", "-d", files=files, project=project)
        container = f"{project}_loadtest_1"
        exit_code = pm.podman(env, "wait", container, timeout=600).stdout.strip()
        logs = pm.podman(env, "logs", container)
        output = logs.stdout + logs.stderr
        assert exit_code == "0", output[-3000:]
        aggregated = next(line for line in output.splitlines() if line.strip().startswith("Aggregated"))
        requests, failures = (int(x.split("(")[0]) for x in aggregated.split()[1:3])  # "0(0.00%)"
        assert requests > 0 and failures == 0, aggregated
    finally:
        compose(env, "--profile", "loadtest", "down", "-t", "30", files=files, project=project)

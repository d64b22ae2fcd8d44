"""Defects found by the second round of probing (issue 27), each on a real server over loopback: input
that once got a 500, a repository that never retried, log lines a client could forge, files outside
a bundle, keys and settings that failed silently, and a drain that dropped connections. Memory
outside the bound has its own file: test_memory_bound.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT, model_repository, place_version


def _raw(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _index(url: str, **kw) -> dict[tuple[str, str], dict]:
    return {(m["name"], m["version"]): m for m in httpx.post(url + "/v2/repository/index", **kw).json()}


def _serve_repository(server_factory, toy, repo, **env):
    """A server over a repository (not MODEL_DIR), with the toy model as the default."""
    return server_factory(toy, model_dir="", model_repository=repo, **{"default_model": "toy", **env})


def _wait_for(check, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


# -- 1. v2 parameters take ASCII digits only ----------------------------------------------------------


@pytest.mark.parametrize("model", ["next_token", "toy.score", "toy.logit_lens", "toy.attention"])
@pytest.mark.parametrize("ablate", ["\u00b2.0", "0.\u00b2", "\u0660.\u0662", "\uff10.\uff12", "0.-1"])
def test_v2_ablate_with_digits_that_are_not_ascii_is_a_400_naming_it(toy_server, model, ablate):
    body = {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["we do like"]}],
        "parameters": {"ablate": ablate},
    }
    r = httpx.post(f"{toy_server.url}/v2/models/{model}/infer", json=body)
    assert r.status_code == 400, r.text
    assert "ablate" in r.json()["error"]


@pytest.mark.parametrize("layers", ["\u0660", "\u00b2", " 1_0", "0,\uff11"])
def test_v2_index_lists_with_digits_that_are_not_ascii_are_a_400(toy_server, layers):
    body = {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["we do like"]}],
        "parameters": {"layers": layers},
    }
    r = httpx.post(f"{toy_server.url}/v2/models/toy.attention/infer", json=body)
    assert r.status_code == 400 and "layers" in r.json()["error"], r.text


# -- 2. deeply nested JSON is malformed JSON, everywhere ----------------------------------------------


NESTED_ROUTES = [
    ("/v1/next-token", "native"),
    ("/v1/attention", "native"),
    ("/v1/score", "native"),
    ("/v1/logit-lens", "native"),
    ("/v1/head-importance", "native"),
    ("/v1/completions", "openai"),
    ("/v2/models/next_token/infer", "v2"),
]


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize(("path", "shape"), NESTED_ROUTES)
def test_deeply_nested_json_is_a_400_malformed_json_on_every_route(toy_server, path, shape, depth):
    key = "inputs" if shape == "v2" else "texts"
    body = b'{"%s": ' % key.encode() + b"[" * depth + b"]" * depth + b"}"
    r = httpx.post(toy_server.url + path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text[:300]
    error = r.json()["error"]
    if shape == "native":
        assert error["type"] == "malformed_json", error
    elif shape == "openai":
        assert error["code"] == "malformed_json", error
    else:
        assert "not valid JSON" in error, error
    assert httpx.get(toy_server.url + "/healthz").status_code == 200


# -- 4. poll mode tries a failed version again once its files change --------------------------------


def test_poll_retries_a_version_whose_files_changed_and_forgets_a_deleted_one(toy_bundle, server_factory, tmp_path):
    repo = model_repository(tmp_path, toy_bundle, shakespeare=False)
    s = server_factory(
        toy_bundle, model_dir="", model_repository=repo, model_control_mode="poll", repository_poll_s=0.3
    )

    def state(version: str) -> dict:
        return _index(s.url).get(("toy", version), {})

    # A truncated graph: unavailable with its reason; fixed in place: it serves.
    v2 = place_version(toy_bundle, tmp_path / "staging" / "2")
    good = (v2 / "attention.onnx").read_bytes()
    (v2 / "attention.onnx").unlink()
    (v2 / "attention.onnx").write_bytes(good[: len(good) // 2])
    shutil.move(v2, repo / "toy" / "2")
    assert _wait_for(lambda: state("2").get("state") == "UNAVAILABLE"), _index(s.url)
    assert "corrupt" in state("2")["reason"]
    (repo / "toy" / "2" / "attention.onnx").write_bytes(good)
    assert _wait_for(lambda: state("2").get("state") == "READY"), _index(s.url)

    # Copied non-atomically: the manifest first, the rest later.
    v3 = repo / "toy" / "3"
    v3.mkdir()
    shutil.copy(toy_bundle / "manifest.json", v3)
    assert _wait_for(lambda: state("3").get("state") == "UNAVAILABLE")
    for f in toy_bundle.iterdir():
        if f.name != "manifest.json":
            shutil.copy(f, v3)
    assert _wait_for(lambda: state("3").get("state") == "READY"), _index(s.url)

    # A broken version that is then deleted leaves the index; the one before it still serves.
    v4 = place_version(toy_bundle, tmp_path / "staging" / "4")
    (v4 / "weights.bin").unlink()
    (v4 / "weights.bin").write_bytes(b"x")
    shutil.move(v4, repo / "toy" / "4")
    assert _wait_for(lambda: state("4").get("state") == "UNAVAILABLE")
    shutil.rmtree(repo / "toy" / "4")
    assert _wait_for(lambda: ("toy", "4") not in _index(s.url)), _index(s.url)
    assert state("3")["state"] == "READY"


# -- 5. an OTLP endpoint that does not answer does not hold up the exit -----------------------------


@pytest.mark.parametrize("endpoint", ["closed", "silent"])
def test_an_unreachable_trace_endpoint_delays_shutdown_by_seconds_not_half_a_minute(
    toy_bundle, server_factory, endpoint
):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts (in the kernel) and never answers
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    port = silent.getsockname()[1] if endpoint == "silent" else closed_port
    try:
        s = server_factory(toy_bundle, otel_exporter_otlp_endpoint=f"http://127.0.0.1:{port}")
        assert httpx.post(s.url + "/v1/next-token", json={"texts": ["we do"]}).status_code == 200
        started = time.monotonic()
        assert s.stop(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        took = time.monotonic() - started
    finally:
        silent.close()
    assert took < 10, f"exit took {took:.1f} s (31 s before the fix)"


# -- 6. no forged log lines -------------------------------------------------------------------------


def test_control_characters_in_a_path_cannot_forge_text_log_lines(toy_bundle, server_factory):
    s = server_factory(toy_bundle, log_format="text", api_keys="k")
    forged = "2026-12-05 07:00:00,000 ERROR forged"
    for path in (
        "/x%0A2026-12-05%2007:00:00,000%20ERROR%20forged",
        "/x%0D%0A2026-12-05%2007:00:00,000%20ERROR%20forged",
    ):
        answer = _raw(s.url, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
    _raw(s.url, b"GET /nul%00here HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    time.sleep(0.3)
    log = s.log_path.read_bytes()
    assert b"\x00" not in log
    assert not any(line.startswith(forged) for line in log.decode().splitlines())
    assert "/x\\n2026-12-05 07:00:00,000 ERROR forged" in log.decode()


def test_a_model_directory_named_with_a_newline_is_logged_on_one_line(toy_bundle, server_factory, tmp_path):
    repo = model_repository(tmp_path, toy_bundle, shakespeare=False)
    place_version(toy_bundle, repo / "evil\n2026-12-05 07:00:00,000 ERROR forged" / "1")
    s = _serve_repository(server_factory, toy_bundle, repo, log_format="text")
    lines = s.log().splitlines()
    assert not any(line.startswith("2026-12-05 07:00:00,000 ERROR") for line in lines)
    assert any("evil\\n2026-12-05" in line for line in lines)


# -- 7. files outside the version directory are refused ---------------------------------------------


def test_a_manifest_path_or_a_version_symlink_out_of_the_repository_is_unavailable(
    toy_bundle, server_factory, tmp_path
):
    repo = model_repository(tmp_path, toy_bundle, shakespeare=False)
    outside = place_version(toy_bundle, tmp_path / "elsewhere" / "bundle")
    absolute = place_version(toy_bundle, repo / "absolute" / "1")
    manifest = json.loads((absolute / "manifest.json").read_text())
    manifest["graphs"]["attention"]["file"] = str(outside / "attention.onnx")
    manifest["files"][str(outside / "attention.onnx")] = manifest["files"]["attention.onnx"]
    (absolute / "manifest.json").write_text(json.dumps(manifest))
    (repo / "linked").mkdir()
    (repo / "linked" / "1").symlink_to(outside)
    s = _serve_repository(server_factory, toy_bundle, repo)
    index = _index(s.url)
    assert index["absolute", "1"]["state"] == "UNAVAILABLE"
    assert "outside the bundle" in index["absolute", "1"]["reason"]
    assert index["linked", "1"]["state"] == "UNAVAILABLE"
    assert "outside the repository" in index["linked", "1"]["reason"]
    for entry in index.values():  # repository mode: no word of MODEL_DIR in its reasons
        assert "MODEL_DIR" not in entry.get("reason", "")
    r = httpx.post(s.url + "/v1/next-token", json={"texts": ["we do"], "model": "absolute"})
    assert r.status_code == 404


# -- 8. admin keys ------------------------------------------------------------------------------------


def test_admin_keys_alone_guard_the_repository_api_and_leave_the_rest_open(toy_bundle, server_factory, tmp_path):
    repo = model_repository(tmp_path, toy_bundle, shakespeare=False)
    s = _serve_repository(server_factory, toy_bundle, repo, model_control_mode="explicit", admin_api_keys="admin")
    unload = s.url + "/v2/repository/models/toy/unload"
    assert httpx.post(unload).status_code == 401
    assert httpx.post(unload, headers={"Authorization": "Bearer guess"}).status_code == 401
    assert httpx.post(s.url + "/v1/next-token", json={"texts": ["we do"]}).status_code == 200
    assert httpx.post(unload, headers={"Authorization": "Bearer admin"}).status_code == 200
    assert "the repository API needs an admin key" in s.log()


def test_an_admin_key_is_a_valid_key_wherever_one_is_asked(toy_bundle, server_factory, tmp_path):
    repo = model_repository(tmp_path, toy_bundle, shakespeare=False)
    s = _serve_repository(
        server_factory, toy_bundle, repo, model_control_mode="explicit", api_keys="user", admin_api_keys="admin"
    )
    admin, user = {"Authorization": "Bearer admin"}, {"Authorization": "Bearer user"}
    assert httpx.post(s.url + "/v1/next-token", json={"texts": ["we do"]}, headers=admin).status_code == 200
    assert httpx.post(s.url + "/v2/repository/models/toy/load", headers=user).status_code == 403
    assert httpx.post(s.url + "/v2/repository/models/toy/load", headers=admin).status_code == 200


# -- 9 and 10. settings that cannot serve stop the start; names that collide are refused -----------


def _run(**env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PORT": "1", "HOST": "127.0.0.1", "DEVICE": "cpu", **env}
    return subprocess.run(
        [sys.executable, "-m", "service"], env=environ, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_settings_that_can_serve_nothing_stop_the_start_naming_them(toy_bundle, tmp_path):
    result = _run(MODEL_REPOSITORY="/nonexistent")
    assert result.returncode == 2 and "MODEL_REPOSITORY=/nonexistent" in result.stderr, result.stderr
    result = _run(MODEL_REPOSITORY=str(model_repository(tmp_path, toy_bundle)), DEFAULT_MODEL="nope")
    assert result.returncode == 2 and "DEFAULT_MODEL=nope" in result.stderr, result.stderr
    result = _run(MODEL_DIR=str(toy_bundle), OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:1",
                  OTEL_EXPORTER_OTLP_PROTOCOL="bogus")  # fmt: skip
    assert result.returncode == 2 and "invalid settings" in result.stderr, result.stderr
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in result.stderr and "Traceback" not in result.stderr


def test_a_model_left_out_by_max_loaded_models_says_why(toy_bundle, server_factory, tmp_path):
    repo = model_repository(tmp_path, toy_bundle, shakespeare=False)
    place_version(toy_bundle, repo / "other" / "1")
    s = _serve_repository(server_factory, toy_bundle, repo, max_loaded_models=1)
    index = _index(s.url)
    assert index["toy", "1"]["state"] == "READY"
    assert "MAX_LOADED_MODELS=1" in index["other", "1"]["reason"]
    assert "other is not loaded: MAX_LOADED_MODELS=1" in s.log()


def test_readiness_follows_the_default_model_in_a_polled_repository(toy_bundle, server_factory, tmp_path):
    repo = model_repository(tmp_path, toy_bundle, shakespeare=False)
    s = server_factory(
        toy_bundle, model_dir="", model_repository=repo, model_control_mode="poll", repository_poll_s=0.3
    )
    shutil.rmtree(repo / "toy")
    assert _wait_for(lambda: httpx.get(s.url + "/readyz").status_code == 503)
    assert httpx.get(s.url + "/v2/health/ready").status_code == 503
    assert "not loaded" in httpx.get(s.url + "/readyz").json()["error"]["message"]


@pytest.mark.parametrize("name", ["attention", "toy.score"])
def test_a_model_named_like_a_job_or_with_a_dot_is_refused(toy_bundle, server_factory, tmp_path, name):
    repo = model_repository(tmp_path, toy_bundle, shakespeare=False)
    place_version(toy_bundle, repo / name / "1")
    s = _serve_repository(server_factory, toy_bundle, repo)
    entry = _index(s.url)[name, "1"]
    assert entry["state"] == "UNAVAILABLE" and "rename its directory" in entry["reason"], entry
    # The bare job name still reaches the default model's job, as documented.
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["we do"]}]}
    r = httpx.post(s.url + "/v2/models/attention/infer", json=body)
    assert r.status_code == 200 and r.json()["model_name"] == "attention"


# -- 11. every accepted connection gets an answer at drain -------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_connections_open_at_sigterm_get_an_answer_for_their_request(toy_bundle, server_factory, workers):
    s = server_factory(toy_bundle, workers=workers)
    host, port = s.url.removeprefix("http://").split(":")
    connections = [socket.create_connection((host, int(port)), timeout=10) for _ in range(16)]
    time.sleep(0.3)  # accepted by the server, no request sent yet
    s.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    body = json.dumps({"texts": ["we do"]}).encode()
    request = (
        b"POST /v1/next-token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    answers = []
    for c in connections:
        try:
            c.sendall(request)
            answer = b""
            while chunk := c.recv(65536):
                answer += chunk
        except OSError as e:
            answer = repr(e).encode()
        finally:
            c.close()
        answers.append(answer)
    statuses = [re.match(rb"HTTP/1.1 (\d+)", a) for a in answers]
    assert all(statuses), [a[:80] for a in answers]
    assert {m.group(1) for m in statuses if m} <= {b"200", b"503"}
    assert all(b"connection: close" in a.lower() for a in answers)
    assert s.process.wait(30) in (0, -signal.SIGTERM)

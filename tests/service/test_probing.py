"""Defects found by probing as a hostile client would, and the documented promises about errors
(docs/api.md): each request here once got a 500, an unbounded answer or an unhelpful error."""

import json
import socket
from urllib.parse import urlparse

import httpx
import pytest

PROMPT = "I do not"


def _raw(url: str, request: bytes) -> bytes:
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("model", ["next_token", "score", "attention"])
@pytest.mark.parametrize(
    ("shape", "data"),
    [
        ([0, 2**62, 4], []),
        ([0, 2**63], []),
        ([10**30, 0], []),
        ([1] * 64 + [3], [1, 2, 3]),
        ([3, 1, 1], [1, 2, 3]),
    ],
)
def test_v2_shapes_that_numpy_cannot_build_are_a_400(toy_server, model, shape, data):
    body = {"inputs": [{"name": "input_ids", "shape": shape, "datatype": "INT64", "data": data}]}
    r = httpx.post(f"{toy_server.url}/v2/models/{model}/infer", json=body)
    assert r.status_code == 400, r.text
    assert "input 'input_ids'" in r.json()["error"]


@pytest.mark.parametrize("length", ["\u00b2", "1\u0661", "-1", "", "0x10"])
def test_the_v2_header_length_takes_ascii_digits_only(toy_server, length):
    head = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}).encode()
    request = (
        b"POST /v2/models/next_token/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        b"Inference-Header-Content-Length: " + length.encode() + b"\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(head)
    ) + head
    answer = _raw(toy_server.url, request)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"Inference-Header-Content-Length must be a byte count" in answer


@pytest.mark.parametrize("stream", [False, True])
def test_a_negative_seed_is_its_64_bit_twos_complement(toy_server, stream):
    def completion(seed: int) -> str:
        body = {"model": "toy", "prompt": PROMPT, "max_tokens": 8, "seed": seed, "stream": stream}
        r = httpx.post(toy_server.url + "/v1/completions", json=body)
        assert r.status_code == 200, r.text
        if not stream:
            return r.json()["choices"][0]["text"]
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ") and line != "data: [DONE]"]
        return "".join(json.loads(e)["choices"][0]["text"] for e in events if json.loads(e)["choices"])

    assert completion(-1) == completion(2**64 - 1)
    assert completion(-(2**63)) == completion(2**63)


def test_openai_validation_errors_name_their_field_without_a_prefix(toy_server):
    url = toy_server.url + "/v1/completions"
    cases = {
        "stop": {"stop": ["a", "b", "c", "d", "e"]},
        "logit_bias": {"logit_bias": {"1": 1.0}},
        "presence_penalty": {"presence_penalty": 0.5},
        "best_of": {"best_of": 3},
        "suffix": {"suffix": "x"},
        "stream_options": {"stream_options": {"include_usage": True}},
        "n": {"n": 17},
    }
    for field, extra in cases.items():
        r = httpx.post(url, json={"model": "toy", "prompt": PROMPT, **extra})
        error = r.json()["error"]
        assert r.status_code == 400 and error["param"] == field, (field, error)
        assert error["message"].startswith(f"{field}: ") and "Value error" not in error["message"], error


def test_two_authorization_headers_are_refused(toy_server):
    r = httpx.post(
        toy_server.url + "/v1/next-token",
        json={"texts": [PROMPT]},
        headers=[("Authorization", "Bearer a"), ("Authorization", "Bearer b")],
    )
    assert r.status_code == 400 and "more than one Authorization" in r.json()["error"]["message"]
    assert r.headers["x-request-id"]


def test_cross_setting_errors_at_start_name_no_empty_field(toy_bundle, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "MODEL_DIR": str(toy_bundle), "MAX_TEXTS_PER_REQUEST": "64", "MAX_QUEUE_ROWS": "8"}
    done = subprocess.run([sys.executable, "-m", "service"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("attnserve: invalid settings: MAX_TEXTS_PER_REQUEST=64 is larger than"), line


def test_attention_while_generating_is_inside_the_inflight_budget(toy_bundle, server_factory):
    """The completions attention extension reserves its answer's bytes like /v1/attention does."""
    server = server_factory(toy_bundle, max_inflight_bytes=1_000_000)
    url = server.url + "/v1/completions"
    # toy: 2 layers x 4 heads; a choice of 20 steps after a 3-token prompt holds 8 x (20 x 3 + 210)
    # = 2,160 weights, about 30 KB; 48 choices need 1.45 MB, past the whole budget of 1 MB: no wait
    # would make room, so it is refused as too large (400), not "retry later".
    small = {"model": "toy", "prompt": PROMPT, "max_tokens": 4, "n": 1, "attention": {}}
    assert httpx.post(url, json=small).status_code == 200
    big = {"model": "toy", "prompt": [PROMPT] * 3, "max_tokens": 20, "n": 16, "attention": {}}
    for stream in (False, True):
        r = httpx.post(url, json={**big, "stream": stream})
        assert r.status_code == 400 and "MAX_INFLIGHT_BYTES" in r.json()["error"]["message"], r.text
        assert "retry-after" not in r.headers
    # Nothing stays reserved: the small request still fits, and the gauge is back to zero.
    assert httpx.post(url, json=small).status_code == 200
    gauge = [
        x
        for x in httpx.get(server.url + "/metrics").text.splitlines()
        if x.startswith("attnserve_inflight_response_bytes ")
    ]
    assert gauge and float(gauge[0].split()[-1]) == 0, gauge

"""The lean paths answer exactly as the FastAPI routes do: the same body through both. Native
next-token: application/json takes the lean path, application/vnd.api+json (also JSON) the framework's.
KServe v2 infer: JSON, binary tensors and no content type take the lean path, text/plain the framework's."""

import json
import struct

import httpx
import pytest

from tests.conftest import metric_value

BODIES = [
    b'{"texts": ["we do like"], "top_k": 3}',
    b'{"token_ids": [[1, 2, 3]], "top_k": 2, "temperature": 0.5}',
    b'{"texts": ["we do like"], "ablate": [[0, 2]]}',
    b'{"texts": ["a"',  # not JSON
    b'{"texts": ["a"], "texts": ["b"]}',  # a key twice
    b"[1, 2]",
    b'{"texts": "just a string"}',
    b'{"texts": ["a"], "token_ids": [[1]]}',
    b'{"texts": ["a"], "unknown": 1}',
    b'{"texts": ["word word word word word word word word word word word word word word word word word word"]}',
    b'{"texts": ["a"], "top_k": 0}',
    b'{"texts": ["a"], "model": "nope"}',
    b'{"texts": ["a"], "ablate": [[9, 0]]}',
    b'{"texts": ["\\ud800"]}',
]


@pytest.mark.parametrize("body", BODIES)
def test_the_lean_path_answers_as_the_framework_does(toy_server, body):
    url = toy_server.url + "/v1/next-token"
    lean = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
    framework = httpx.post(url, content=body, headers={"Content-Type": "application/vnd.api+json"})
    assert lean.status_code == framework.status_code, (lean.text, framework.text)
    assert lean.json() == framework.json()
    assert lean.headers["content-type"] == framework.headers["content-type"]
    assert lean.headers["x-request-id"] and lean.headers.get("retry-after") == framework.headers.get("retry-after")


def test_lean_requests_are_counted_under_their_route(toy_server):
    before = metric_value(
        httpx.get(toy_server.url + "/metrics").text, "attnserve_requests_total", route="/v1/next-token"
    )
    httpx.post(toy_server.url + "/v1/next-token", json={"texts": ["we do"]})
    after = metric_value(
        httpx.get(toy_server.url + "/metrics").text, "attnserve_requests_total", route="/v1/next-token"
    )
    assert after == before + 1


def _v2(inputs: list[dict], **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


TEXT = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["we do like"]}
IDS = {"name": "input_ids", "shape": [2, 3], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6]}
TOP3 = [{"name": "next_token_logprobs", "parameters": {"classification": 3}}]
# The binary tensor data extension: a JSON header, then the raw tensor bytes.
BINARY_HEADER = json.dumps(
    {"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "parameters": {"binary_data_size": 16}}]}
).encode()
V2_CASES = [  # (model path, body, headers): six answers, then seven errors
    ("next_token", _v2([TEXT]), {}),
    ("toy.next_token", _v2([TEXT], outputs=TOP3), {}),
    ("next_token", _v2([IDS], parameters={"temperature": 0.5}), {}),
    ("toy/versions/1", _v2([TEXT]), {}),
    ("attention", _v2([TEXT], parameters={"layers": "1", "heads": "0"}), {}),
    ("score", BINARY_HEADER + struct.pack("<2q", 3, 4), {"Inference-Header-Content-Length": str(len(BINARY_HEADER))}),
    ("next_token", _v2([TEXT], parameters={"nope": 1}), {}),  # unknown parameter
    ("next_token", b'{"inputs": [', {}),  # not JSON
    ("next_token", _v2([{**TEXT, "datatype": "INT64"}]), {}),  # wrong datatype
    ("nope", _v2([TEXT]), {}),  # unknown model
    ("toy/versions/9", _v2([TEXT]), {}),  # unknown version
    ("next_token", _v2([TEXT], outputs=[{"name": "nope"}]), {}),
    ("next_token", _v2([{**IDS, "data": [1, 2, 3, 4, 5, 99999]}]), {}),  # a token id past the vocabulary
]


@pytest.mark.parametrize(("model", "body", "headers"), V2_CASES)
def test_the_lean_v2_infer_path_answers_as_the_framework_does(toy_server, model, body, headers):
    url = f"{toy_server.url}/v2/models/{model}/infer"
    framework = httpx.post(url, content=body, headers={**headers, "Content-Type": "text/plain"})
    assert (framework.status_code == 200) == (V2_CASES.index((model, body, headers)) < 6), framework.text
    for content_type in ("application/json", "application/octet-stream", None):
        sent = {**headers, **({"Content-Type": content_type} if content_type else {})}
        lean = httpx.post(url, content=body, headers=sent)
        assert lean.status_code == framework.status_code, (lean.text, framework.text)
        assert lean.content == framework.content
        assert lean.headers["content-type"] == framework.headers["content-type"]
        assert lean.headers.get("inference-header-content-length") == framework.headers.get(
            "inference-header-content-length"
        )


def test_lean_v2_requests_are_counted_under_their_route_template(toy_server):
    route = "/v2/models/{name}/infer"
    metrics = httpx.get(toy_server.url + "/metrics").text
    before = metric_value(metrics, "attnserve_requests_total", route=route)
    for name in ("next_token", "toy.next_token", "toy"):
        httpx.post(f"{toy_server.url}/v2/models/{name}/infer", content=_v2([TEXT]))
    after = metric_value(httpx.get(toy_server.url + "/metrics").text, "attnserve_requests_total", route=route)
    assert after == before + 3

"""The lean next-token path answers exactly as the FastAPI route does: the same body through both
(application/json takes the lean path; application/vnd.api+json, also JSON, takes the framework's)."""

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

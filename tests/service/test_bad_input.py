"""Every kind of bad input gets a 4xx with a JSON body saying what was wrong, and the server stays up."""

import httpx
import pytest

LONG = "word " * 100  # more tokens than the toy model's 24-token context

CASES = [
    ("/v1/next-token", b'{"texts": ["a"', 400, "not valid JSON"),
    ("/v1/next-token", b"[1, 2]", 422, "body"),
    ("/v1/next-token", {"texts": "just a string"}, 422, "texts"),
    ("/v1/next-token", {"texts": [1, 2]}, 422, "texts"),
    ("/v1/next-token", {}, 422, "exactly one of"),
    ("/v1/next-token", {"texts": ["a"], "token_ids": [[1]]}, 422, "exactly one of"),
    ("/v1/next-token", {"texts": []}, 422, "texts"),
    ("/v1/next-token", {"texts": [""]}, 422, "at least 1 character"),
    ("/v1/next-token", {"token_ids": [[]]}, 422, "token_ids"),
    ("/v1/next-token", {"texts": ["a"] * 9}, 422, "limit is 8"),
    ("/v1/next-token", {"texts": [LONG]}, 422, "truncate"),
    ("/v1/next-token", {"token_ids": [[1, 99999]]}, 422, "outside the vocabulary"),
    ("/v1/next-token", {"token_ids": [[-1]]}, 422, "token_ids.0.0: Input should be greater than or equal to 0"),
    ("/v1/next-token", {"texts": ["a"], "top_k": 0}, 422, "top_k"),
    ("/v1/next-token", {"texts": ["a"], "top_k": 100000}, 422, "larger than the vocabulary"),
    ("/v1/next-token", {"texts": ["a"], "temperature": 0}, 422, "temperature"),
    ("/v1/next-token", {"texts": ["a"], "temperature": -1}, 422, "temperature"),
    ("/v1/next-token", {"texts": ["a"], "unknown_field": 1}, 422, "unknown_field"),
    ("/v1/attention", {"texts": ["a"], "layers": [7]}, 422, "unknown layer"),
    ("/v1/attention", {"texts": ["a"], "heads": [4]}, 422, "unknown head"),
    ("/v1/attention", {"texts": ["a"], "heads": [-1]}, 422, "heads"),
    ("/v1/attention", {"texts": ["a"], "layers": []}, 422, "layers"),
    ("/v1/attention", {"texts": ["I do not like hate. " * 3] * 8}, 422, "MAX_ATTENTION_VALUES"),
    ("/v1/score", {"texts": [LONG]}, 422, "context"),
    ("/v1/score", {"texts": ["a"], "truncate": "maybe"}, 422, "truncate"),
]


@pytest.fixture(scope="module")
def server(toy_bundle, tmp_path_factory):
    from tests.conftest import start_server

    s = start_server(
        toy_bundle,
        tmp_path_factory.mktemp("bad"),
        max_texts_per_request=8,
        max_body_bytes=4096,
        max_attention_values=10_000,  # the toy model: 2 layers x 4 heads x 24^2 = 4,608 per full-length input
    )
    yield s
    s.stop()


@pytest.mark.parametrize(("path", "body", "status", "says"), CASES)
def test_bad_input_gets_a_clear_4xx(server, path, body, status, says):
    if isinstance(body, bytes):
        r = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"})
    else:
        r = httpx.post(server.url + path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert says in error["message"] or says in str(error.get("details")), error
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_truncate_keeps_the_last_tokens(server):
    r = httpx.post(server.url + "/v1/score", json={"texts": [LONG + "I do not like hate."], "truncate": True})
    assert r.status_code == 200, r.text
    out = r.json()["results"][0]
    assert out["truncated"] and out["n_tokens"] == 24
    assert "".join(out["tokens"]).endswith("I do not like hate.")


def test_a_body_over_the_limit_gets_413(server):
    big = {"texts": ["x" * 5000]}
    r = httpx.post(server.url + "/v1/next-token", json=big)
    assert r.status_code == 413 and "MAX_BODY_BYTES" in r.json()["error"]["message"]

    def chunks():  # no content-length: the limit is enforced while reading
        yield b'{"texts": ["'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"]}'

    r = httpx.post(server.url + "/v1/next-token", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_unknown_routes_and_methods_get_json_errors(server):
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "http_error"
    r = httpx.get(server.url + "/v1/next-token")
    assert r.status_code == 405 and r.json()["error"]["message"]


def test_no_bad_input_caused_a_server_error(server):
    metrics = httpx.get(server.url + "/metrics").text
    assert 'status="500"' not in metrics

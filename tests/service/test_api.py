"""End to end: the real server over HTTP on loopback, serving the toy bundle."""

import asyncio
import math

import httpx
import numpy as np
import pytest

from tests.conftest import batches_larger_than_one, metric_value


@pytest.fixture(scope="module")
def client(toy_server):
    with httpx.Client(base_url=toy_server.url, timeout=30) as c:
        yield c


def post(client, path, body):
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_next_token_predicts_the_lectures_example(client):
    out = post(client, "/v1/next-token", {"texts": ["I do not like", "we do like"], "top_k": 3})
    assert [r["top"][0]["token"] for r in out["results"]] == [" hate", " like"]
    for r in out["results"]:
        probs = [t["prob"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True)
        for t in r["top"]:
            assert math.isclose(t["prob"], math.exp(t["logprob"]), rel_tol=1e-9)


def test_next_token_over_the_whole_vocabulary_sums_to_one_and_temperature_sharpens(client):
    vocab = client.get("/v1/models").json()["data"][0]["vocab_size"]
    full = post(client, "/v1/next-token", {"texts": ["I do"], "top_k": vocab})["results"][0]["top"]
    assert len(full) == vocab and len({t["token_id"] for t in full}) == vocab
    assert math.isclose(sum(t["prob"] for t in full), 1.0, rel_tol=1e-6)
    cold = post(client, "/v1/next-token", {"texts": ["I do"], "top_k": 1, "temperature": 0.5})["results"][0]["top"][0]
    assert cold["token_id"] == full[0]["token_id"] and cold["prob"] > full[0]["prob"]


def test_token_ids_and_texts_give_the_same_answer(client):
    by_text = post(client, "/v1/score", {"texts": ["you not like hate."]})["results"][0]
    by_ids = post(client, "/v1/next-token", {"token_ids": [by_text["token_ids"]], "top_k": 2})["results"][0]
    again = post(client, "/v1/next-token", {"texts": ["you not like hate."], "top_k": 2})["results"][0]
    assert by_ids == again


def test_attention_is_aligned_to_tokens_and_is_a_causal_softmax(client):
    text = "I do not like hate."
    out = post(client, "/v1/attention", {"texts": [text]})["results"][0]
    info = client.get("/v1/models").json()["data"][0]
    n = len(out["token_ids"])
    assert "".join(out["tokens"]) == text and len(out["tokens"]) == n
    assert out["layers"] == list(range(info["n_layer"])) and out["heads"] == list(range(info["n_head"]))
    w = np.array(out["attention"])
    assert w.shape == (info["n_layer"], info["n_head"], n, n)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    assert not w[:, :, np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]].any()
    some = post(client, "/v1/attention", {"texts": [text], "layers": [1], "heads": [3, 0]})["results"][0]
    assert some["layers"] == [1] and some["heads"] == [3, 0]
    np.testing.assert_array_equal(np.array(some["attention"]), w[[1]][:, [3, 0]])


def test_score_matches_next_token_probabilities(client):
    out = post(client, "/v1/score", {"texts": ["I do not like hate."]})["results"][0]
    assert out["logprobs"][0] is None and len(out["logprobs"]) == out["n_tokens"]
    assert math.isclose(out["total_logprob"], sum(out["logprobs"][1:]), rel_tol=1e-6)
    # log p(token 3 | tokens 0..2) from the score path equals the next-token path's answer.
    ids = out["token_ids"]
    vocab = client.get("/v1/models").json()["data"][0]["vocab_size"]
    nxt = post(client, "/v1/next-token", {"token_ids": [ids[:3]], "top_k": vocab})["results"][0]["top"]
    by_id = {t["token_id"]: t["logprob"] for t in nxt}
    assert math.isclose(by_id[ids[3]], out["logprobs"][3], abs_tol=1e-4)


def test_answers_do_not_depend_on_what_they_were_batched_with(toy_server, client):
    texts = ["I", "I do not like hate. we do", "you not", "they do like like. I do not like", "we"] * 4
    alone = {
        path: [post(client, path, {"texts": [t]})["results"][0] for t in texts[:5]]
        for path in ("/v1/next-token", "/v1/attention", "/v1/score")
    }

    async def burst(path):
        async with httpx.AsyncClient(base_url=toy_server.url, timeout=30) as ac:
            rs = await asyncio.gather(*(ac.post(path, json={"texts": [t]}) for t in texts))
        return [r.json()["results"][0] for r in rs]

    for path, singles in alone.items():
        together = asyncio.run(burst(path))
        for i, got in enumerate(together):
            want = singles[i % 5]
            if path == "/v1/next-token":
                assert [t["token_id"] for t in got["top"]] == [t["token_id"] for t in want["top"]]
                np.testing.assert_allclose(
                    [t["logprob"] for t in got["top"]], [t["logprob"] for t in want["top"]], atol=1e-5
                )
            elif path == "/v1/attention":
                np.testing.assert_allclose(np.array(got["attention"]), np.array(want["attention"]), atol=1e-6)
            else:
                np.testing.assert_allclose(got["logprobs"][1:], want["logprobs"][1:], atol=1e-5)
    metrics = client.get("/metrics").text
    assert batches_larger_than_one(metrics, "next_token") > 0


def test_models_health_readiness_and_metrics(client):
    info = client.get("/v1/models").json()["data"][0]
    assert info["id"] == "toy" and info["object"] == "model" and info["provider"] == "CPUExecutionProvider"
    assert info["batching"]["max_batch_size"] == 32 and info["val_nats_per_char"] == 0.5
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics").text
    for name in (
        "attnserve_requests_total",
        "attnserve_request_latency_seconds",
        "attnserve_queue_wait_seconds",
        "attnserve_inference_seconds",
        "attnserve_batch_size",
        "attnserve_queue_depth",
        "attnserve_model_state",
        "attnserve_model_resident_bytes",
    ):
        assert name in metrics, name
    assert metric_value(metrics, "attnserve_model_state", model="toy", state="READY") == 1
    assert 'route="/v1/models",status="200"' in metrics


def test_request_ids_are_echoed_or_made(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = client.post("/v1/score", json={"texts": [""]}).headers["x-request-id"]
    assert len(made) == 32


def test_openapi_documents_the_examples(client):
    spec = client.get("/openapi.json").json()
    assert spec["components"]["schemas"]["NextTokenRequest"]["examples"]
    assert client.get("/docs").status_code == 200

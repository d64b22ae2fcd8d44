"""The logit lens, head ablation and head importance, on the real server with the toy model (and the
Shakespeare model where it says so), through the native routes and KServe v2."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.conftest import DEFAULT_BUNDLE, start_server

TEXT = "we do like"


def post(server, path: str, body: dict) -> dict:
    r = httpx.post(server.url + path, json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def results(server, path: str, body: dict) -> list[dict]:
    return post(server, path, body)["results"]


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory):
    s = start_server(DEFAULT_BUNDLE, tmp_path_factory.mktemp("shakespeare"))
    yield s
    s.stop()


@pytest.mark.parametrize("which", ["toy", "shakespeare"])
def test_the_lens_last_layer_at_the_last_position_is_the_next_token_answer(which, toy_server, shakespeare):
    server = toy_server if which == "toy" else shakespeare
    texts = [TEXT, "I do not like"] if which == "toy" else ["ROMEO:\nBut soft, what light", "To be, or not"]
    lens = post(server, "/v1/logit-lens", {"texts": texts, "top_k": 5})["results"]
    nxt = post(server, "/v1/next-token", {"texts": texts, "top_k": 5})["results"]
    arch = httpx.get(server.url + "/v1/models").json()["data"][0]
    for got, want in zip(lens, nxt, strict=True):
        assert len(got["lens"]) == arch["n_layer"] + 1  # the embeddings, then each block
        assert all(len(layer) == len(got["tokens"]) for layer in got["lens"])  # positions: all
        last = got["lens"][-1][-1]
        assert [t["token_id"] for t in last] == [t["token_id"] for t in want["top"]]
        for a, b in zip(last, want["top"], strict=True):
            assert math.isclose(a["logprob"], b["logprob"], abs_tol=1e-5)


def test_positions_last_and_top_k(toy_server):
    (r,) = post(toy_server, "/v1/logit-lens", {"texts": [TEXT], "top_k": 2, "positions": "last"})["results"]
    assert r["positions"] == [len(r["tokens"]) - 1] and all(
        len(layer) == 1 and len(layer[0]) == 2 for layer in r["lens"]
    )
    bad = httpx.post(toy_server.url + "/v1/logit-lens", json={"texts": [TEXT], "top_k": 21})
    assert bad.status_code == 422 and "top_k" in bad.text


def test_an_empty_ablation_is_exactly_todays_answer(toy_server):
    for path, extra in (
        ("/v1/next-token", {"top_k": 10}),
        ("/v1/score", {}),
        ("/v1/attention", {}),
        ("/v1/logit-lens", {}),
    ):
        plain = post(toy_server, path, {"texts": [TEXT, "you not like hate."], **extra})
        empty = post(toy_server, path, {"texts": [TEXT, "you not like hate."], "ablate": [], **extra})
        assert plain == empty, path


def test_ablating_a_head_keeps_its_layers_weights_and_changes_later_ones(toy_server):
    plain = np.array(post(toy_server, "/v1/attention", {"texts": [TEXT]})["results"][0]["attention"])
    ablated = np.array(
        post(toy_server, "/v1/attention", {"texts": [TEXT], "ablate": [[0, 2]]})["results"][0]["attention"]
    )
    np.testing.assert_array_equal(ablated[0], plain[0])  # the head's own layer: the weights, not the output
    assert np.abs(ablated[1] - plain[1]).max() > 1e-3  # what reads the ablated output changes


def test_the_head_that_carries_do_decides_like(toy_server):
    """The lectures' point, as a causal test: head 0.2 carries "do" to the last position."""

    def p_like(ablate: list) -> float:
        (r,) = post(toy_server, "/v1/next-token", {"texts": [TEXT], "top_k": 275, "ablate": ablate})["results"]
        return next(t["prob"] for t in r["top"] if t["token"] == " like")

    assert p_like([]) > 0.99
    assert p_like([[0, 2]]) < 0.05
    every = [[layer, head] for layer in range(2) for head in range(4)]
    (r,) = post(toy_server, "/v1/next-token", {"texts": [TEXT, "you not like"], "top_k": 1, "ablate": every})[
        "results"
    ][:1]
    both = post(toy_server, "/v1/next-token", {"texts": [TEXT, "you not like"], "top_k": 1, "ablate": every})["results"]
    assert both[0]["top"][0]["token"] == both[1]["top"][0]["token"], "without attention, do and not look alike"


def test_head_importance_is_the_score_difference_with_and_without_each_head(toy_server):
    text = "we do like like."
    (imp,) = post(toy_server, "/v1/head-importance", {"texts": [text]})["results"]
    plain = post(toy_server, "/v1/score", {"texts": [text]})["results"][0]["logprobs"][1:]
    assert math.isclose(imp["mean_logprob"], sum(plain) / len(plain), abs_tol=1e-6)
    for layer, head in ((0, 2), (1, 3), (0, 0)):
        ablated = post(toy_server, "/v1/score", {"texts": [text], "ablate": [[layer, head]]})["results"][0]["logprobs"][
            1:
        ]
        want = sum(ablated) / len(ablated) - imp["mean_logprob"]
        assert math.isclose(imp["importance"][layer][head], want, abs_tol=1e-5), (layer, head)
    flat = np.array(imp["importance"])
    assert flat.shape == (2, 4) and flat.argmin() == 2, "head 0.2 matters most to this text"


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        ("/v1/next-token", {"texts": [TEXT], "ablate": [[2, 0]]}, "layer 2 does not exist"),
        ("/v1/score", {"texts": [TEXT], "ablate": [[0, 9]]}, "head 9 does not exist"),
        ("/v1/attention", {"texts": [TEXT], "ablate": [[0]]}, "ablate.0"),
        ("/v1/logit-lens", {"texts": [TEXT], "ablate": [[0, -1]]}, "ablate.0.1"),
        ("/v1/head-importance", {"texts": ["we"]}, "at least two tokens"),
    ],
)
def test_bad_ablations_are_a_422_naming_them(toy_server, path, body, says):
    r = httpx.post(toy_server.url + path, json=body)
    assert r.status_code == 422 and says in r.text, r.text


def test_kserve_v2_takes_ablate_and_serves_the_logit_lens(toy_server):
    client = triton.InferenceServerClient(toy_server.url.removeprefix("http://"))
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([TEXT.encode()], dtype=object))
    plain = client.infer("next_token", [text]).as_numpy("next_token_logprobs")[0]
    ablated = client.infer("next_token", [text], parameters={"ablate": "0.2"}).as_numpy("next_token_logprobs")[0]
    native = post(toy_server, "/v1/next-token", {"texts": [TEXT], "top_k": 1, "ablate": [[0, 2]]})["results"][0]["top"][
        0
    ]
    assert int(ablated.argmax()) == native["token_id"] != int(plain.argmax())
    lens = client.infer("logit_lens", [text], parameters={"top_k": 3})
    ids, logprobs = lens.as_numpy("lens_token_ids"), lens.as_numpy("lens_logprobs")
    (want,) = post(toy_server, "/v1/logit-lens", {"texts": [TEXT], "top_k": 3})["results"]
    assert ids.shape == (1, 3, 3, 3)
    assert ids[0].tolist() == [[[t["token_id"] for t in pos] for pos in layer] for layer in want["lens"]]
    np.testing.assert_allclose(logprobs[0, -1, -1], [t["logprob"] for t in want["lens"][-1][-1]], atol=1e-6)
    bad = httpx.post(
        toy_server.url + "/v2/models/next_token/infer",
        json={
            "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXT]}],
            "parameters": {"ablate": "0-2"},
        },
    )
    assert bad.status_code == 400 and "layer.head" in bad.json()["error"]


@pytest.mark.parametrize("stream", [False, True])
def test_completions_generate_with_heads_ablated_at_every_step(toy_server, stream):
    def complete(ablate: list | None) -> str:
        body = {"model": "toy", "prompt": "we do", "max_tokens": 4, "temperature": 0, "stream": stream}
        if ablate is not None:
            body["ablate"] = ablate
        r = httpx.post(toy_server.url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text
        if not stream:
            return r.json()["choices"][0]["text"]
        events = [x[6:] for x in r.text.splitlines() if x.startswith("data: {")]
        return "".join(c["choices"][0]["text"] for c in map(json.loads, events) if c["choices"])

    plain, ablated = complete(None), complete([[0, 2]])
    assert complete([]) == plain and ablated != plain
    # Cached decoding with the head off agrees with recomputing each prefix with it off.
    text = "we do"
    for _ in range(4):
        (r,) = results(toy_server, "/v1/next-token", {"texts": [text], "top_k": 1, "ablate": [[0, 2]]})
        text += r["top"][0]["token"]
    assert text == "we do" + ablated
    bad = httpx.post(toy_server.url + "/v1/completions", json={"model": "toy", "prompt": "we", "ablate": [[0, 9]]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "ablate" and "head 9" in bad.text

"""Activations, activation patching, steering and direct logit attribution on the real server,
each checked against the PyTorch model of the same bundle with the same intervention made by hooks
(a reference that shares no code with the graphs' own intervention paths)."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import torch

from export.bundle import load_torch_model
from model.transformer import AttentionLM

# The toy corpus: after "not like" comes " hate", after "do like" comes " like".
CLEAN, CORRUPTED = "we not like", "we do like"


def post(server, path: str, body: dict, status: int = 200) -> dict:
    r = httpx.post(server.url + path, json=body, timeout=60)
    assert r.status_code == status, r.text
    return r.json()


@pytest.fixture(scope="module")
def torch_toy(toy_bundle) -> AttentionLM:
    return load_torch_model(toy_bundle)


def hooked(model: AttentionLM, ids: list[int], hooks: list[tuple[torch.nn.Module, str, Callable]]) -> torch.Tensor:
    """Next-token logits (V,) after ids, with forward hooks ("pre" or "post", fn) on modules."""
    handles = [
        m.register_forward_pre_hook(fn) if kind == "pre" else m.register_forward_hook(fn) for m, kind, fn in hooks
    ]
    try:
        with torch.no_grad():
            hidden, _ = model.hidden_states(torch.tensor([ids]))
            return model.logits(hidden[0, -1])
    finally:
        for h in handles:
            h.remove()


def captured(model: AttentionLM, ids: list[int]) -> dict[str, list[np.ndarray]]:
    """Every site by hooks on the plain modules: resid_pre (each block's input), attn_out, mlp_out, and
    the final stream, each (n, C) per layer."""
    seen: dict[str, list[np.ndarray]] = {"resid_pre": [], "attn_out": [], "mlp_out": [], "resid_post": []}
    hooks = []
    for block in model.blocks:
        hooks.append((block, "pre", lambda m, args: seen["resid_pre"].append(args[0][0].numpy().copy())))
        hooks.append((block.attn, "post", lambda m, args, out: seen["attn_out"].append(out.out[0].numpy().copy())))
        hooks.append((block.mlp, "post", lambda m, args, out: seen["mlp_out"].append(out[0].numpy().copy())))
        hooks.append((block, "post", lambda m, args, out: seen["resid_post"].append(out[0][0].numpy().copy())))
    hooked(model, ids, hooks)
    return seen


def test_activations_match_pytorch_hooks_at_every_site(toy_server, torch_toy):
    body = {
        "model": "toy",
        "texts": ["I do not like hate."],
        "sites": ["resid_pre", "resid_post", "attn_out", "mlp_out"],
    }
    (r,) = post(toy_server, "/v1/activations", body)["results"]
    want = captured(torch_toy, r["token_ids"])
    assert r["layers"] == [0, 1] and r["positions"] == list(range(len(r["token_ids"])))
    for site, per_layer in want.items():
        np.testing.assert_allclose(np.array(r["activations"][site]), np.stack(per_layer), atol=1e-4)


def test_activations_select_layers_and_positions_and_z_is_zero_where_ablated(toy_server):
    body = {"model": "toy", "texts": ["we do like like."], "sites": ["z"], "layers": [1], "positions": [0, 3]}
    (r,) = post(toy_server, "/v1/activations", body)["results"]
    z = np.array(r["activations"]["z"])
    assert z.shape == (1, 2, 4, 8) and r["positions"] == [0, 3]  # [layer][position][head][d_head]
    (ablated,) = post(toy_server, "/v1/activations", {**body, "ablate": [[1, 2]]})["results"]
    za = np.array(ablated["activations"]["z"])
    assert not za[:, :, 2].any() and np.allclose(za[:, :, [0, 1, 3]], z[:, :, [0, 1, 3]], atol=1e-6)
    bad = post(toy_server, "/v1/activations", {**body, "positions": [9]}, status=422)
    assert "positions" in bad["error"]["message"] and "5 tokens" in bad["error"]["message"]


def test_patching_not_into_do_restores_hate_and_every_cell_matches_pytorch(toy_server, torch_toy):
    out = post(toy_server, "/v1/patch", {"model": "toy", "clean": CLEAN, "corrupted": CORRUPTED})
    assert out["answer"]["correct"]["token"] == " hate" and out["answer"]["incorrect"]["token"] == " like"
    resid = np.array(out["sites"]["resid_pre"]["score"])
    # The inputs differ only at position 1: patching the stream there at layer 0 is the clean run.
    assert resid[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert resid[0, [0, 2]] == pytest.approx([0.0, 0.0], abs=1e-6)  # the same activation in both runs
    clean, corrupted = out["clean"]["token_ids"], out["corrupted"]["token_ids"]
    right, wrong = out["answer"]["correct"]["token_id"], out["answer"]["incorrect"]["token_id"]
    clean_acts = captured(torch_toy, clean)

    def logit_diff(hooks) -> float:
        logits = hooked(torch_toy, corrupted, hooks)
        return float(logits[right] - logits[wrong])

    for layer, block in enumerate(torch_toy.blocks):
        for p in range(len(clean)):

            def put(index, source):
                return lambda t: torch.cat([t[:, :index], torch.from_numpy(source[None, None]), t[:, index + 1 :]], 1)

            resid_hook = put(p, clean_acts["resid_pre"][layer][p])
            attn_hook = put(p, clean_acts["attn_out"][layer][p])
            mlp_hook = put(p, clean_acts["mlp_out"][layer][p])
            want = {
                "resid_pre": logit_diff([(block, "pre", lambda m, a, f=resid_hook: (f(a[0]), *a[1:]))]),
                "attn_out": logit_diff([(block.attn, "post", lambda m, a, o, f=attn_hook: o._replace(out=f(o.out)))]),
                "mlp_out": logit_diff([(block.mlp, "post", lambda m, a, o, f=mlp_hook: f(o))]),
            }
            for site, value in want.items():
                assert out["sites"][site]["logit_diff"][layer][p] == pytest.approx(value, abs=1e-4), (site, layer, p)
        # A head: its output at every position taken from the clean run (z through its slice of W_O).
        clean_z: list[torch.Tensor] = []
        hooked(torch_toy, clean, [(block.attn, "post", lambda m, a, o, seen=clean_z: seen.append(o.z))])
        for head in range(torch_toy.cfg.n_head):

            def swap_head(m, args, o, h=head, source=clean_z[0]):
                z = o.z.clone()
                z[:, h] = source[:, h]
                y = z.transpose(1, 2).reshape(1, len(corrupted), -1)
                return o._replace(out=m.w_o(y))

            want_head = logit_diff([(block.attn, "post", swap_head)])
            got = out["sites"]["heads"]["logit_diff"][layer][head]
            assert got == pytest.approx(want_head, abs=1e-4), (layer, head)


def test_patching_noise_direction_and_bad_pairs(toy_server):
    body = {"model": "toy", "clean": CLEAN, "corrupted": CORRUPTED, "sites": ["resid_pre"], "direction": "noise"}
    out = post(toy_server, "/v1/patch", body)
    score = np.array(out["sites"]["resid_pre"]["score"])
    assert score[0, 1] == pytest.approx(0.0, abs=1e-5) and score[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert list(out["sites"]) == ["resid_pre"]
    bad = post(toy_server, "/v1/patch", {**body, "corrupted": "we do like like"}, status=422)
    assert "clean has 3 tokens and corrupted has 4" in bad["error"]["message"]
    same = post(toy_server, "/v1/patch", {"model": "toy", "clean": CLEAN, "corrupted": "you not like"}, status=422)
    assert "answer" in same["error"]["message"]
    two = {**body, "answer": {"correct": " hate.", "incorrect": " like"}}
    assert "not one" in post(toy_server, "/v1/patch", two, status=422)["error"]["message"]


def test_steering_matches_a_pytorch_hook_and_leaves_plain_rows_bit_identical(toy_server, torch_toy):
    vector = post(toy_server, "/v1/steering-vector", {"model": "toy", "layer": 1, "add": " like", "subtract": " hate"})
    steer = [{"layer": 1, "vector": vector["vector"], "scale": 3.0}]
    by_text = [{"layer": 1, "vector": {"add": " like", "subtract": " hate"}, "scale": 3.0}]
    text = "I do not"
    plain = post(toy_server, "/v1/next-token", {"model": "toy", "texts": [text], "top_k": 3})
    steered = post(toy_server, "/v1/next-token", {"model": "toy", "texts": [text], "top_k": 3, "steer": steer})
    again = post(toy_server, "/v1/next-token", {"model": "toy", "texts": [text], "top_k": 3, "steer": by_text})
    assert steered == again and steered != plain
    add = 3.0 * torch.tensor(vector["vector"])
    logits = hooked(
        torch_toy,
        toy_tokens(toy_server, text),
        [(torch_toy.blocks[1], "pre", lambda m, a: (a[0] + add, *a[1:]))],
    )
    want = torch.log_softmax(logits, -1)
    for t in steered["results"][0]["top"]:
        assert t["logprob"] == pytest.approx(float(want[t["token_id"]]), abs=1e-4)
    # Plain and steered requests at once share batches; the plain answers do not change by a bit.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bodies = [
            {"model": "toy", "texts": [text], "top_k": 3, **({"steer": steer} if i % 2 else {})} for i in range(16)
        ]
        answers = list(pool.map(lambda b: post(toy_server, "/v1/next-token", b), bodies))
    assert all(a == (steered if i % 2 else plain) for i, a in enumerate(answers))


def toy_tokens(server, text: str) -> list[int]:
    return post(server, "/v1/score", {"model": "toy", "texts": [text]})["results"][0]["token_ids"]


def test_steered_generation_follows_the_hooked_model_beside_plain_streams(toy_server, torch_toy):
    steer = [{"layer": 0, "vector": {"add": " like", "subtract": " hate"}, "scale": 2.0}]
    vector = post(toy_server, "/v1/steering-vector", {"model": "toy", "layer": 0, "add": " like", "subtract": " hate"})
    add = 2.0 * torch.tensor(vector["vector"])
    prompt = "I do not"
    body = {"model": "toy", "prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 0}

    def complete(extra: dict) -> dict:
        return post(toy_server, "/v1/completions", {**body, **extra})["choices"][0]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(complete, [{"steer": steer} if i % 2 else {} for i in range(6)]))
    plain_alone = complete({})
    assert all(o == plain_alone for o in outs[0::2])  # plain streams beside steered ones: unchanged
    ids = toy_tokens(toy_server, prompt)
    for _ in range(6):  # greedy with the same addition before block 0 at every position
        logits = hooked(torch_toy, ids, [(torch_toy.blocks[0], "pre", lambda m, a: (a[0] + add, *a[1:]))])
        ids.append(int(logits.argmax()))
    steered_ids = toy_tokens(toy_server, prompt + outs[1]["text"])
    assert steered_ids == ids and outs[1]["text"] != plain_alone["text"]


def test_logit_attribution_parts_sum_to_the_logit(toy_server, torch_toy):
    text = "I do not like"
    (r,) = post(toy_server, "/v1/logit-attribution", {"model": "toy", "texts": [text]})["results"]
    parts = r["embeddings"] + sum(map(sum, r["heads"])) + sum(r["attention_biases"]) + sum(r["mlps"]) + r["final_bias"]
    assert parts == pytest.approx(r["logit"], abs=1e-4)
    logits = hooked(torch_toy, r["token_ids"], [])
    assert r["target"]["token_id"] == int(logits.argmax()) and r["target"]["token"] == " hate"
    assert r["logit"] == pytest.approx(float(logits[r["target"]["token_id"]]), abs=1e-4)
    # An ablated head wrote nothing, and the others' shares move with the stream's scale only.
    (a,) = post(toy_server, "/v1/logit-attribution", {"model": "toy", "texts": [text], "ablate": [[1, 0]]})["results"]
    assert a["heads"][1][0] == 0.0
    # Another target at another position, and steering as its own part.
    steer = [{"layer": 1, "vector": {"add": " like"}, "scale": 0.5}]
    body = {"model": "toy", "texts": [text], "target": " like", "position": 2, "steer": steer}
    (s,) = post(toy_server, "/v1/logit-attribution", body)["results"]
    assert s["position"] == 2 and s["target"]["token"] == " like" and s["steering"][0] == 0.0 and s["steering"][1] != 0
    total = s["embeddings"] + sum(map(sum, s["heads"])) + sum(s["attention_biases"]) + sum(s["mlps"])
    assert total + sum(s["steering"]) + s["final_bias"] == pytest.approx(s["logit"], abs=1e-4)


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/v1/next-token", {"steer": [{"layer": 2, "vector": [0.0] * 32}]}, "layer 2 does not exist"),
        ("/v1/next-token", {"steer": [{"layer": 0, "vector": [0.0] * 3}]}, "has 3 numbers"),
        ("/v1/score", {"steer": [{"layer": 0, "vector": {"add": "x"}, "scale": "2"}]}, "scale"),
        ("/v1/activations", {"sites": ["resid_mid"]}, "sites"),
        ("/v1/logit-attribution", {"position": 7}, "position 7"),
        ("/v1/logit-attribution", {"target": 99999}, "target"),
    ],
)
def test_bad_interventions_are_422_naming_the_field(toy_server, path, body, words):
    out = post(toy_server, path, {"model": "toy", "texts": ["we do like"], **body}, status=422)
    assert words in out["error"]["message"]


def test_v2_activations_and_attribution_match_the_native_routes(toy_server):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(toy_server.url.removeprefix("http://"))
    texts = ["I do not like", "we do like like."]
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    steer = [{"layer": 1, "vector": {"add": " like", "subtract": " hate"}, "scale": 2.0}]
    params = {"sites": "resid_post,z", "layers": "1", "positions": "last", "steer": json.dumps(steer)}
    r = client.infer("toy.activations", [text], parameters=params)
    native = post(
        toy_server,
        "/v1/activations",
        {
            "model": "toy",
            "texts": texts,
            "sites": ["resid_post", "z"],
            "layers": [1],
            "positions": "last",
            "steer": steer,
        },
    )["results"]
    assert r.as_numpy("layers").tolist() == [1] and r.as_numpy("resid_post").dtype == np.float32
    for i, w in enumerate(native):
        assert r.as_numpy("positions")[i].tolist() == w["positions"]
        for site in ("resid_post", "z"):
            np.testing.assert_allclose(r.as_numpy(site)[i], np.array(w["activations"][site]), atol=1e-5)
    r = client.infer("toy.logit_attribution", [text], parameters={"ablate": "0.1"})
    native = post(toy_server, "/v1/logit-attribution", {"model": "toy", "texts": texts, "ablate": [[0, 1]]})["results"]
    for i, w in enumerate(native):
        assert int(r.as_numpy("target")[i]) == w["target"]["token_id"] and r.as_numpy("heads")[i, 0, 1] == 0
        np.testing.assert_allclose(r.as_numpy("heads")[i], np.array(w["heads"]), atol=1e-5)
        assert float(r.as_numpy("logit")[i]) == pytest.approx(w["logit"], abs=1e-4)
    with pytest.raises(triton.InferenceServerException, match="sites"):
        client.infer("toy.activations", [text], parameters={"sites": "resid_mid"})
    with pytest.raises(triton.InferenceServerException, match="steer"):
        client.infer("toy.next_token", [text], parameters={"steer": '[{"layer": 9}]'})


def test_attention_returns_only_the_asked_query_rows_in_both_protocols(toy_server):
    import tritonclient.http as triton

    text = "I do not like hate. we do"
    body = {"model": "toy", "texts": [text], "layers": [1], "heads": [0, 3]}
    (whole,) = post(toy_server, "/v1/attention", body)["results"]
    (some,) = post(toy_server, "/v1/attention", {**body, "queries": [6, 2]})["results"]
    assert some["queries"] == [6, 2] and whole["queries"] == list(range(len(whole["token_ids"])))
    np.testing.assert_array_equal(np.array(some["attention"]), np.array(whole["attention"])[:, :, [6, 2]])
    bad = post(toy_server, "/v1/attention", {**body, "queries": [40]}, status=422)
    assert "queries [40] are outside input 0" in bad["error"]["message"]
    client = triton.InferenceServerClient(toy_server.url.removeprefix("http://"))
    t = triton.InferInput("text", [1], "BYTES")
    t.set_data_from_numpy(np.array([text.encode()], dtype=object))
    r = client.infer("toy.attention", [t], parameters={"layers": "1", "heads": "0,3", "queries": "6,2"})
    np.testing.assert_array_equal(r.as_numpy("attention_weights")[0], np.array(some["attention"], dtype=np.float32))

"""The KServe v2 (Open Inference Protocol) API, spoken to by the unmodified `tritonclient` on a real server."""

from __future__ import annotations

import asyncio
import gzip
import json
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from tests.conftest import metric_value

TEXTS = ["I do not like", "we do like like. you"]


@pytest.fixture(scope="module")
def client(toy_server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(toy_server.url.removeprefix("http://"))


def text_input(texts: list[str], binary: bool = True, shape: list[int] | None = None) -> triton.InferInput:
    t = triton.InferInput("text", shape or [len(texts)], "BYTES")
    t.set_data_from_numpy(
        np.array([s.encode() for s in texts], dtype=object).reshape(shape or [-1]), binary_data=binary
    )
    return t


def int64_input(name: str, value: np.ndarray, binary: bool = True) -> triton.InferInput:
    t = triton.InferInput(name, list(value.shape), "INT64")
    t.set_data_from_numpy(value.astype(np.int64), binary_data=binary)
    return t


def native(server, path: str, body: dict) -> list[dict]:
    r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_health_server_metadata_and_the_model_index(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "attnserve"
    assert {"binary_tensor_data", "classification"} <= set(meta["extensions"])
    # The repository's models (here one: MODEL_DIR), each of whose jobs is a v2 model.
    index = client.get_model_repository_index()
    assert [(m["name"], m["state"]) for m in index] == [("toy", "READY")]
    for name in ("next_token", "attention", "score", "toy", "toy.next_token", "toy.attention", "toy.score"):
        assert client.is_model_ready(name) and client.is_model_ready(name, index[0]["version"])


def test_model_metadata_names_every_output_with_its_datatype_and_shape(client, toy_bundle):
    vocab = json.loads((toy_bundle / "manifest.json").read_text())["architecture"]["vocab_size"]
    meta = client.get_model_metadata("next_token")
    assert meta["platform"] == "onnxruntime_onnx"
    assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
        "text": ("BYTES", [-1]),
        "input_ids": ("INT64", [-1, -1]),
        "attention_mask": ("INT64", [-1, -1]),
    }
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert outputs["next_token_logprobs"] == ("FP32", [-1, vocab])
    attention = {o["name"]: o for o in client.get_model_metadata("attention", meta["versions"][0])["outputs"]}
    assert attention["attention_weights"]["shape"] == [-1] * 5 and attention["lengths"]["datatype"] == "INT64"
    config = client.get_model_config("score")
    assert all(i["optional"] for i in config["input"]) and "dynamic_batching" in config
    for bad in (lambda: client.get_model_metadata("nope"), lambda: client.get_model_metadata("score", "999")):
        with pytest.raises(InferenceServerException) as e:
            bad()
        assert e.value.status() == "404"


def test_every_input_form_gives_the_native_apis_numbers(client, toy_server):
    ids = [e["token_ids"] for e in native(toy_server, "/v1/attention", {"texts": TEXTS, "layers": [0], "heads": [0]})]
    width = max(len(r) for r in ids)
    padded = np.zeros((2, width), dtype=np.int64)
    mask = np.zeros_like(padded)
    for i, r in enumerate(ids):  # left padding: the mask, not the position, says which tokens are real
        padded[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    forms = {
        "text, binary": [text_input(TEXTS)],
        "text, JSON, [rows, 1]": [text_input(TEXTS, binary=False, shape=[2, 1])],
        "ids, binary": [int64_input("input_ids", padded), int64_input("attention_mask", mask)],
        "ids, JSON": [int64_input("input_ids", padded, False), int64_input("attention_mask", mask, False)],
    }
    results = {name: client.infer("next_token", inputs) for name, inputs in forms.items()}
    first = results["text, binary"].as_numpy("next_token_logprobs")
    want = native(toy_server, "/v1/next-token", {"texts": TEXTS, "top_k": 5})
    for name, r in results.items():
        logprobs = r.as_numpy("next_token_logprobs")
        assert logprobs.dtype == np.float32 and logprobs.shape == first.shape, name
        np.testing.assert_allclose(logprobs, first, atol=1e-5, err_msg=name)
        assert r.as_numpy("lengths").tolist() == [len(r) for r in ids], name
        for row, w in zip(logprobs, want, strict=True):
            top = [t["token_id"] for t in w["top"]]
            assert np.argsort(-row, kind="stable")[:5].tolist() == top, name
            np.testing.assert_allclose(row[top], [t["logprob"] for t in w["top"]], atol=1e-5, err_msg=name)


def test_classification_gives_tritons_value_index_label_strings(client, toy_server):
    out = triton.InferRequestedOutput("next_token_logprobs", class_count=3)
    result = client.infer("next_token", [text_input(TEXTS)], outputs=[out])
    classes = result.as_numpy("next_token_logprobs")
    assert classes.shape == (2, 3) and result.as_numpy("lengths") is None  # only what was asked for
    want = native(toy_server, "/v1/next-token", {"texts": TEXTS, "top_k": 3})
    for row, w in zip(classes, want, strict=True):
        parsed = [item.decode().split(":", 2) for item in row]
        assert [int(i) for _, i, _ in parsed] == [t["token_id"] for t in w["top"]]
        assert [label for _, _, label in parsed] == [t["token"] for t in w["top"]]
        np.testing.assert_allclose([float(v) for v, _, _ in parsed], [t["logprob"] for t in w["top"]], atol=1e-5)


def test_attention_in_binary_matches_the_attention_endpoint_cell_for_cell(client, toy_server):
    outputs = [triton.InferRequestedOutput(n) for n in ("attention_weights", "lengths", "token_ids", "layers", "heads")]
    r = client.infer("attention", [text_input(TEXTS)], outputs=outputs, parameters={"layers": "1", "heads": "0,3"})
    weights, lengths, token_ids = (r.as_numpy(n) for n in ("attention_weights", "lengths", "token_ids"))
    assert r.as_numpy("layers").tolist() == [1] and r.as_numpy("heads").tolist() == [0, 3]
    assert weights.dtype == np.float32 and weights.shape == (2, 1, 2, lengths.max(), lengths.max())
    want = native(toy_server, "/v1/attention", {"texts": TEXTS, "layers": [1], "heads": [0, 3]})
    for i, w in enumerate(want):
        n = lengths[i]
        assert token_ids[i, :n].tolist() == w["token_ids"] and (token_ids[i, n:] == -1).all()
        np.testing.assert_allclose(weights[i, :, :, :n, :n], np.array(w["attention"]), atol=1e-6)
        assert not weights[i, :, :, n:, :].any() and not weights[i, :, :, :, n:].any()


def test_score_matches_the_score_endpoint(client, toy_server):
    r = client.infer("score", [text_input(TEXTS, binary=False)])
    logprobs, lengths = r.as_numpy("token_logprobs"), r.as_numpy("lengths")
    for i, w in enumerate(native(toy_server, "/v1/score", {"texts": TEXTS})):
        assert lengths[i] == w["n_tokens"]
        np.testing.assert_allclose(logprobs[i, : lengths[i] - 1], w["logprobs"][1:], atol=1e-5)


def test_the_asyncio_client_with_compressed_bodies_gets_the_same_answers(client, toy_server):
    want = client.infer("next_token", [text_input(TEXTS)]).as_numpy("next_token_logprobs")

    async def run() -> list[np.ndarray]:
        aclient = triton_aio.InferenceServerClient(toy_server.url.removeprefix("http://"))
        try:
            assert await aclient.is_server_ready()
            inputs = []
            for t in TEXTS:
                one = triton_aio.InferInput("text", [1], "BYTES")
                one.set_data_from_numpy(np.array([t.encode()], dtype=object))
                inputs.append(one)
            results = await asyncio.gather(
                *(
                    aclient.infer("next_token", [one], request_compression_algorithm=algo)
                    for one, algo in zip(inputs * 4, ["gzip", "deflate"] * 4, strict=True)
                )
            )
            return [r.as_numpy("next_token_logprobs")[0] for r in results]
        finally:
            await aclient.close()

    for i, got in enumerate(asyncio.run(run())):
        np.testing.assert_allclose(got, want[i % 2], atol=1e-5)


def _binary_body(header: dict, *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), {"Inference-Header-Content-Length": str(len(head))}


def _ids_header(size: int, shape: list[int], **extra) -> dict:
    tensor = {"name": "input_ids", "shape": shape, "datatype": "INT64", "parameters": {"binary_data_size": size}}
    return {"inputs": [tensor], **extra}


def _json_input(name: str, datatype: str, shape: list[int], data) -> dict:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


def _bad_requests(vocab: int) -> list[tuple[str, bytes, dict[str, str]]]:
    ids = np.array([[1, 2, 3]], dtype="<i8").tobytes()
    one_text = struct.pack("<I", 5) + b"hello"
    text_header = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {}}]}

    def text_body(raw: bytes) -> tuple[bytes, dict[str, str]]:
        text_header["inputs"][0]["parameters"]["binary_data_size"] = len(raw)
        return _binary_body(text_header, raw)

    def as_json(body: dict) -> tuple[bytes, dict[str, str]]:
        return json.dumps(body).encode(), {"Content-Type": "application/json"}

    cases = [
        ("not JSON", b"{inputs: nope", {}),
        ("no inputs", *as_json({"inputs": []})),
        ("header longer than the body", ids, {"Inference-Header-Content-Length": "1000"}),
        ("header length not a number", ids, {"Inference-Header-Content-Length": "-5"}),
        ("binary size runs past the body", *_binary_body(_ids_header(48, [1, 3]), ids)),
        ("binary size smaller than the shape", *_binary_body(_ids_header(16, [1, 3]), ids[:16])),
        ("bytes left after the last input", *_binary_body(_ids_header(24, [1, 3]), ids, b"\0" * 8)),
        ("negative binary size", *_binary_body(_ids_header(-8, [1, 3]), ids)),
        ("a BYTES length past its data", *text_body(struct.pack("<I", 500) + b"hello")),
        ("a BYTES length cut short", *text_body(one_text + b"\1\0")),
        ("invalid UTF-8 text", *text_body(struct.pack("<I", 2) + b"\xff\xfe")),
        ("an empty text", *text_body(struct.pack("<I", 0))),
        ("JSON shape does not match the data", *as_json(_json_input("input_ids", "INT64", [2, 3], [[1, 2, 3]]))),
        ("a float in INT64 data", *as_json(_json_input("input_ids", "INT64", [1, 2], [1, 2.5]))),
        ("a bool in INT64 data", *as_json(_json_input("input_ids", "INT64", [1, 2], [1, True]))),
        ("wrong datatype", *as_json(_json_input("input_ids", "FP32", [1, 2], [1.0, 2.0]))),
        ("unknown datatype", *as_json(_json_input("input_ids", "INT128", [1, 2], [1, 2]))),
        ("ids outside the vocabulary", *as_json(_json_input("input_ids", "INT64", [1, 2], [1, vocab]))),
        ("ids of one dimension", *as_json(_json_input("input_ids", "INT64", [2], [1, 2]))),
        ("unknown input", *as_json(_json_input("prompt", "BYTES", [1], ["hi"]))),
        (
            "both text and ids",
            *as_json(
                {
                    "inputs": [
                        *_json_input("text", "BYTES", [1], ["hi"])["inputs"],
                        *_json_input("input_ids", "INT64", [1, 1], [1])["inputs"],
                    ]
                }
            ),
        ),
        (
            "a mask that is not 0 or 1",
            *as_json(
                {
                    "inputs": [
                        *_json_input("input_ids", "INT64", [1, 2], [1, 2])["inputs"],
                        *_json_input("attention_mask", "INT64", [1, 2], [1, 2])["inputs"],
                    ]
                }
            ),
        ),
        ("unknown output", *as_json({**_json_input("text", "BYTES", [1], ["hi"]), "outputs": [{"name": "probs"}]})),
        ("unknown parameter", *as_json({**_json_input("text", "BYTES", [1], ["hi"]), "parameters": {"top_k": 5}})),
        (
            "a parameter of the wrong type",
            *as_json({**_json_input("text", "BYTES", [1], ["hi"]), "parameters": {"truncate": 1}}),
        ),
        (
            "classification of a count not a number",
            *as_json(
                {
                    **_json_input("text", "BYTES", [1], ["hi"]),
                    "outputs": [{"name": "next_token_logprobs", "parameters": {"classification": "5"}}],
                }
            ),
        ),
        ("a longer input than the context", *as_json(_json_input("text", "BYTES", [1], ["I do not like hate. " * 20]))),
        ("a Content-Encoding that is not gzip", b"\x1f\x8b broken", {"Content-Encoding": "gzip"}),
        ("an unknown Content-Encoding", b"{}", {"Content-Encoding": "br"}),
    ]
    return cases


def test_malformed_requests_get_a_400_with_the_reason_and_the_server_keeps_serving(client, toy_server, toy_bundle):
    vocab = json.loads((toy_bundle / "manifest.json").read_text())["architecture"]["vocab_size"]
    url = toy_server.url + "/v2/models/next_token/infer"
    with httpx.Client(timeout=10) as http:
        for name, body, headers in _bad_requests(vocab):
            r = http.post(url, content=body, headers=headers)
            assert r.status_code == 400, (name, r.status_code, r.text)
            error = r.json()["error"]
            assert isinstance(error, str) and error, name
        r = http.post(
            toy_server.url + "/v2/models/nope/infer", content=json.dumps(_json_input("text", "BYTES", [1], ["hi"]))
        )
        assert r.status_code == 404 and "nope" in r.json()["error"]
        r = http.post(url, content=b"{" + b" " * 2_000_000 + b"}")
        assert r.status_code == 413 and "MAX_BODY_BYTES" in r.json()["error"]
        # A well-formed gzip body works, and so does every model afterwards.
        r = http.post(
            url,
            content=gzip.compress(json.dumps(_json_input("text", "BYTES", [1], ["hi"])).encode()),
            headers={"Content-Encoding": "gzip"},
        )
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, vocab]
    for model in ("next_token", "attention", "score"):
        assert client.infer(model, [text_input(TEXTS)]).get_response()["model_name"] == model


def test_v2_and_native_requests_share_one_batcher_and_its_queue_limit(toy_bundle, server_factory):
    server = server_factory(toy_bundle, max_queue_rows=2, max_texts_per_request=2)
    v2_body = json.dumps(_json_input("text", "BYTES", [1], [TEXTS[0]])).encode()

    async def burst(pairs: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as ac:
            calls = []
            for _ in range(pairs):
                calls.append(ac.post("/v2/models/next_token/infer", content=v2_body))
                calls.append(ac.post("/v1/next-token", json={"texts": [TEXTS[0]], "top_k": 1}))
            return await asyncio.gather(*calls)

    answers = asyncio.run(burst(20))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503}, codes
    v2 = [r for r in answers[::2] if r.status_code == 200]
    nat = [r for r in answers[1::2] if r.status_code == 200]
    assert v2 and nat
    best = nat[0].json()["results"][0]["top"][0]
    for r in v2:
        (out,) = [o for o in r.json()["outputs"] if o["name"] == "next_token_logprobs"]
        assert int(np.argmax(out["data"])) == best["token_id"]
        assert out["data"][best["token_id"]] == pytest.approx(best["logprob"], abs=1e-5)
    # Both protocols' rows went through the one next-token batcher, several to a batch...
    rows, batches = batch_totals(httpx.get(server.url + "/metrics").text)
    assert rows == len(v2) + len(nat) and batches < rows
    # ...and its queue of two rows turned the rest away, in each protocol's own shape.
    refused = [r for r in answers[::2] if r.status_code == 503]
    assert refused, "a queue of 2 rows took 40 concurrent requests"
    for r in refused:
        assert r.headers["retry-after"] == "1" and "queue" in r.json()["error"]


def batch_totals(metrics: str) -> tuple[float, float]:
    total = metric_value(metrics, "attnserve_batch_size_sum", endpoint="next_token")
    return total, metric_value(metrics, "attnserve_batch_size_count", endpoint="next_token")

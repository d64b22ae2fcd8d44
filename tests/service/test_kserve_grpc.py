"""KServe v2 over gRPC, spoken to by the unmodified `tritonclient.grpc` (and, for the typed tensor
contents it never sends, Triton's own generated stub) on a real server, against its HTTP answers."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import threading
import time
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tg_aio
import tritonclient.http as th
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import DEFAULT_BUNDLE, Server, free_port, metric_value, model_repository, start_server

TEXTS = ["I do not like", "we do like like. you"]
MODELS = ("toy", "attnserve-shakespeare")
# Every job with the outputs it is compared on, and the parameters it is asked with.
JOBS = {
    "next_token": ({}, ["next_token_logprobs", "lengths"]),
    "attention": ({"layers": "1", "heads": "0,2"}, ["attention_weights", "lengths", "token_ids", "layers", "heads"]),
    "score": ({}, ["token_logprobs", "lengths"]),
    "logit_lens": ({"top_k": 3}, ["lens_logprobs", "lens_token_ids", "lengths"]),
    "activations": ({"sites": "resid_pre", "layers": "0"}, ["resid_pre", "lengths"]),
    "logit_attribution": ({}, ["logit", "heads", "mlps", "target", "lengths"]),
    "generate": ({"max_tokens": 5, "temperature": 0}, ["text_output", "output_lengths", "finish_reason"]),
}


@pytest.fixture(scope="module")
def server(toy_bundle, tmp_path_factory) -> Iterator[Server]:
    """Both committed models (a repository), HTTP and gRPC on their own ports; a batch waits 20 ms."""
    tmp = tmp_path_factory.mktemp("grpc")
    repository = model_repository(tmp, toy_bundle)
    port = free_port()
    s = start_server(
        toy_bundle,
        tmp,
        model_dir="",
        model_repository=repository,
        grpc_port=port,
        max_batch_delay_ms=20,
        log_format="json",
    )
    PORTS[s.url] = port
    yield s
    s.stop()


PORTS: dict[str, int] = {}  # each server's gRPC port, by its HTTP URL


def with_grpc(factory, bundle, **env) -> Server:
    port = free_port()
    s = factory(bundle, grpc_port=port, **env)
    PORTS[s.url] = port
    return s


def grpc_address(server: Server) -> str:
    return f"127.0.0.1:{PORTS[server.url]}"


@pytest.fixture(scope="module")
def client(server) -> tg.InferenceServerClient:
    return tg.InferenceServerClient(grpc_address(server))


@pytest.fixture(scope="module")
def http(server) -> th.InferenceServerClient:
    return th.InferenceServerClient(server.url.removeprefix("http://"))


def text_input(cls, texts: list[str]):
    t = cls.InferInput("text", [len(texts)], "BYTES")
    t.set_data_from_numpy(np.array([s.encode() for s in texts], dtype=object))
    return t


def test_health_metadata_configuration_and_the_repository_index(client, http):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "attnserve"
    index = client.get_model_repository_index()
    assert sorted((m.name, m.state) for m in index.models) == [("attnserve-shakespeare", "READY"), ("toy", "READY")]
    assert client.is_model_ready("toy.attention") and not client.is_model_ready("no-such-model")
    for name in ("toy.attention", "attnserve-shakespeare.score"):
        meta = client.get_model_metadata(name, as_json=True)
        want = http.get_model_metadata(name)
        assert meta["outputs"] == [{**o, "shape": [str(d) for d in o["shape"]]} for o in want["outputs"]]
        config = client.get_model_config(name, as_json=True)["config"]
        assert [o["name"] for o in config["output"]] == [o["name"] for o in want["outputs"]]
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "20000"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("job", list(JOBS))
def test_every_job_of_both_models_answers_as_over_http(client, http, model, job):
    params, outputs = JOBS[job]
    name = f"{model}.{job}"
    got = client.infer(
        name, [text_input(tg, TEXTS)], outputs=[tg.InferRequestedOutput(o) for o in outputs], parameters=params
    )
    want = http.infer(
        name, [text_input(th, TEXTS)], outputs=[th.InferRequestedOutput(o, binary_data=True) for o in outputs],
        parameters=params,
    )  # fmt: skip
    assert got.get_response().model_name == name
    for o in outputs:
        np.testing.assert_array_equal(got.as_numpy(o), want.as_numpy(o), err_msg=f"{name} {o}")


def test_classification_and_input_ids_with_an_attention_mask(server, client):
    ids = np.array([[5, 6, 7, 0], [8, 9, 10, 11]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=np.int64)
    inputs = []
    for name, value in (("input_ids", ids), ("attention_mask", mask)):
        inputs.append(tg.InferInput(name, list(value.shape), "INT64"))
        inputs[-1].set_data_from_numpy(value)
    r = client.infer("toy", inputs, outputs=[tg.InferRequestedOutput("next_token_logprobs", class_count=2)])
    top = r.as_numpy("next_token_logprobs")
    body = {"model": "toy", "token_ids": [[5, 6, 7], [8, 9, 10, 11]], "top_k": 2}
    native = httpx.post(server.url + "/v1/next-token", json=body).json()["results"]
    for row, want in zip(top, native, strict=True):
        for item, t in zip(row, want["top"], strict=True):
            value, index, label = item.decode().split(":", 2)
            assert (int(index), label) == (t["token_id"], t["token"])
            assert float(value) == pytest.approx(t["logprob"], abs=1e-6)


def test_typed_contents_give_the_same_answer_as_raw_bytes(server, client):
    """tritonclient sends raw bytes; a client may send the typed contents fields instead."""
    channel = grpc.insecure_channel(grpc_address(server))
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name="toy.score")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend(t.encode() for t in TEXTS)
    typed = stub.ModelInfer(request)
    raw = client.infer("toy.score", [text_input(tg, TEXTS)]).get_response()
    assert [o.name for o in typed.outputs] == [o.name for o in raw.outputs]
    assert list(typed.raw_output_contents) == list(raw.raw_output_contents)
    ids = service_pb2.ModelInferRequest(model_name="toy.next_token")
    ids.inputs.add(name="input_ids", datatype="INT64", shape=[1, 3]).contents.int64_contents.extend([5, 6, 7])
    by_ids = stub.ModelInfer(ids)
    i = tg.InferInput("input_ids", [1, 3], "INT64")
    i.set_data_from_numpy(np.array([[5, 6, 7]], dtype=np.int64))
    assert list(by_ids.raw_output_contents) == list(
        client.infer("toy.next_token", [i]).get_response().raw_output_contents
    )
    channel.close()


def status_of(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as e:
        call()
    return e.value.status(), e.value.message()


def test_bad_input_gets_the_status_code_triton_gives_with_what_was_wrong(server, client):
    wrong_type = tg.InferInput("input_ids", [1, 3], "FP32")
    wrong_type.set_data_from_numpy(np.zeros((1, 3), np.float32))
    code, message = status_of(lambda: client.infer("toy.score", [wrong_type]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "FP32" in message and "INT64" in message
    wrong_shape = tg.InferInput("text", [1, 2], "BYTES")
    wrong_shape.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=object))
    code, message = status_of(lambda: client.infer("toy.score", [wrong_shape]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "shape" in message
    code, message = status_of(lambda: client.infer("nope.score", [text_input(tg, TEXTS)]))
    assert code == "StatusCode.NOT_FOUND" and "nope" in message
    code, message = status_of(lambda: client.infer("toy.score", [text_input(tg, TEXTS)], parameters={"x": 1}))
    assert code == "StatusCode.INVALID_ARGUMENT" and "'x'" in message
    # A message past MAX_BODY_BYTES is refused by gRPC itself before it is read.
    huge = tg.InferInput("text", [1], "BYTES")
    huge.set_data_from_numpy(np.array([b"a" * 3_000_000], dtype=object))
    code, message = status_of(lambda: client.infer("toy.score", [huge]))
    assert code == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_ready()  # and the server keeps serving


def test_a_budget_past_grpcs_message_size_still_starts(toy_bundle, server_factory):
    """gRPC's size options are C ints: MAX_INFLIGHT_BYTES=4 GB (the GPT-2 benchmark's) must not stop the start."""
    server = with_grpc(server_factory, toy_bundle, max_inflight_bytes=4_000_000_000, max_body_bytes=3_000_000_000)
    client = tg.InferenceServerClient(grpc_address(server))
    assert client.infer("toy", [text_input(tg, TEXTS)]).as_numpy("lengths").tolist() == [4, 7]


def test_an_answer_larger_than_the_budget_is_resource_exhausted(toy_bundle, server_factory):
    server = with_grpc(server_factory, DEFAULT_BUNDLE, max_inflight_bytes=1_000_000)
    client = tg.InferenceServerClient(grpc_address(server))
    # Every map of 4 layers x 8 heads over 200-odd tokens: about 14 MB of float32.
    code, message = status_of(lambda: client.infer("attention", [text_input(tg, ["To be, or not to be, " * 25])]))
    assert code == "StatusCode.RESOURCE_EXHAUSTED" and "MAX_INFLIGHT_BYTES" in message, message
    assert client.is_server_ready()


def test_api_keys_from_the_authorization_metadata_and_admin_keys_for_the_repository(toy_bundle, server_factory):
    server = with_grpc(
        server_factory, toy_bundle, api_keys="user-key", admin_api_keys="admin-key", model_control_mode="explicit"
    )
    client = tg.InferenceServerClient(grpc_address(server))
    assert client.is_server_live() and client.is_server_ready()  # probes need no key
    code, message = status_of(lambda: client.infer("toy", [text_input(tg, TEXTS)]))
    assert code == "StatusCode.UNAUTHENTICATED" and "authorization" in message
    user = {"authorization": "Bearer user-key"}
    assert client.infer("toy", [text_input(tg, TEXTS)], headers=user).as_numpy("lengths").tolist() == [4, 7]
    code, message = status_of(lambda: client.unload_model("toy", headers=user))
    assert code == "StatusCode.PERMISSION_DENIED" and "ADMIN_API_KEYS" in message
    admin = {"authorization": "Bearer admin-key"}
    client.unload_model("toy", headers=admin)
    assert not client.is_model_ready("toy", headers=admin)
    client.load_model("toy", headers=admin)
    assert client.is_model_ready("toy", headers=admin)


def test_grpc_and_http_clients_together_share_batches_and_get_exact_answers(server, client, http):
    """Both protocols' rows go to the one batcher of a job: the batches hold more rows than there
    were batches, and every answer equals the answer to the same text alone."""
    texts = [f"we do like {'like ' * (i % 4)}" for i in range(8)]
    alone = {t: http.infer("toy.next_token", [text_input(th, [t])]).as_numpy("next_token_logprobs") for t in texts}
    before = batch_totals(httpx.get(server.url + "/metrics").text)
    answers: dict[str, list] = {"grpc": [], "http": []}

    def hammer(kind: str) -> None:
        c = (
            tg.InferenceServerClient(grpc_address(server))
            if kind == "grpc"
            else th.InferenceServerClient(server.url.removeprefix("http://"), concurrency=8)
        )
        mod = tg if kind == "grpc" else th
        for _ in range(5):
            for t in texts:
                answers[kind].append(
                    (t, c.infer("toy.next_token", [text_input(mod, [t])]).as_numpy("next_token_logprobs"))
                )

    threads = [threading.Thread(target=hammer, args=(k,)) for k in ("grpc", "http") for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for kind in answers:
        assert len(answers[kind]) == 160
        for text, got in answers[kind]:
            np.testing.assert_allclose(got, alone[text], atol=1e-5)
    metrics = httpx.get(server.url + "/metrics").text
    rows, batches = (a - b for a, b in zip(batch_totals(metrics), before, strict=True))
    assert rows == 320 and batches < rows
    # The same request metrics, labelled by protocol.
    grpc_calls = metric_value(metrics, "attnserve_requests_total", route="/inference.GRPCInferenceService/ModelInfer",
                              protocol="grpc", status="200")  # fmt: skip
    assert grpc_calls >= 160


def batch_totals(metrics: str) -> tuple[float, float]:
    total = metric_value(metrics, "attnserve_batch_size_sum", endpoint="next_token", model="toy")
    return total, metric_value(metrics, "attnserve_batch_size_count", endpoint="next_token", model="toy")


def test_each_call_has_a_json_access_line_with_its_request_id(server, client):
    client.infer("toy", [text_input(tg, TEXTS)], headers={"x-request-id": "grpc-probe-1"})
    time.sleep(0.2)
    line = next(json.loads(x) for x in server.log().splitlines() if "grpc-probe-1" in x and x.startswith("{"))
    assert line["protocol"] == "grpc" and line["grpc_status"] == "OK" and line["status"] == 200
    assert line["rows"] == 2 and line["model"] == "toy"


def test_drain_finishes_calls_in_flight_refuses_new_ones_and_says_not_ready(toy_bundle, server_factory):
    # The calls wait a second for their batch: past SIGTERM (0.2 s) and the drain delay's end (0.45 s).
    server = with_grpc(server_factory, toy_bundle, max_batch_delay_ms=1000, max_batch_size=64, drain_delay_s=0.25)
    address = grpc_address(server)

    async def scenario():
        client = tg_aio.InferenceServerClient(address)
        pending = [asyncio.create_task(client.infer("toy", [text_input(tg, [f"I do {i}"])])) for i in range(8)]
        await asyncio.sleep(0.2)
        server.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        ready = await client.is_server_ready()  # DRAIN_DELAY_S: still listening, no longer ready
        await asyncio.sleep(0.3)
        try:
            await client.infer("toy", [text_input(tg, ["a new call"])])
            late = "answered"
        except InferenceServerException as e:
            late = e.status()
        done = await asyncio.gather(*pending, return_exceptions=True)
        await client.close()
        return done, ready, late

    done, ready, late = asyncio.run(scenario())
    assert all(not isinstance(d, BaseException) for d in done), done
    assert ready is False and late == "StatusCode.UNAVAILABLE"
    assert server.process.wait(30) in (0, -signal.SIGTERM)
    assert "Traceback" not in server.log()


def test_two_workers_both_answer_on_the_one_grpc_port(toy_bundle, server_factory):
    server = with_grpc(server_factory, toy_bundle, workers=2, drain_delay_s=0)
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(seen) < 2:
        # A new client is a new connection: the kernel spreads connections over the workers.
        c = tg.InferenceServerClient(grpc_address(server))
        assert c.infer("toy", [text_input(tg, TEXTS)]).as_numpy("lengths").tolist() == [4, 7]
        c.close()
        time.sleep(1.1)  # each worker writes its metrics every second
        seen = {
            s.labels["worker"]: s.value
            for family in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)
            if family.name == "attnserve_requests"
            for s in family.samples
            if s.name.endswith("_total") and s.labels["protocol"] == "grpc"
        }
    assert set(seen) == {"0", "1"}, seen
    assert server.stop(signal.SIGTERM) == 0


def test_a_stream_generates_one_response_per_token_as_the_openai_stream_does(server, client):
    """ModelStreamInfer (Triton's decoupled mode): `<model>.generate` answers each token as it comes, the
    last flagged final; other models answer once; a bad request gets its error and the stream goes on."""
    prompt = "ROMEO:"
    want = httpx.post(
        server.url + "/v1/completions",
        json={"model": "attnserve-shakespeare", "prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 0},
    ).json()["choices"][0]
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    params = {"max_tokens": 12, "temperature": 0}
    client.async_stream_infer(
        "attnserve-shakespeare.generate", [text_input(tg, [prompt])], request_id="g", parameters=params
    )
    client.async_stream_infer("toy.score", [text_input(tg, TEXTS)], request_id="s")
    client.async_stream_infer("no-such-model", [text_input(tg, TEXTS)], request_id="x")
    got: dict[str, list] = {"g": [], "s": [], "errors": []}
    while len(got["g"]) < 12 or not got["s"] or not got["errors"]:
        result, error = answers.get(timeout=30)
        if error is not None:
            got["errors"].append(error)
            continue
        response = result.get_response()
        got[response.id].append((result, response.parameters["triton_final_response"].bool_param))
    client.stop_stream()
    tokens = [r.as_numpy("text_output")[0].decode() for r, _ in got["g"]]
    assert tokens == want["logprobs"]["tokens"] and "".join(tokens) == want["text"]
    assert [final for _, final in got["g"]] == [False] * 11 + [True]
    assert got["g"][-1][0].as_numpy("finish_reason").tolist() == [b"length"]
    ((score, final),) = got["s"]
    assert final and score.as_numpy("lengths").tolist() == [4, 7]
    assert "no-such-model" in got["errors"][0].message()

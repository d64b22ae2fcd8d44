"""The model repository end to end on the real server: several models by name through every protocol,
the repository API (explicit mode, admin keys), a swap under load with zero failed requests, and poll."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import tritonclient.http as triton

from tests.conftest import DEFAULT_BUNDLE, metric_value, model_repository, place_version


def serve(server_factory, toy, repo: Path, **env):
    return server_factory(toy, model_dir="", model_repository=repo, **env)


def index(url: str, **kw) -> dict[tuple[str, str], dict]:
    return {(m["name"], m["version"]): m for m in httpx.post(url + "/v2/repository/index", **kw).json()}


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.fixture(scope="module")
def two_models(toy_bundle, tmp_path_factory):
    from tests.conftest import start_server

    tmp = tmp_path_factory.mktemp("two")
    s = start_server(toy_bundle, tmp, model_dir="", model_repository=model_repository(tmp, toy_bundle))
    yield s
    s.stop()


def test_two_models_answer_by_name_in_every_protocol(two_models):
    url = two_models.url
    vocab = {}
    for model in ("toy", None):
        body = {"texts": ["we do like"], "top_k": 1, **({"model": model} if model else {})}
        r = httpx.post(url + "/v1/next-token", json=body).json()
        vocab[model] = r["model"]
    assert vocab == {"toy": "toy", None: "attnserve-shakespeare"}, "a request without a model gets the default"
    # The toy model learnt the lectures' task; the Shakespeare model did not see it.
    top = httpx.post(url + "/v1/next-token", json={"texts": ["we do like"], "model": "toy", "top_k": 1}).json()
    assert top["results"][0]["top"][0]["token"] == " like"
    # OpenAI: every ready model is listed with its version, and each answers by name.
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    assert {(m.id, m.version) for m in client.models.list().data} == {("toy", "1"), ("attnserve-shakespeare", "1")}
    for model in ("toy", "attnserve-shakespeare"):
        assert client.completions.create(model=model, prompt="we do", max_tokens=2).model == model
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="we do", max_tokens=2)
    # KServe v2: <model>.<job>, <model> alone (its next_token job), and bare jobs for the default model.
    v2 = triton.InferenceServerClient(url.removeprefix("http://"))
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(__import__("numpy").array([b"we do like"], dtype=object))
    shapes = {
        name: v2.infer(name, [text]).as_numpy("next_token_logprobs").shape
        for name in ("toy.next_token", "toy", "next_token")
    }
    default_vocab = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())["architecture"]["vocab_size"]
    assert shapes["toy.next_token"] == shapes["toy"] and shapes["next_token"] == (1, default_vocab)
    assert shapes["toy"][1] != shapes["next_token"][1]
    assert v2.is_model_ready("toy.score", "1") and not _ready(v2, "toy.score", "2")
    r = httpx.post(url + "/v2/models/nope.next_token/infer", json={"inputs": []})
    assert r.status_code == 404 and "nope" in r.json()["error"]
    # Metrics carry the model.
    metrics = httpx.get(url + "/metrics").text
    assert metric_value(metrics, "attnserve_batch_size_count", model="toy", version="1", endpoint="next_token") > 0
    assert metric_value(metrics, "attnserve_requests_total", route="/v1/next-token", model="toy") > 0


def _ready(client, name: str, version: str) -> bool:
    try:
        return client.is_model_ready(name, version)
    except Exception:
        return False


def test_unload_and_load_need_explicit_mode_and_an_admin_key(toy_bundle, server_factory, tmp_path):
    repo = model_repository(tmp_path, toy_bundle, shakespeare=False)
    place_version(toy_bundle, repo / "other" / "1")
    user, admin = {"Authorization": "Bearer user"}, {"Authorization": "Bearer admin"}
    s = serve(
        server_factory,
        toy_bundle,
        repo,
        api_keys="user",
        admin_api_keys="admin",
        model_control_mode="explicit",
        default_model="toy",
    )
    assert httpx.post(s.url + "/v2/repository/models/toy/unload", headers=user).status_code == 403
    assert httpx.post(s.url + "/v2/repository/models/toy/unload", headers=admin).status_code == 200
    r = httpx.post(s.url + "/v1/next-token", json={"texts": ["we do"], "model": "toy"}, headers=user)
    assert r.status_code == 404 and r.json()["error"]["type"] == "model_not_found"
    assert index(s.url, headers=user)["toy", "1"]["state"] == "UNAVAILABLE"
    assert httpx.post(s.url + "/v2/repository/models/toy/load", headers=admin).status_code == 200
    r = httpx.post(s.url + "/v1/next-token", json={"texts": ["we do"], "model": "toy"}, headers=user)
    assert r.status_code == 200
    r = httpx.post(s.url + "/v2/repository/models/nope/load", headers=admin)
    assert r.status_code == 400 and "no model 'nope'" in r.json()["error"]
    # Outside explicit mode the repository API refuses, and says why.
    fixed = serve(server_factory, toy_bundle, repo, default_model="toy")
    r = httpx.post(fixed.url + "/v2/repository/models/toy/unload")
    assert r.status_code == 400 and "MODEL_CONTROL_MODE" in r.json()["error"]


def test_a_broken_model_is_listed_unavailable_and_the_others_serve(toy_bundle, server_factory, tmp_path):
    repo = model_repository(tmp_path, toy_bundle, shakespeare=False)
    broken = repo / "broken" / "1"
    shutil.copytree(toy_bundle, broken)
    (broken / "weights.bin").write_bytes(b"x")
    s = serve(server_factory, toy_bundle, repo, default_model="toy")
    entry = index(s.url)["broken", "1"]
    assert entry["state"] == "UNAVAILABLE" and "corrupt" in entry["reason"]
    assert httpx.post(s.url + "/v1/next-token", json={"texts": ["we do"], "model": "toy"}).status_code == 200


@pytest.mark.slow
def test_a_swap_under_load_fails_no_request_and_frees_the_old_version(
    toy_bundle, server_factory, tmp_path, record_property
):
    repo = tmp_path / "repo"
    (repo / "shakespeare").mkdir(parents=True)
    shutil.copytree(DEFAULT_BUNDLE, repo / "shakespeare" / "1")
    s = serve(server_factory, toy_bundle, repo, model_control_mode="explicit", default_model="shakespeare")
    pid = s.process.pid
    rss = {"before": _rss_mb(pid)}
    failures: list[str] = []
    counts = {"next": 0, "streams": 0}
    stop = threading.Event()

    def next_tokens():
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                r = http.post(s.url + "/v1/next-token", json={"texts": ["ROMEO:", "To be, or not"], "top_k": 3})
                if r.status_code != 200:
                    failures.append(f"next-token {r.status_code} {r.text[:200]}")
                counts["next"] += 1

    def streams():
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        while not stop.is_set():
            try:
                chunks = list(
                    client.completions.create(
                        model="shakespeare", prompt="ROMEO:", max_tokens=48, stream=True, temperature=0
                    )
                )
                if chunks[-1].choices[0].finish_reason != "length":
                    failures.append("a stream ended early")
                counts["streams"] += 1
            except Exception as e:  # any failure of the client counts
                failures.append(f"stream: {e!r}")

    workers = [threading.Thread(target=f) for f in (next_tokens, next_tokens, streams, streams)]
    for w in workers:
        w.start()
    time.sleep(2)
    shutil.copytree(DEFAULT_BUNDLE, repo / "shakespeare" / "2")
    r = httpx.post(s.url + "/v2/repository/models/shakespeare/load", timeout=120)
    assert r.status_code == 200, r.text
    rss["during"] = _rss_mb(pid)  # both versions resident while the old one finishes its streams
    time.sleep(3)
    stop.set()
    for w in workers:
        w.join(60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(m["state"] == "UNLOADING" for m in index(s.url).values()):
        time.sleep(0.2)
    rss["after"] = _rss_mb(pid)
    record_property("swap_rss_mb", rss)
    assert not failures, failures[:5]
    assert counts["next"] > 10 and counts["streams"] > 2, counts
    models = httpx.get(s.url + "/v1/models").json()["data"]
    assert [(m["id"], m["version"]) for m in models] == [("shakespeare", "2")]
    assert [(k, v["state"]) for k, v in index(s.url).items()] == [(("shakespeare", "2"), "READY")]
    assert rss["after"] < rss["during"], rss


def test_poll_picks_up_a_new_version_and_a_removed_model(toy_bundle, server_factory, tmp_path):
    repo = model_repository(tmp_path, toy_bundle, shakespeare=False)
    place_version(toy_bundle, repo / "gone" / "1")
    s = serve(server_factory, toy_bundle, repo, model_control_mode="poll", repository_poll_s=0.3, default_model="toy")
    place_version(toy_bundle, repo / "toy" / "2")
    shutil.rmtree(repo / "gone")

    def served() -> set[tuple[str, str]]:
        return {(m["id"], m["version"]) for m in httpx.get(s.url + "/v1/models").json()["data"]}

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and served() != {("toy", "2")}:
        time.sleep(0.2)
    assert served() == {("toy", "2")}
    r = httpx.post(s.url + "/v2/repository/models/toy/load")
    assert r.status_code == 400 and "'poll'" in r.json()["error"]

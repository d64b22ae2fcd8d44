"""The committed default bundle: it loads, it is served, and it meets the quality bar through the
served score path, measured on the validation split of the real corpus."""

import json

import httpx
import pytest

from model.data import split_text
from service.core.bundle import load_bundle
from tests.conftest import DEFAULT_BUNDLE, metric_value
from tests.model.test_train import CORPUS

QUALITY_BAR = 1.80  # nats per character on the validation split


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    from tests.conftest import start_server

    server = start_server(DEFAULT_BUNDLE, tmp_path_factory.mktemp("default"), max_texts_per_request=64)
    yield server
    server.stop()


def test_default_bundle_loads_and_records_its_training():
    bundle = load_bundle(DEFAULT_BUNDLE)
    training = bundle.manifest.training
    assert training["val_nats_per_char"] <= QUALITY_BAR
    assert training["val_nats_per_char"] < training["bigram_val_nats_per_char"]
    assert training["train_seconds"] <= 45 * 60
    assert training["corpus_sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    size = sum(p.stat().st_size for p in DEFAULT_BUNDLE.iterdir())
    assert size <= 25 * 1024 * 1024


@pytest.mark.skipif(not CORPUS.is_file(), reason=f"corpus not found at {CORPUS} (set CORPUS)")
def test_served_model_meets_the_quality_bar_on_validation_text(default_server):
    bundle = load_bundle(DEFAULT_BUNDLE)
    val = split_text(CORPUS.read_text(encoding="utf-8")).val
    ids = bundle.tokenizer.encode(val).ids
    context = bundle.context_length
    # Windows that overlap by one token, so every token after the first is scored exactly once.
    windows = [ids[i : i + context] for i in range(0, len(ids) - 1, context - 1)]
    windows = [w for w in windows if len(w) > 1]
    total = 0.0
    with httpx.Client(base_url=default_server.url, timeout=120) as client:
        for i in range(0, len(windows), 32):
            r = client.post("/v1/score", json={"token_ids": windows[i : i + 32]})
            assert r.status_code == 200, r.text
            total += sum(res["total_logprob"] for res in r.json()["results"])
    nats_per_char = -total / len(val)
    recorded = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())["training"]["val_nats_per_char"]
    assert nats_per_char <= QUALITY_BAR
    assert abs(nats_per_char - recorded) < 0.01  # the served graphs are the trained model


def test_full_context_attention_on_the_default_model(default_server):
    r = httpx.post(
        default_server.url + "/v1/attention",
        json={"texts": ["word " * 400], "truncate": True, "layers": [3], "heads": [7]},
        timeout=60,
    )
    assert r.status_code == 200
    result = r.json()["results"][0]
    assert len(result["token_ids"]) == 256 and len(result["attention"][0][0]) == 256


def test_cached_decoding_of_the_default_bundle_matches_pytorch_up_to_the_full_context():
    """The KV-cache graphs against PyTorch recomputing every sequence, from one token to 256."""
    import numpy as np

    from export.bundle import load_torch_model
    from export.verify import verify_generation

    model = load_torch_model(DEFAULT_BUNDLE)
    worst = verify_generation(
        model, DEFAULT_BUNDLE, trials=2, rng=np.random.default_rng(3), span=model.cfg.context_length
    )
    assert worst < 1e-4


def _gauge(server, name: str) -> float:
    metrics = httpx.get(server.url + "/metrics").text
    assert name in metrics, f"{name} not in /metrics"
    return metric_value(metrics, name) + metric_value(metrics, name + "_total")


def test_a_client_that_leaves_mid_stream_stops_its_generation(default_server):
    import time

    before = _gauge(default_server, "attnserve_generated_tokens")
    body = {"model": "attnserve-shakespeare", "prompt": "ROMEO:", "max_tokens": 250, "stream": True}
    with httpx.stream("POST", default_server.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        events = r.iter_lines()
        assert next(line for line in events if line.startswith("data: "))  # generation has started
        assert _gauge(default_server, "attnserve_active_sequences") == 1
    deadline = time.monotonic() + 5
    while _gauge(default_server, "attnserve_active_sequences") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _gauge(default_server, "attnserve_active_sequences") == 0
    time.sleep(0.2)
    assert _gauge(default_server, "attnserve_generated_tokens") - before < 250

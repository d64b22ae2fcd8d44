"""Our bundles as transformers checkpoints (python -m export.hf), loaded by transformers itself (a
reference nobody here wrote) and compared with what the real server answers for the same bundle."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch

from export.hf import main as export_hf
from model.data import split_text
from tests.conftest import DEFAULT_BUNDLE, start_server
from tests.model.test_train import CORPUS

transformers = pytest.importorskip("transformers")


def load(directory):
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    # eager attention: the implementation that can return the weights (output_attentions)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    return tokenizer, model


def post(server, path: str, body: dict) -> dict:
    r = httpx.post(server.url + path, json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def check(server, name: str, tokenizer, model, texts: list[str], generate: int) -> None:
    """Log-probs within 1e-4 of /v1/score, attention within 1e-5 of /v1/attention, greedy tokens equal."""
    scores = post(server, "/v1/score", {"model": name, "texts": texts})["results"]
    for text, served in zip(texts, scores, strict=True):
        ids = tokenizer(text)["input_ids"]
        assert ids == served["token_ids"]
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_attentions=True)
        logprobs = torch.log_softmax(out.logits[0].double(), -1)
        mine = np.array([float(logprobs[t, ids[t + 1]]) for t in range(len(ids) - 1)])
        np.testing.assert_allclose(mine, served["logprobs"][1:], atol=1e-4)
        attention = post(server, "/v1/attention", {"model": name, "texts": [text]})["results"][0]["attention"]
        np.testing.assert_allclose(torch.stack(out.attentions, 1)[0].numpy(), np.array(attention), atol=1e-5)
    prompt = tokenizer(texts[0])["input_ids"][:4]
    greedy = model.generate(torch.tensor([prompt]), max_new_tokens=generate, do_sample=False)[0, len(prompt) :]
    body = {"model": name, "prompt": prompt, "max_tokens": generate, "temperature": 0}
    assert tokenizer.decode(greedy.tolist()) == post(server, "/v1/completions", body)["choices"][0]["text"]


def test_the_toy_model_loads_in_transformers_without_remote_code_and_answers_as_served(
    toy_bundle, toy_server, tmp_path
):
    out = tmp_path / "toy-hf"
    assert export_hf(["--bundle", str(toy_bundle), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and "auto_map" not in config
    assert config["tie_word_embeddings"] is False and config["activation_function"] == "gelu"
    tokenizer, model = load(out)
    assert isinstance(model, transformers.GPT2LMHeadModel) and tokenizer.vocab_size == 275
    check(toy_server, "toy", tokenizer, model, ["I do not like hate. we do", "you not like", "they do like like."], 16)


@pytest.mark.skipif(not CORPUS.is_file(), reason=f"corpus not found at {CORPUS} (set CORPUS)")
def test_the_shakespeare_model_matches_on_64_validation_chunks(tmp_path):
    out = tmp_path / "shakespeare-hf"
    assert export_hf(["--bundle", str(DEFAULT_BUNDLE), "--out", str(out)]) == 0
    tokenizer, model = load(out)
    ids = tokenizer(split_text(CORPUS.read_text(encoding="utf-8")).val[:200_000])["input_ids"]
    chunks = [tokenizer.decode(ids[i * 128 : (i + 1) * 128]) for i in range(64)]
    (tmp_path / "server").mkdir()
    server = start_server(DEFAULT_BUNDLE, tmp_path / "server")
    try:
        check(server, "attnserve-shakespeare", tokenizer, model, chunks, 64)
    finally:
        server.stop()

"""GPT-2-family checkpoints in: a random GPT2LMHeadModel with a byte-level BPE trained here, saved as a
user's checkpoint would be, imported (python -m export.hf_import), served, and compared with
transformers itself; and the checkpoints that must be refused, refused by name, with nothing written."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from export.hf_import import main as import_main
from tests.conftest import start_server
from tests.export.test_hf import check, load

transformers = pytest.importorskip("transformers")
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 20


def write_checkpoint(directory: Path, *, safetensors: bool = True, tied: bool = True) -> Path:
    """A small random GPT-2 (2 layers, 4 heads, width 64, context 64) and its tokenizer, as save_pretrained writes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT], trainer)
    config = transformers.GPT2Config(
        vocab_size=tokenizer.get_vocab_size(),
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        tie_word_embeddings=tied,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # larger than the initialisation's 0.02, so that the model's answers differ
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.save_pretrained(directory)
    if not safetensors:  # the older form, as transformers 4 wrote it: a pickle of the state dict
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
        (directory / "model.safetensors").unlink()
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return directory


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A checkpoint imported into a repository, and a server on it."""
    tmp = tmp_path_factory.mktemp("gpt2")
    source = write_checkpoint(tmp / "checkpoint")
    repository = tmp / "repository"
    assert import_main(["--from", str(source), "--name", "tiny-gpt2", "--repository", str(repository)]) == 0
    server = start_server(repository, tmp, MODEL_DIR="", MODEL_REPOSITORY=repository, DEFAULT_MODEL="tiny-gpt2")
    yield source, repository, server
    server.stop()


def test_an_imported_gpt2_answers_as_transformers_does(imported):
    source, repository, server = imported
    manifest = json.loads((repository / "tiny-gpt2" / "1" / "manifest.json").read_text())
    arch = manifest["architecture"]
    assert (arch["positions"], arch["activation"], arch["embedding_scale"], arch["tied_head"]) == (
        "learned",
        "gelu_tanh",
        False,
        True,
    )
    tokenizer, model = load(source)
    check(server, "tiny-gpt2", tokenizer, model, [TEXT[:120], "whether 'tis nobler", "To be"], 24)


def test_every_route_serves_an_imported_model(imported):
    import httpx

    _, _, server = imported
    body = {"model": "tiny-gpt2", "texts": ["To be, or not"]}
    for path, extra in [
        ("/v1/next-token", {}),
        ("/v1/logit-lens", {"top_k": 2}),
        ("/v1/head-importance", {}),
        ("/v1/activations", {"sites": ["z"], "positions": "last"}),
        ("/v1/logit-attribution", {"ablate": [[1, 0]]}),
        ("/v1/next-token", {"steer": [{"layer": 1, "vector": {"add": "question"}, "scale": 2.0}]}),
    ]:
        r = httpx.post(server.url + path, json={**body, **extra}, timeout=60)
        assert r.status_code == 200, (path, r.text)
    attribution = httpx.post(server.url + "/v1/logit-attribution", json=body, timeout=60).json()["results"][0]
    parts = attribution["embeddings"] + sum(map(sum, attribution["heads"])) + sum(attribution["mlps"])
    total = parts + sum(attribution["attention_biases"]) + attribution["final_bias"]
    assert total == pytest.approx(attribution["logit"], abs=1e-4)
    patch = {
        "model": "tiny-gpt2",
        "clean": "To be, or not",
        "corrupted": "To be, or the",
        "answer": {"correct": 5, "incorrect": 6},
    }
    assert httpx.post(server.url + "/v1/patch", json=patch, timeout=60).status_code == 200
    v2 = httpx.post(
        server.url + "/v2/models/tiny-gpt2.next_token/infer",
        json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["To be"]}]},
    )
    assert v2.status_code == 200, v2.text


def test_an_untied_head_in_pytorch_bin_form_imports_too(tmp_path):
    source = write_checkpoint(tmp_path / "checkpoint", safetensors=False, tied=False)
    assert (source / "pytorch_model.bin").is_file() and not (source / "model.safetensors").exists()
    repository = tmp_path / "repository"
    assert import_main(["--from", str(source), "--name", "untied", "--repository", str(repository)]) == 0
    manifest = json.loads((repository / "untied" / "1" / "manifest.json").read_text())
    assert manifest["architecture"]["tied_head"] is False and "lm_head.weight" in manifest["torch_weights"]


def _break(directory: Path, how: str) -> None:
    config = json.loads((directory / "config.json").read_text())
    if how == "missing tokenizer":
        (directory / "tokenizer.json").unlink()
    elif how == "wrong shape":
        config["n_positions"] = 128
    elif how == "unsupported":
        config["model_type"] = "gpt_neox"
    elif how == "vocabulary":
        config["vocab_size"] += 7
    elif how == "remote code":
        config["auto_map"] = {"AutoModelForCausalLM": "modeling.MyModel"}
    elif how == "no weights":
        (directory / "model.safetensors").unlink()
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("how", "words"),
    [
        ("missing tokenizer", "tokenizer.json is missing"),
        ("wrong shape", "wpe.weight has shape [64, 64]; config.json makes it [128, 64]"),
        ("unsupported", "rotary positions"),
        ("vocabulary", "the tokenizer has"),
        ("remote code", "remote code"),
        ("no weights", "no weights"),
    ],
)
def test_a_checkpoint_that_cannot_be_imported_is_refused_by_name_and_nothing_is_written(
    imported, tmp_path, caplog, how, words
):
    source = tmp_path / "checkpoint"
    shutil.copytree(imported[0], source)
    _break(source, how)
    repository = tmp_path / "repository"
    with caplog.at_level(logging.ERROR):
        assert import_main(["--from", str(source), "--name", "broken", "--repository", str(repository)]) == 1
    assert words in caplog.text
    assert not (repository / "broken" / "1").exists()
    assert not list(repository.glob("broken/.*")) if repository.exists() else True  # no staging left behind

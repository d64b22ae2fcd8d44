"""The exported bundle: parity with PyTorch, one copy of each weight, and checked loading."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from bundlespec import GRAPHS, MANIFEST_FILE, TOKENIZER_FILE, WEIGHTS_FILE
from export.verify import ParityError, verify_bundle
from model.toy import train_toy
from service.core.bundle import load_bundle
from service.core.errors import BundleError


@pytest.fixture(scope="module")
def toy():
    model, tokenizer, _ = train_toy(steps=20)
    return model, tokenizer


def test_manifest_names_every_file_with_its_hash_and_the_contract(toy_bundle):
    manifest = json.loads((toy_bundle / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {*(g.file for g in GRAPHS.values()), WEIGHTS_FILE, TOKENIZER_FILE}
    assert manifest["opset"] >= 17
    n_layer = manifest["architecture"]["n_layer"]
    for name, spec in GRAPHS.items():
        graph = onnx.load(str(toy_bundle / spec.file), load_external_data=False).graph
        assert [i.name for i in graph.input] == spec.input_names(n_layer) == manifest["graphs"][name]["inputs"]
        assert [o.name for o in graph.output] == spec.output_names(n_layer) == manifest["graphs"][name]["outputs"]
    bundle = load_bundle(toy_bundle)
    assert bundle.vocab_size == bundle.tokenizer.get_vocab_size()


def test_graphs_share_one_copy_of_the_weights(toy_bundle):
    n_params = sum(p.numel() for p in train_toy(steps=1)[0].parameters())
    manifest = json.loads((toy_bundle / "manifest.json").read_text())
    cfg = manifest["architecture"]
    weights_bytes = (toy_bundle / WEIGHTS_FILE).stat().st_size
    # Five graphs, each weight once: the parameters, plus one transposed copy of the tied embedding
    # (the output layer's folded MatMul) and at most a page of alignment per stored tensor.
    one_copy = 4 * n_params + 4 * cfg["vocab_size"] * cfg["d_model"]
    assert weights_bytes < one_copy + 4096 * len(
        json.loads((toy_bundle / "manifest.json").read_text())["torch_weights"]
    )
    assert weights_bytes < 1.5 * 4 * n_params  # two copies of anything large would not fit


def test_next_token_graph_has_no_full_vocabulary_logits(toy_bundle):
    """The next-token path picks the last position before the output layer."""
    graph = onnx.load(str(toy_bundle / GRAPHS["next_token"].file), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    gather_at = max(i for i, op in enumerate(ops) if op == "GatherElements")
    vocab_matmuls = [i for i, n in enumerate(graph.node) if n.op_type in ("MatMul", "Gemm") and i > gather_at]
    assert vocab_matmuls, "the output layer should come after picking the last position"
    (output,) = graph.output
    assert len(output.type.tensor_type.shape.dim) == 2  # [batch, vocab]: no per-position logits, no weights


def test_the_pytorch_model_can_be_rebuilt_from_the_bundle_alone(toy, tmp_path):
    from export.bundle import load_torch_model, write_bundle

    model, tokenizer = toy
    write_bundle(model, tokenizer.to_str(), {}, tmp_path / "b", name="t", version="1")
    rebuilt = load_torch_model(tmp_path / "b")
    for name, tensor in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name


def test_verification_catches_a_model_that_does_not_match(toy, tmp_path):
    from export.bundle import write_bundle

    model, tokenizer = toy
    write_bundle(model, tokenizer.to_str(), {}, tmp_path / "b", name="t", version="1")
    verify_bundle(model, tmp_path / "b", trials=2)
    with torch.no_grad():
        model.blocks[0].attn.w_q.weight.add_(0.5)
    with pytest.raises(ParityError):
        verify_bundle(model, tmp_path / "b", trials=2)


def test_loading_refuses_a_corrupt_file(toy_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(toy_bundle, copy)
    data = bytearray((copy / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(copy)


def test_loading_refuses_a_manifest_that_leaves_the_weights_unchecked(toy_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(toy_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"][WEIGHTS_FILE]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=WEIGHTS_FILE):
        load_bundle(copy)


def test_export_replaces_the_bundle_only_once_it_is_verified(toy_bundle, tmp_path, monkeypatch):
    import export.__main__ as cli

    out = tmp_path / "served"
    shutil.copytree(toy_bundle, out)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    monkeypatch.setattr(cli, "verify_bundle", lambda model, path: (_ for _ in ()).throw(ParityError("injected")))
    assert cli.main(["--from-bundle", str(toy_bundle), "--out", str(out)]) == 1
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]  # no staging left behind
    monkeypatch.undo()
    (out / "stale.txt").write_text("from an older bundle")
    assert cli.main(["--from-bundle", str(toy_bundle), "--out", str(out)]) == 0
    assert not (out / "stale.txt").exists() and load_bundle(out).name == "toy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]


def test_loading_refuses_a_missing_file_or_manifest(toy_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(toy_bundle, copy)
    (copy / TOKENIZER_FILE).unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="manifest"):
        load_bundle(tmp_path)


def test_attention_graph_output_is_exact_softmax(toy_bundle):
    import onnxruntime as ort

    session = ort.InferenceSession(str(toy_bundle / GRAPHS["attention"].file))
    ids = np.array([[5, 6, 7, 8, 0, 0]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 1, 0, 0]], dtype=np.int64)
    head_mask, steering = np.ones((1, 2, 4), dtype=np.float32), np.zeros((1, 2, 32), dtype=np.float32)
    feed = {"input_ids": ids, "attention_mask": mask, "head_mask": head_mask, "steering": steering}
    (w,) = session.run(None, {**feed, "maps": np.arange(8)})  # every map: 2 layers x 4 heads
    assert w.shape == (1, 8, 6, 6)
    np.testing.assert_allclose(w[0, :, :4, :4].sum(-1), 1.0, atol=1e-6)
    assert not w[0, :, :, 4:].any()
    # Some maps, from both layers: exactly those maps of the whole answer, in order.
    (some,) = session.run(None, {**feed, "maps": np.array([1, 2, 6])})
    np.testing.assert_array_equal(some[0], w[0, [1, 2, 6]])


def test_an_old_format_bundle_is_refused_with_how_to_rebuild_it(toy_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(toy_bundle, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    (copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "format": 1}))
    with pytest.raises(BundleError, match="python -m export --from-bundle"):
        load_bundle(copy)


def test_a_bundle_is_rebuilt_from_its_own_weights(toy_bundle, tmp_path):
    """python -m export --from-bundle: the upgrade path for bundles of an older format."""
    from export.__main__ import main

    assert main(["--from-bundle", str(toy_bundle), "--out", str(tmp_path / "re")]) == 0
    rebuilt = load_bundle(tmp_path / "re")
    assert rebuilt.name == "toy" and rebuilt.manifest.training == load_bundle(toy_bundle).manifest.training
    assert (tmp_path / "re" / WEIGHTS_FILE).read_bytes() == (toy_bundle / WEIGHTS_FILE).read_bytes()


def test_verification_catches_a_decode_graph_that_ignores_the_cache(toy, tmp_path):
    """Cached decoding is checked on its own: swap in a decode graph from another model."""
    from export.bundle import write_bundle
    from export.verify import verify_generation

    model, tokenizer = toy
    write_bundle(model, tokenizer.to_str(), {}, tmp_path / "b", name="t", version="1")
    verify_generation(model, tmp_path / "b", trials=1, rng=np.random.default_rng(0), span=model.cfg.context_length)
    with torch.no_grad():
        model.blocks[-1].attn.w_v.weight.mul_(1.5)  # changes what cached values mean
    with pytest.raises(ParityError, match="decode"):
        verify_generation(model, tmp_path / "b", trials=1, rng=np.random.default_rng(0), span=model.cfg.context_length)


def test_the_int8_variant_quantizes_next_token_score_and_generation_and_keeps_attention_exact(toy_bundle, tmp_path):
    from export.quantize import quantize_bundle
    from service.core.runner import ModelRunner

    quantize_bundle(toy_bundle, tmp_path / "int8")
    bundle = load_bundle(tmp_path / "int8")  # every hash checks out
    precision = {name: g.precision for name, g in bundle.manifest.graphs.items()}
    assert precision == {"next_token": "int8", "score": "int8", "attention": "float32", "logit_lens": "float32",
                         "activations": "float32", "resume": "float32", "prefill": "int8",
                         "decode": "int8", "copy": "float32", "resize_cache": "float32"}  # fmt: skip
    assert bundle.name == "toy-int8"
    int8, fp32 = (
        ModelRunner(bundle, "cpu", max_padding=0.1),
        ModelRunner(load_bundle(toy_bundle), "cpu", max_padding=0.1),
    )
    graph = onnx.load(str(tmp_path / "int8" / "next_token.onnx"), load_external_data=False)
    assert any(i.data_type == onnx.TensorProto.INT8 for i in graph.graph.initializer)
    # Generation's weights are int8; its attention (queries x keys, weights x values in every layer)
    # and its output layer stay float32.
    for name in ("prefill", "decode"):
        graph = onnx.load(str(tmp_path / "int8" / f"{name}.onnx"), load_external_data=False)
        assert any(i.data_type == onnx.TensorProto.INT8 for i in graph.graph.initializer)
        assert sum(n.op_type == "MatMul" for n in graph.graph.node) == 2 * bundle.arch.n_layer + 1, name
    rows = [np.array(bundle.tokenizer.encode(t).ids, dtype=np.int64) for t in ("I do not like", "we do like like.")]
    for a, b in zip(int8.run("next_token", rows), fp32.run("next_token", rows), strict=True):
        assert np.argmax(a) == np.argmax(b) and np.abs(np.exp(a) - np.exp(b)).max() < 0.05
    for a, b in zip(int8.run("attention", rows), fp32.run("attention", rows), strict=True):
        np.testing.assert_array_equal(a, b)  # the same float32 graph, untouched


def test_the_int8_variant_generates_through_the_kv_cache_as_float32_does(toy_bundle, tmp_path, server_factory):
    """Served by the real server: the int8 prefill and decode graphs with the KV cache's storage and its
    in-place writes, greedy continuations of the toy task equal to float32's, and the step attention."""
    import httpx

    from export.quantize import quantize_bundle

    quantize_bundle(toy_bundle, tmp_path / "int8")
    answers = []
    for bundle in (toy_bundle, tmp_path / "int8"):
        server = server_factory(bundle)
        body = {"prompt": ["I do not", "we do"], "max_tokens": 8, "temperature": 0, "attention": {"layers": [1]}}
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        answers.append([(c["text"], len(c["attention"])) for c in r.json()["choices"]])
        server.stop()
    assert answers[0] == answers[1] and answers[0][0][1] == 8

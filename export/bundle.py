"""Write a model bundle: the graphs, one shared weights file, the tokenizer and a manifest."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import subprocess
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data

from bundlespec import BUNDLE_FORMAT, GRAPHS, MANIFEST_FILE, TOKENIZER_FILE, WEIGHTS_FILE, Manifest, sha256_file
from bundlespec.manifest import Architecture
from export.graphs import export_graph
from model.transformer import AttentionLM

log = logging.getLogger(__name__)

# Large tensors start on a page boundary so ONNX Runtime can memory-map them; small ones on a
# cache line, so that a small model's many biases do not waste a page each.
PAGE = 4096
CACHE_LINE = 64
# Tensors smaller than this stay inside the graph file: shapes and scalars are not worth sharing.
MIN_EXTERNAL_BYTES = 64
OPSET = 17


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class SharedWeights:
    """Stores each distinct tensor once in weights.bin, however many graphs refer to it."""

    def __init__(self, file: BinaryIO, location: str) -> None:
        self._file = file
        self._location = location  # the file name the graphs refer to, relative to the bundle
        self._offsets: dict[tuple, tuple[int, int]] = {}
        self._by_content: dict[str, int] = {}  # sha256 of the bytes -> offset

    def externalize(self, model: onnx.ModelProto) -> None:
        for tensor in model.graph.initializer:
            data = numpy_helper.to_array(tensor).tobytes()
            if len(data) < MIN_EXTERNAL_BYTES:
                continue
            key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(data).hexdigest())
            if key not in self._offsets:
                pad = -self._file.tell() % (PAGE if len(data) >= PAGE else CACHE_LINE)
                self._file.write(b"\0" * pad)
                self._offsets[key] = (self._file.tell(), len(data))
                self._by_content[key[2]] = self._file.tell()
                self._file.write(data)
            offset, length = self._offsets[key]
            tensor.ClearField("float_data")
            tensor.raw_data = data  # set_external_data insists on raw_data being present
            set_external_data(tensor, location=self._location, offset=offset, length=length)
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL

    def locate_state_dict(self, model: AttentionLM) -> dict[str, dict]:
        """Where each PyTorch parameter lies in the weights file (the exporter may have transposed it).

        With this map, tools that need the PyTorch model (the benchmark's eager baseline) rebuild it
        from the bundle alone, with the very weights ONNX Runtime serves.
        """
        located = {}
        for name, tensor in model.state_dict().items():
            array = tensor.detach().cpu().numpy()
            for transposed, candidate in ((False, array), (True, array.T)):
                offset = self._by_content.get(hashlib.sha256(candidate.tobytes()).hexdigest())
                if offset is not None:
                    located[name] = {"offset": offset, "shape": list(array.shape), "transposed": transposed}
                    break
            else:
                raise RuntimeError(f"parameter {name} is not in the exported weights")
        return located


def write_bundle(
    model: AttentionLM, tokenizer_json: str, metrics: dict, out_dir: Path, name: str, version: str
) -> dict:
    """Export every graph into out_dir (new or empty) and write the manifest; returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty: a bundle is written into a fresh directory")
    with tempfile.TemporaryDirectory() as tmp, open(out_dir / WEIGHTS_FILE, "wb") as weights_file:
        weights = SharedWeights(weights_file, WEIGHTS_FILE)
        for spec in GRAPHS.values():
            raw_path = Path(tmp) / spec.file
            export_graph(model, spec.name, str(raw_path), opset=OPSET)
            proto = onnx.load(str(raw_path))
            weights.externalize(proto)
            onnx.save(proto, str(out_dir / spec.file))
        torch_weights = weights.locate_state_dict(model)
    (out_dir / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
    for spec in GRAPHS.values():
        onnx.checker.check_model(str(out_dir / spec.file))

    files = sorted([*(g.file for g in GRAPHS.values()), WEIGHTS_FILE, TOKENIZER_FILE])
    manifest = {
        "format": BUNDLE_FORMAT,
        "name": name,
        "version": version,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "architecture": model.cfg.model_dump(),
        "opset": OPSET,
        "graphs": {
            g.name: {
                "file": g.file,
                "inputs": g.input_names(model.cfg.n_layer),
                "outputs": g.output_names(model.cfg.n_layer),
            }
            for g in GRAPHS.values()
        },
        "files": {f: sha256_file(out_dir / f) for f in files},
        "torch_weights": torch_weights,
        "training": {
            k: metrics.get(k)
            for k in (
                "corpus_sha256",
                "val_nats_per_char",
                "bigram_val_nats_per_char",
                "train_seconds",
                "tokens_seen",
                "tokens_per_second",
                "hardware",
                "val_chars",
                "val_tokens",
                "train_config",
            )
        },
    }
    Manifest.model_validate(manifest)  # the exporter writes nothing the service would refuse
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum((out_dir / f).stat().st_size for f in files)
    log.info("bundle %s: %.1f MB in %d files", out_dir, total / 1e6, len(files) + 1)
    return manifest


def load_torch_model(bundle_dir: Path) -> AttentionLM:
    """The PyTorch model behind a bundle, rebuilt from its weights file (see locate_state_dict).

    Reads the raw manifest rather than the typed one, so that a bundle of an older format can be
    rebuilt (python -m export --from-bundle); format 1 called the architecture "model_config".
    """
    manifest = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    model = AttentionLM(Architecture.model_validate(manifest.get("architecture") or manifest["model_config"]))
    state = {}
    with open(bundle_dir / WEIGHTS_FILE, "rb") as f:
        for name, where in manifest["torch_weights"].items():
            shape = where["shape"]
            stored = shape[::-1] if where["transposed"] else shape
            f.seek(where["offset"])
            array = np.frombuffer(f.read(4 * int(np.prod(stored))), dtype=np.float32).reshape(stored)
            state[name] = torch.from_numpy(array.T.copy() if where["transposed"] else array.copy())
    model.load_state_dict(state)
    return model.eval()

"""Open a model bundle and check it before anything is served from it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from bundlespec import GRAPHS, TOKENIZER_FILE, WEIGHTS_FILE, BundleFormatError, Manifest, read_manifest, sha256_file
from bundlespec.manifest import Architecture
from service.core.errors import BundleError


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    tokenizer: Tokenizer

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def vocab_size(self) -> int:
        return self.manifest.vocab_size

    @property
    def context_length(self) -> int:
        return self.manifest.context_length

    @property
    def arch(self) -> Architecture:
        return self.manifest.architecture

    def graph_path(self, name: str) -> Path:
        return self.path / self.manifest.graphs[name].file

    @functools.cached_property
    def _weights_file(self) -> np.memmap:
        """weights.bin, mapped read-only once (on first use): weight() returns views into it."""
        return np.memmap(self.path / WEIGHTS_FILE, np.uint8, "r")

    def weight(self, name: str) -> np.ndarray:
        """One of the model's parameters by its PyTorch name (say blocks.0.attn.w_o.weight), in PyTorch's
        layout, a read-only view of the mapped weights file: only the parts a job reads are loaded."""
        where = self.manifest.torch_weights[name]
        stored = where.shape[::-1] if where.transposed else where.shape
        count = int(np.prod(stored))
        array = np.frombuffer(self._weights_file, np.float32, count, where.offset).reshape(stored)
        return array.T if where.transposed else array


def load_bundle(path: Path) -> Bundle:
    """Read the manifest, check every file's sha256 and every graph's names; raise BundleError if off."""
    try:
        manifest = read_manifest(path)
    except BundleFormatError as e:
        raise BundleError(str(e)) from e
    # Every file the manifest names is the bundle's own: a path that leads out of its directory
    # (absolute, "..", or through a symlink) would serve whatever lies there.
    root = path.resolve()
    for name in {*manifest.files, *(g.file for g in manifest.graphs.values())}:
        if not (path / name).resolve().is_relative_to(root):
            raise BundleError(f"bundle file {name!r} is outside the bundle's directory {path}")
    for name, spec in GRAPHS.items():
        entry = manifest.graphs.get(name)
        n_layer = manifest.architecture.n_layer
        if entry is None or (entry.inputs, entry.outputs) != (spec.input_names(n_layer), spec.output_names(n_layer)):
            raise BundleError(f"{path}: graph {name!r} is missing or its inputs/outputs do not match the contract")
    for name, want in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"bundle file missing: {file}")
        if sha256_file(file) != want:
            raise BundleError(f"bundle file corrupt: {file} does not match the sha256 in the manifest")
    needed = {g.file for g in manifest.graphs.values()} | {TOKENIZER_FILE}
    if (path / WEIGHTS_FILE).exists():  # the graphs' external data: unlisted, it would go unchecked
        needed.add(WEIGHTS_FILE)
    if not needed <= set(manifest.files):
        raise BundleError(f"{path}: files {sorted(needed - set(manifest.files))} are not listed with a sha256")
    tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE))
    if tokenizer.get_vocab_size() != manifest.vocab_size:
        raise BundleError(
            f"tokenizer has {tokenizer.get_vocab_size()} tokens but the manifest says {manifest.vocab_size}"
        )
    return Bundle(path=path, manifest=manifest, tokenizer=tokenizer)

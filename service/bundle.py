"""Open a model bundle and check it before anything is served from it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from service import contract
from service.errors import BundleError


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]
    tokenizer: Tokenizer

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def context_length(self) -> int:
        return int(self.manifest["context_length"])

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.manifest["model_config"])

    def graph_path(self, kind: str) -> Path:
        return self.path / self.manifest["graphs"][kind]["file"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_bundle(path: Path) -> Bundle:
    """Read the manifest, check every file's sha256 and the graph names; raise BundleError if off."""
    manifest_path = path / contract.MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"no {contract.MANIFEST_FILE} in {path}: MODEL_DIR must point at a model bundle")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{manifest_path} is not valid JSON: {e}") from e
    if manifest.get("format") != contract.BUNDLE_FORMAT:
        raise BundleError(
            f"{manifest_path}: bundle format {manifest.get('format')!r}, expected {contract.BUNDLE_FORMAT}"
        )
    if manifest.get("inputs") != list(contract.INPUT_NAMES):
        raise BundleError(f"{manifest_path}: inputs {manifest.get('inputs')}, expected {list(contract.INPUT_NAMES)}")
    for kind, output in contract.OUTPUT_NAMES.items():
        graph = manifest.get("graphs", {}).get(kind)
        if not graph or graph.get("output") != output:
            raise BundleError(f"{manifest_path}: graph {kind!r} missing or its output is not {output!r}")
    for name, want in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"bundle file missing: {file}")
        if sha256_file(file) != want:
            raise BundleError(f"bundle file corrupt: {file} does not match the sha256 in the manifest")
    listed = set(manifest.get("files", {}))
    needed = {g["file"] for g in manifest["graphs"].values()} | {contract.TOKENIZER_FILE}
    if not needed <= listed:
        raise BundleError(f"{manifest_path}: files {sorted(needed - listed)} are not listed with a sha256")
    tokenizer = Tokenizer.from_file(str(path / contract.TOKENIZER_FILE))
    if tokenizer.get_vocab_size() != manifest["vocab_size"]:
        raise BundleError(
            f"tokenizer has {tokenizer.get_vocab_size()} tokens but the manifest says {manifest['vocab_size']}"
        )
    return Bundle(path=path, manifest=manifest, tokenizer=tokenizer)

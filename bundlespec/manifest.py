"""The manifest: one typed model of what a bundle holds, written by export and read by the service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# 2: prefill and decode graphs (KV cache), top-k alternatives from score, a typed manifest.
# 3: head_mask inputs and the logit_lens graph; 4: decode writes into fixed-size caches; 5: the copy graph;
# 6: steering inputs, the activations and resume graphs (interventions)
BUNDLE_FORMAT = 7
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.bin"
TOKENIZER_FILE = "tokenizer.json"
REBUILD_HINT = "rebuild it with: python -m export --from-bundle {path} --out {path}"


class BundleFormatError(ValueError):
    """The manifest is missing, unreadable, of another format, or does not match this contract."""


class Architecture(BaseModel):
    """The model's hyperparameters, one record everywhere: model/ builds the PyTorch model from it, the
    checkpoint and the bundle's manifest carry it, and the service reads its shape facts from it. The
    defaults are the lecture model's (the committed Shakespeare bundle)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(2048, gt=0)
    n_layer: int = Field(4, gt=0)
    n_head: int = Field(8, gt=0)
    d_model: int = Field(256, gt=0)
    context_length: int = Field(256, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    # The epsilon inside every LayerNorm's square root: direct logit attribution divides by the
    # final LayerNorm's scale, which it recomputes from the residual stream.
    layer_norm_eps: float = Field(1e-5, gt=0)
    # The choices a GPT-2-family checkpoint needs (export/hf_import.py); the defaults are the lectures'.
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"  # fixed sine/cosine codes, or a learned table
    activation: Literal["gelu", "gelu_tanh"] = "gelu"  # the MLP's GELU: exact (erf), or GPT-2's tanh form
    embedding_scale: bool = True  # token embeddings times sqrt(d_model) before the positions are added
    tied_head: bool = True  # the output layer is the token embedding (else its own weight, lm_head)

    @model_validator(mode="after")
    def _heads_divide_the_width(self) -> Architecture:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        return self

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head


class GraphEntry(BaseModel):
    file: str
    inputs: list[str]
    outputs: list[str]
    # "int8" for a graph with quantized MatMul weights (export/quantize.py); attention is never quantized.
    precision: str = "float32"


class WeightLocation(BaseModel):
    """Where one PyTorch parameter lies in weights.bin (the exporter may have stored it transposed)."""

    offset: int
    shape: list[int]
    transposed: bool


class Manifest(BaseModel):
    format: int
    name: str
    version: str
    created: str
    git_commit: str
    architecture: Architecture
    opset: int
    graphs: dict[str, GraphEntry]
    files: dict[str, str] = Field(description="file name -> sha256")
    torch_weights: dict[str, WeightLocation]
    training: dict[str, Any] = {}

    @property
    def vocab_size(self) -> int:
        return self.architecture.vocab_size

    @property
    def context_length(self) -> int:
        return self.architecture.context_length


def read_manifest(bundle_dir: Path) -> Manifest:
    """Parse and check a bundle's manifest; an older format gets a message that says how to rebuild."""
    path = bundle_dir / MANIFEST_FILE
    if not path.is_file():
        raise BundleFormatError(f"no {MANIFEST_FILE} in {bundle_dir}: not a model bundle")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleFormatError(f"{path} is not valid JSON: {e}") from e
    found = raw.get("format") if isinstance(raw, dict) else None
    if found != BUNDLE_FORMAT:
        hint = REBUILD_HINT.format(path=bundle_dir) if isinstance(found, int) and found < BUNDLE_FORMAT else ""
        raise BundleFormatError(f"{path}: bundle format {found!r}, this version reads format {BUNDLE_FORMAT}; {hint}")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        raise BundleFormatError(f"{path} does not match the manifest schema: {e}") from e

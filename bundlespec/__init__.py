"""The model bundle's contract, shared by the exporter (producer) and the service (consumer).

Torch-free and FastAPI-free on purpose: `export/` and `service/` both import it, and neither
imports the other.
"""

from bundlespec.graphs import GRAPHS, ONE_SHOT, GraphSpec, TensorSpec
from bundlespec.hashing import sha256_file
from bundlespec.manifest import (
    BUNDLE_FORMAT,
    MANIFEST_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    BundleFormatError,
    Manifest,
    read_manifest,
)

__all__ = [
    "BUNDLE_FORMAT",
    "GRAPHS",
    "MANIFEST_FILE",
    "ONE_SHOT",
    "TOKENIZER_FILE",
    "WEIGHTS_FILE",
    "BundleFormatError",
    "GraphSpec",
    "Manifest",
    "TensorSpec",
    "read_manifest",
    "sha256_file",
]

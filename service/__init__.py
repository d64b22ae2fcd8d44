"""attnserve: serves an exported attention language model with ONNX Runtime (never torch)."""

# The one place the version is written: pyproject.toml reads it from here (the image does not install the package).
__version__ = "0.1.0"

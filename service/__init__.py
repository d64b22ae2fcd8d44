"""attnserve: serves an exported attention language model with ONNX Runtime (never torch)."""

import os

# The one place the version is written: pyproject.toml reads it from here (the image does not install the package).
__version__ = "0.1.0"

# ONNX Runtime's telemetry stays off, set before onnxruntime is first imported: a server sends
# nothing anywhere it was not told to (and in a container it cannot persist its device id anyway).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

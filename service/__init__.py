"""attnserve: serves an exported attention language model with ONNX Runtime (never torch)."""

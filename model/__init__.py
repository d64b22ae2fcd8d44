"""The self-attention language model: PyTorch only, never imported by the service."""

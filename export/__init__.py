"""PyTorch checkpoint -> ONNX model bundle: the only package that imports both torch and onnx."""

"""Triton Inference Server (through PyTriton) serving the same next-token graph, for the benchmark.

Runs in its own virtual environment (PyTriton pins numpy 1.x), see loadtest/bench.py:

    .venv-triton/bin/python -m loadtest.triton_server --bundle bundles/default --http-port 8010

The model takes text, like the service, so that Triton's dynamic batcher can group requests of any
length (tensors of different shapes cannot share a batch): input `text` BYTES [1], outputs
`token_ids` INT64 [5] and `probs` FP32 [5]. Inside, the same tokenizer, the same padding and the
same ONNX Runtime session options as the service.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from tokenizers import Tokenizer

TOP_K = 5


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser()
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--http-port", type=int, default=8010)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-queue-delay-us", type=int, default=2000)
    args = p.parse_args()

    manifest = json.loads((args.bundle / "manifest.json").read_text())
    context = manifest["context_length"]
    tokenizer = Tokenizer.from_file(str(args.bundle / "tokenizer.json"))
    # The service's session options (service/core/engine.py): all cores to intra-op work, sequential.
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(args.bundle / manifest["graphs"]["next_token"]["file"]), opts, providers=["CPUExecutionProvider"]
    )

    @batch
    def infer(text: np.ndarray) -> dict[str, np.ndarray]:
        rows = [e.ids[-context:] for e in tokenizer.encode_batch([t[0].decode("utf-8") for t in text])]
        longest = max(len(r) for r in rows)
        ids = np.zeros((len(rows), longest), dtype=np.int64)
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        (logprobs,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
        top = np.argsort(-logprobs, axis=1)[:, :TOP_K]
        return {"token_ids": top.astype(np.int64), "probs": np.exp(np.take_along_axis(logprobs, top, 1))}

    config = TritonConfig(http_port=args.http_port, grpc_port=args.http_port + 1, metrics_port=args.http_port + 2)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="attnserve",
            infer_func=infer,
            inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
            outputs=[
                Tensor(name="token_ids", dtype=np.int64, shape=(TOP_K,)),
                Tensor(name="probs", dtype=np.float32, shape=(TOP_K,)),
            ],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()

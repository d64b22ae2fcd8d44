"""Triton Inference Server (through PyTriton) serving the same next-token graph, for the benchmark.

Runs in its own virtual environment (PyTriton pins numpy 1.x), see benchmarks/:

    .venv-triton/bin/python -m benchmarks.peers.triton_server --bundle bundles/attnserve-shakespeare/1 --http-port 8010

It serves the model as attnserve's KServe v2 API does, so that the benchmark sends both servers the
same request bytes: model `next_token`, input `text` BYTES [-1, 1], output `next_token_logprobs`
FP32 [-1, vocab], and the top 5 come from Triton's own classification extension. The model takes
text, like the service, so that Triton's dynamic batcher can group requests of any length (tensors
of different shapes cannot share a batch). Inside: the same tokenizer, the same session options,
and the same padding and length grouping as the service (bundlespec.padding), so that the
comparison is of the servers, not of how they pad.
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

from bundlespec.padding import group_by_length, pad


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser()
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--http-port", type=int, default=8010)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-queue-delay-us", type=int, default=2000)
    p.add_argument(
        "--max-padding", type=float, default=0.1, help="the service's BATCH_MAX_PADDING; inf pads to the longest row"
    )
    args = p.parse_args()

    manifest = json.loads((args.bundle / "manifest.json").read_text())
    arch = manifest["architecture"]
    context, vocab = arch["context_length"], arch["vocab_size"]
    tokenizer = Tokenizer.from_file(str(args.bundle / "tokenizer.json"))
    # The service's session options (service/core/runner.py): all cores to intra-op work, sequential.
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
        rows = [np.array(e.ids[-context:]) for e in tokenizer.encode_batch([t[0].decode("utf-8") for t in text])]
        out = np.empty((len(rows), vocab), dtype=np.float32)
        for group in group_by_length([len(r) for r in rows], args.max_padding):
            ids, mask = pad([rows[i] for i in group])
            # Every head on and no steering: the service's plain rows.
            heads = np.ones((len(group), arch["n_layer"], arch["n_head"]), dtype=np.float32)
            steering = np.zeros((len(group), arch["n_layer"], arch["d_model"]), dtype=np.float32)
            feed = {"input_ids": ids, "attention_mask": mask, "head_mask": heads, "steering": steering}
            (out[group],) = session.run(None, feed)
        return {"next_token_logprobs": out}

    config = TritonConfig(http_port=args.http_port, grpc_port=args.http_port + 1, metrics_port=args.http_port + 2)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="next_token",
            infer_func=infer,
            inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="next_token_logprobs", dtype=np.float32, shape=(vocab,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()

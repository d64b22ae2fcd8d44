"""An int8 variant of a bundle, as a bundle of its own: python -m export.quantize (make int8).

The next-token and score graphs, and generation's prefill and decode graphs, get int8 MatMul weights
from ONNX Runtime's dynamic quantization (activations are quantized per call, weights once, per output
channel), which the CPU runs with its integer dot-product instructions. In prefill and decode only
the MatMuls with a weight operand are quantized: the attention scores and weights (queries by keys,
weights by values) stay float32, since generation serves the attention weights of every step, and
the KV cache they read keeps its float32 contract; so does the output layer, whose errors go straight
into the logits that greedy decoding compares (with it float32, 31 of 50 greedy continuations of 64
tokens stay identical to float32's, against 21 with it quantized: benchmarks/int8_generation.py).
The attention graph stays float32 whole: its weights are the product, and they stay exact. Each
graph's precision is in the manifest, and the service reports it in /v1/models.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from bundlespec import MANIFEST_FILE, read_manifest, sha256_file
from export.staging import staged

log = logging.getLogger("export.quantize")
QUANTIZED = ("next_token", "score", "prefill", "decode")
GENERATION = ("prefill", "decode")  # their attention MatMuls stay float32 (MatMulConstBOnly)


def output_layer(graph: Path, vocab: int) -> list[str]:
    """The MatMul nodes whose weight has a vocabulary-sized axis: the output layer."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    sizes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    return [
        n.name for n in model.graph.node if n.op_type == "MatMul" and any(vocab in sizes.get(x, ()) for x in n.input)
    ]


def quantize_bundle(src: Path, out: Path) -> dict:
    """Write the int8 variant of the bundle at src into out (replaced only once it is complete)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    manifest = read_manifest(src)
    with staged(out) as staging:
        for f in manifest.files:
            shutil.copy2(src / f, staging / f)
        raw = json.loads((src / MANIFEST_FILE).read_text())
        for name in QUANTIZED:
            graph = manifest.graphs[name].file
            (staging / graph).unlink()
            quantize_dynamic(
                src / graph,
                staging / graph,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=output_layer(src / graph, manifest.architecture.vocab_size)
                if name in GENERATION
                else [],
                extra_options={"MatMulConstBOnly": name in GENERATION},
            )
            raw["graphs"][name]["precision"] = "int8"
            log.info("%s: %d -> %d bytes", graph, (src / graph).stat().st_size, (staging / graph).stat().st_size)
        raw["name"] = f"{manifest.name}-int8"
        raw["files"] = {f: sha256_file(staging / f) for f in manifest.files}
        (staging / MANIFEST_FILE).write_text(json.dumps(raw, indent=2) + "\n")
        read_manifest(staging)  # the contract still holds
    return raw


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m export.quantize", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=Path("bundles/attnserve-shakespeare/1"))
    p.add_argument("--out", type=Path, default=Path("bundles/attnserve-shakespeare-int8/1"))
    args = p.parse_args(argv)
    quantize_bundle(args.bundle, args.out)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

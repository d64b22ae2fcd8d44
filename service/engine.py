"""ONNX Runtime sessions for the bundle's graphs, and padded batch execution."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from service import contract
from service.bundle import Bundle
from service.errors import BundleError, DeviceError

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def gpu_present() -> bool:
    """True when the CUDA driver loads and sees at least one device.

    Asked before ONNX Runtime is, because its own CUDA probe on a machine without a GPU fills the
    log with library-loading errors before falling back to the CPU.
    """
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return libcuda.cuInit(0) == 0 and libcuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def choose_providers(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    cuda_ok = CUDA in available and gpu_present()
    if device == "cuda" and not cuda_ok:
        why = "no GPU is visible" if CUDA in available else f"this onnxruntime has no {CUDA} (install onnxruntime-gpu)"
        raise DeviceError(f"DEVICE=cuda but CUDA cannot be used: {why}")
    if not cuda_ok:
        return [CPU]
    if hasattr(ort, "preload_dlls"):
        # Loads the CUDA and cuDNN libraries that the nvidia-* pip packages ship.
        ort.preload_dlls()
    return [CUDA, CPU]


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # One inference runs at a time (the batcher's single worker), so all cores go to intra-op work.
    opts.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    return opts


class Engine:
    """Runs one graph on a list of token-id rows, padding them into one batch."""

    def __init__(self, bundle: Bundle, device: str = "auto", intra_op_threads: int = 0) -> None:
        self.bundle = bundle
        providers = choose_providers(device)
        opts = session_options(intra_op_threads)
        self.sessions = {
            kind: ort.InferenceSession(str(bundle.graph_path(kind)), opts, providers=providers)
            for kind in contract.GRAPH_FILES
        }
        for kind, session in self.sessions.items():
            inputs = [i.name for i in session.get_inputs()]
            outputs = [o.name for o in session.get_outputs()]
            if inputs != list(contract.INPUT_NAMES) or outputs != [contract.OUTPUT_NAMES[kind]]:
                raise BundleError(
                    f"{bundle.graph_path(kind)}: inputs {inputs} and outputs {outputs} do not match the contract "
                    f"({list(contract.INPUT_NAMES)} -> {contract.OUTPUT_NAMES[kind]})"
                )
        used = self.sessions[contract.NEXT_TOKEN].get_providers()
        # ONNX Runtime falls back to the CPU without an error; report what it actually uses.
        if providers[0] == CUDA and used[0] != CUDA:
            if device == "cuda":
                raise DeviceError(f"DEVICE=cuda but ONNX Runtime fell back to {used[0]}")
            log.warning("CUDA was available but ONNX Runtime fell back to %s", used[0])
        self.provider = used[0]
        why = " (no usable GPU found)" if device == "auto" and self.provider == CPU else ""
        log.info("model %s v%s loaded on %s%s", bundle.name, bundle.version, self.provider, why)

    def run(self, kind: str, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """rows: 1-D int64 token ids, each 1..context_length long. Returns one array per row:
        next_token (V,) log-probs; attention (L, nh, n, n) weights; score (n-1,) log-probs.
        """
        lengths = [len(r) for r in rows]
        longest = max(lengths)
        if kind == contract.SCORE and longest < 2:
            return [np.zeros(0, dtype=np.float32) for _ in rows]
        ids = np.zeros((len(rows), longest), dtype=np.int64)  # (B, T), right padded
        mask = np.zeros((len(rows), longest), dtype=np.int64)  # (B, T)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        (out,) = self.sessions[kind].run(None, {contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask})
        if kind == contract.ATTENTION:
            return [out[i, :, :, :n, :n] for i, n in enumerate(lengths)]  # (L, nh, n, n)
        if kind == contract.SCORE:
            return [out[i, : n - 1] for i, n in enumerate(lengths)]  # (n-1,)
        return list(out)  # (V,) each

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

    def __init__(self, bundle: Bundle, device: str, intra_op_threads: int = 0, *, max_padding: float) -> None:
        self.bundle = bundle
        self.max_padding = max_padding
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
        """rows: 1-D int64 token ids, each 1..context_length long. Returns one array per row, in order:
        next_token (V,) log-probs; attention (L, nh, n, n) weights; score (n-1,) log-probs.

        Rows of similar length run together (see group_by_length); each group is padded to its longest.
        """
        results: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(rows)
        for group in group_by_length([len(r) for r in rows], self.max_padding):
            for i, out in zip(group, self._run_padded(kind, [rows[i] for i in group]), strict=True):
                results[i] = out
        return results

    def _run_padded(self, kind: str, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
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


def group_by_length(lengths: Sequence[int], max_padding: float) -> list[list[int]]:
    """Split a batch into groups of row indices whose padding stays small.

    Padding every row to the batch's longest wastes most of the work when short and long inputs
    arrive together (a 250-token prompt pads thirty 10-token ones to 250). Rows are taken longest
    first; a group closes when adding the next row would make its padded size exceed
    (1 + max_padding) times its real tokens. max_padding=inf gives one group (plain padding).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    real = 0
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= (1 + max_padding) * (real + lengths[i]):
            groups[-1].append(i)
            real += lengths[i]
        else:
            groups.append([i])
            real = lengths[i]
    return groups

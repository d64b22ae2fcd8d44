"""ONNX Runtime sessions for the bundle's graphs: padded one-shot batches, prefill and decode steps."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnxruntime as ort

from bundlespec import GRAPHS
from bundlespec.graphs import HEAD_MASK, MAPS, STEERING
from bundlespec.padding import group_by_length, pad
from service.core.bundle import Bundle
from service.core.errors import BundleError, DeviceError
from service.core.kvcache import Bound
from service.core.memory import trim_heap
from service.core.sampling import log_softmax

log = logging.getLogger(__name__)

# One-shot graphs whose intermediates hold vocabulary-wide values at every position of every row.
VOCAB_WIDE = frozenset({"score", "logit_lens"})
# Batches of at least this many tokens (rows x padded length) give their memory back after the run.
SHRINK_AFTER_TOKENS = 2048

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# ONNX Runtime writes its own warnings straight to stderr, outside Python's logging (and so outside
# LOG_FORMAT=json): only its errors are kept. (Its telemetry is off: see service/__init__.py.)
ort.set_default_logger_severity(3)


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


class Intervened(Protocol):
    """A row's interventions, as Job and the generation parameters both carry them."""

    @property
    def head_mask(self) -> np.ndarray | None: ...  # (L, nh) float32, 0 where a head is ablated
    @property
    def steering(self) -> np.ndarray | None: ...  # (L, C) float32, added before each block


@dataclass(frozen=True)
class Job:
    """One row of a one-shot graph: its token ids and its interventions."""

    ids: np.ndarray  # (n,) int64
    head_mask: np.ndarray | None = None  # (L, nh) float32, 0 where a head is ablated; None: every head
    steering: np.ndarray | None = None  # (L, C) float32, added before each block; None: no steering
    maps: tuple[int, ...] | None = None  # attention: the maps to return (bundlespec), ascending; None: all


def attention_held(n_head: int, maps: int, squares: int) -> int:
    """Attention weights the attention graph holds at once for rows whose squared lengths sum to
    squares: the maps it returns, and one layer's maps while that layer runs (a request's limit and
    its batcher's cost)."""
    return (maps + n_head) * squares


@dataclass(frozen=True)
class Resumed:
    """One row of the resume graph: a residual stream (n, C) and its entry point (bundlespec)."""

    stream: np.ndarray
    entry: int


@dataclass
class Prefilled:
    """One prompt's share of a prefill call."""

    logprobs: np.ndarray  # (V,) of the token after the prompt
    keys: np.ndarray  # (L, nh, n, hs)
    values: np.ndarray  # (L, nh, n, hs)
    attention: np.ndarray  # (L, nh, n): the prompt's last token over the prompt


@dataclass
class Decoded:
    """One decode step for a batch of B rows."""

    logprobs: np.ndarray  # (B, V)
    attention: list[np.ndarray] | None  # per layer (B, nh, capacity), when asked for


class ModelRunner:
    """Runs the bundle's graphs: one-shot graphs on lists of token-id rows, and generation steps."""

    def __init__(self, bundle: Bundle, device: str, intra_op_threads: int = 0, *, max_padding: float) -> None:
        self.bundle = bundle
        self.max_padding = max_padding
        providers = choose_providers(device)
        opts = session_options(intra_op_threads)
        # The graphs whose work spans the vocabulary at every position (and, for the lens, every depth)
        # run without ONNX Runtime's CPU arena: a large batch's intermediates would otherwise stay with
        # the session, and shrinking the arena after the run gives back only part of them (measured:
        # 64 rows of 256 tokens through the lens left 250 MB with shrinking, 35 MB without an arena).
        no_arena = session_options(intra_op_threads)
        no_arena.enable_cpu_mem_arena = False
        self.sessions = {
            name: ort.InferenceSession(
                str(bundle.graph_path(name)), no_arena if name in VOCAB_WIDE else opts, providers=providers
            )
            for name in GRAPHS
        }
        n_layer = bundle.arch.n_layer
        for name, session in self.sessions.items():
            inputs = [i.name for i in session.get_inputs()]
            outputs = [o.name for o in session.get_outputs()]
            spec = GRAPHS[name]
            want = (spec.input_names(n_layer), spec.output_names(n_layer))
            if (inputs, outputs) != want:
                raise BundleError(
                    f"{bundle.graph_path(name)}: inputs {inputs} and outputs {outputs} do not match the contract "
                    f"({want[0]} -> {want[1]})"
                )
        decode_inputs, decode_outputs = GRAPHS["decode"].input_names(n_layer), GRAPHS["decode"].output_names(n_layer)
        self._cache_inputs = decode_inputs[4:]  # key_cache_0.., value_cache_0..
        self._cache_outputs = decode_outputs[1 : 1 + 2 * n_layer]  # present_key_0.., present_value_0..
        self._attention_outputs = decode_outputs[1 + 2 * n_layer :]
        self._bindings: dict[tuple, ort.IOBinding] = {}
        self._all_heads = self._no_steering = np.zeros((0,), dtype=np.float32)  # grown by interventions()
        self._shrink, self._no_shrink = ort.RunOptions(), ort.RunOptions()
        arenas = "cpu:0;gpu:0" if providers[0] == CUDA else "cpu:0"
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", arenas)
        if providers[0] == CUDA:  # the vocabulary-wide graphs have no CPU arena to shrink, but a GPU one
            self._no_shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "gpu:0")
        used = self.sessions["next_token"].get_providers()
        # ONNX Runtime falls back to the CPU without an error; report what it actually uses.
        if providers[0] == CUDA and used[0] != CUDA:
            if device == "cuda":
                raise DeviceError(f"DEVICE=cuda but ONNX Runtime fell back to {used[0]}")
            log.warning("CUDA was available but ONNX Runtime fell back to %s", used[0])
        self.provider = used[0]
        why = " (no usable GPU found)" if device == "auto" and self.provider == CPU else ""
        log.info("model %s v%s loaded on %s%s", bundle.name, bundle.version, self.provider, why)

    def run(self, name: str, rows: Sequence[Job | np.ndarray]) -> list:
        """Run a one-shot graph. rows: Jobs (or bare 1-D int64 token ids), each 1..context_length long;
        rows with and without ablated heads share a call (the graphs take a head mask per row).

        Returns each row's share of the outputs, in order (bundlespec's take_row): next_token (V,)
        log-probs, normalised again in float64; attention (maps, n, n) weights, the row's maps (every
        one: L * nh) in order; score ((n-1,) log-probs, (n-1, K) top log-probs, (n-1, K) top ids).
        Rows of similar length run together (see group_by_length); each group is padded to its longest.
        """
        spec = GRAPHS[name]
        take_row = spec.take_row
        assert take_row is not None, f"{name} is not a one-shot graph"
        jobs = [r if isinstance(r, Job) else Job(r) for r in rows]
        results: list = [None] * len(jobs)
        # The attention graph's maps input is one for the whole call: rows asking for other maps run
        # in calls of their own (a union would return every row every row's maps). Other graphs' rows
        # ask for none, and all run together.
        alike: dict[tuple[int, ...] | None, list[int]] = {}
        for i, job in enumerate(jobs):
            alike.setdefault(job.maps, []).append(i)
        for members in alike.values():
            for group in group_by_length([len(jobs[i].ids) for i in members], self.max_padding):
                picked = [members[g] for g in group]
                # Padding up to min_length lets a too-short row through: take_row cuts its share to empty.
                outputs = self._run_padded(name, [jobs[i] for i in picked], spec.min_length)
                if name == "next_token":
                    # Here, for the whole batch in one call, on this worker thread: row by row on the
                    # event loop this was a tenth of a short request's Python time.
                    outputs = [log_softmax(outputs[0]), *outputs[1:]]
                for j, i in enumerate(picked):
                    results[i] = take_row(outputs, j, len(jobs[i].ids))
        return results

    def _run_padded(self, name: str, jobs: Sequence[Job], min_length: int = 1) -> list[np.ndarray]:
        ids, mask = pad([j.ids for j in jobs], min_length)
        feed = {"input_ids": ids, "attention_mask": mask, **self.interventions(jobs)}
        if name == "attention":
            arch, maps = self.bundle.arch, jobs[0].maps
            feed[MAPS] = np.arange(arch.n_layer * arch.n_head) if maps is None else np.array(maps)
        return self._feed(name, feed, ids.size)

    def interventions(self, rows: Sequence[Intervened]) -> dict[str, np.ndarray]:
        """The head_mask (B, L, nh) and steering (B, L, C) inputs for these rows: every head on and no
        steering where a row asks for neither. A batch without interventions (the common case, at
        every decode step) reuses one neutral array of each instead of filling new ones."""
        B, arch = len(rows), self.bundle.arch
        if len(self._all_heads) < B:
            self._all_heads = np.ones((B, arch.n_layer, arch.n_head), dtype=np.float32)
            self._no_steering = np.zeros((B, arch.n_layer, arch.d_model), dtype=np.float32)
        inputs = {HEAD_MASK: self._all_heads[:B], STEERING: self._no_steering[:B]}
        for name, field in ((HEAD_MASK, "head_mask"), (STEERING, "steering")):
            if any(getattr(r, field) is not None for r in rows):
                inputs[name] = inputs[name].copy()
                for b, r in enumerate(rows):
                    if getattr(r, field) is not None:
                        inputs[name][b] = getattr(r, field)
        return inputs

    def resume(self, rows: Sequence[Resumed]) -> list[np.ndarray]:
        """Run residual streams on from their entry points (activation patching): each row's (V,)
        next-token log-probs, in order. Rows of similar length run together, as in run()."""
        results: list = [None] * len(rows)
        for group in group_by_length([len(r.stream) for r in rows], self.max_padding):
            streams = [rows[i].stream for i in group]
            longest = max(len(s) for s in streams)
            stream = np.zeros((len(group), longest, self.bundle.arch.d_model), dtype=np.float32)
            mask = np.zeros((len(group), longest), dtype=np.int64)
            for row, s in enumerate(streams):
                stream[row, : len(s)] = s
                mask[row, : len(s)] = 1
            entry = np.array([rows[i].entry for i in group], dtype=np.int64)
            (logprobs,) = self._feed("resume", {"stream": stream, "attention_mask": mask, "entry": entry}, mask.size)
            for j, i in enumerate(group):
                results[i] = logprobs[j]
        return results

    def _feed(self, name: str, feed: dict[str, np.ndarray], tokens: int) -> list[np.ndarray]:
        if tokens < SHRINK_AFTER_TOKENS:
            return self.sessions[name].run(None, feed)
        # A large batch: ONNX Runtime's arena would keep its peak (hundreds of MB, GBs for the logit
        # lens) for the life of the session. Shrinking the arena after the run hands it back, and
        # trimming the heap makes glibc do the same; small batches, the common case, skip both.
        outputs = self.sessions[name].run(None, feed, self._no_shrink if name in VOCAB_WIDE else self._shrink)
        trim_heap()
        return outputs

    def prefill(self, rows: Sequence[Job]) -> list[Prefilled]:
        """Run prompts (with their ablated heads) through the prefill graph; each row's cache is cut
        to its real length."""
        logprobs, keys, values, attention = self._run_padded("prefill", rows)
        return [
            Prefilled(logprobs[i], keys[i, :, :, :n], values[i, :, :, :n], attention[i, :, :, :n])
            for i, n in enumerate(len(r.ids) for r in rows)
        ]

    @property
    def device(self) -> str:
        """Where this runner's tensors live, as ONNX Runtime's IO binding names it."""
        return "cuda" if self.provider == CUDA else "cpu"

    def decode(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        caches: Bound,
        interventions: dict[str, np.ndarray] | None = None,
        attention: bool = False,
    ) -> Decoded:
        """One step: tokens, positions (B,); caches: the KV storage the step reads and writes in place
        (each layer's keys, then values, (B, nh, capacity, hs) on this runner's device, see
        service/core/kvcache.py); interventions: each row's head_mask and steering (see
        interventions()), none when None. attention: also fetch each layer's weights.

        IO binding hands ONNX Runtime the storage's own memory for both the cache inputs and the
        present outputs, so nothing is copied in or out; the weights are computed either way (the
        softmax needs them) and cost only their copy out when fetched.
        """
        if interventions is None:
            interventions = self.interventions([Job(tokens[:0])] * len(tokens))
        session = self.sessions["decode"]
        binding = self._binding(caches, attention)
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(tokens.reshape(-1, 1), dtype=np.int64))
        binding.bind_cpu_input("positions", np.ascontiguousarray(positions, dtype=np.int64))
        for name in (HEAD_MASK, STEERING):
            binding.bind_cpu_input(name, np.ascontiguousarray(interventions[name], dtype=np.float32))
        session.run_with_iobinding(binding)
        # Outputs in binding order; the caches (already in place) are skipped, not read back.
        fetched = binding.get_outputs()
        weights = [v.numpy() for v in fetched[1 + len(caches.addresses) :]] if attention else None
        return Decoded(fetched[0].numpy(), weights)

    def copy(self, target: int, size: int, source: np.ndarray | int) -> None:
        """Write size float32s at the device address target, from a host array or from another
        device address (the copy graph: a copy on this runner's device, with no host round trip)."""
        session = self.sessions["copy"]
        binding = session.io_binding()
        if isinstance(source, np.ndarray):
            binding.bind_cpu_input("source", np.ascontiguousarray(source, dtype=np.float32).reshape(-1))
        else:
            binding.bind_input("source", self.device, 0, np.float32, [size], source)
        binding.bind_output("target", self.device, 0, np.float32, [size], target)
        session.run_with_iobinding(binding)

    def resize(self, source: int, shape: tuple[int, int, int, int], target: int, capacity: int) -> None:
        """Lay the (rows, nh, capacity, hs) block at source out again at target with a new capacity
        (positions cut, or padded with zeros); the two must not overlap."""
        session = self.sessions["resize_cache"]
        binding = session.io_binding()
        rows, heads, _, d_head = shape
        binding.bind_input("cache", self.device, 0, np.float32, list(shape), source)
        binding.bind_cpu_input("new_capacity", np.array([capacity], dtype=np.int64))
        binding.bind_output("resized", self.device, 0, np.float32, [rows, heads, capacity, d_head], target)
        session.run_with_iobinding(binding)

    def _binding(self, caches: Bound, attention: bool) -> ort.IOBinding:
        """The decode graph's binding to this storage: made once per batch size and capacity, then
        reused (a new binding costs ONNX Runtime about 300 us of set-up per run, as much as a
        one-row step's arithmetic). The storage's blocks of a given shape always lie at the same
        addresses, which the key includes, so a reused binding still points at the live storage."""
        key = (caches, attention)
        binding = self._bindings.get(key)
        if binding is not None:
            return binding
        binding = self.sessions["decode"].io_binding()
        binding.bind_output("next_token_logprobs", "cpu")
        for name, output, address in zip(self._cache_inputs, self._cache_outputs, caches.addresses, strict=True):
            shape = list(caches.shape)
            binding.bind_input(name, caches.device, 0, np.float32, shape, address)
            binding.bind_output(output, caches.device, 0, np.float32, shape, address)
        if attention:
            for name in self._attention_outputs:
                binding.bind_output(name, "cpu")
        self._bindings[key] = binding
        return binding

"""Parity of the exported bundle against PyTorch; raises on any mismatch."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bundlespec import GRAPHS, ONE_SHOT
from bundlespec.padding import pad
from export.graphs import wrap
from model.transformer import AttentionLM

log = logging.getLogger(__name__)


class ParityError(AssertionError):
    pass


SPAN = 256  # the longest input verified (see verify_bundle)


def random_batch(rng: np.random.Generator, vocab: int, context: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A right-padded batch of 1..5 rows with random lengths (at least one row at full length)."""
    batch = int(rng.integers(1, 6))
    longest = int(rng.integers(1, context + 1))
    lengths = [longest] + [int(rng.integers(1, longest + 1)) for _ in range(batch - 1)]
    return *pad([rng.integers(0, vocab, n) for n in lengths]), lengths


def random_head_mask(rng: np.random.Generator, batch: int, n_layer: int, n_head: int) -> np.ndarray:
    """(batch, L, nh) of ones, with a few heads of some rows ablated (0): ablated and plain rows together."""
    mask = np.ones((batch, n_layer, n_head), dtype=np.float32)
    for row in range(batch):
        if rng.random() < 0.5:
            mask[row].flat[rng.choice(n_layer * n_head, size=int(rng.integers(1, 3)), replace=False)] = 0.0
    return mask


def random_maps(rng: np.random.Generator, maps: int) -> np.ndarray:
    """The attention graph's maps input: every map, or an ascending random subset of them."""
    if rng.random() < 0.3:
        return np.arange(maps, dtype=np.int64)
    return np.sort(rng.choice(maps, size=int(rng.integers(1, maps + 1)), replace=False)).astype(np.int64)


def ones_mask(model: AttentionLM, batch: int) -> np.ndarray:
    return np.ones((batch, model.cfg.n_layer, model.cfg.n_head), dtype=np.float32)


def no_steering(model: AttentionLM, batch: int) -> np.ndarray:
    return np.zeros((batch, model.cfg.n_layer, model.cfg.d_model), dtype=np.float32)


def random_steering(rng: np.random.Generator, batch: int, n_layer: int, d_model: int) -> np.ndarray:
    """(batch, L, C) of zeros, with some rows steered at a layer or two: steered and plain rows together."""
    steering = np.zeros((batch, n_layer, d_model), dtype=np.float32)
    for row in range(batch):
        if rng.random() < 0.5:
            layers = rng.choice(n_layer, size=min(n_layer, int(rng.integers(1, 3))), replace=False)
            steering[row, layers] = rng.standard_normal((len(layers), d_model))
    return steering


def _session(bundle_dir: Path, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle_dir / GRAPHS[name].file), providers=["CPUExecutionProvider"])


def _torch(model: AttentionLM, name: str, *inputs: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = wrap(name, model)(*(torch.from_numpy(x) for x in inputs))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _check(name: str, got: np.ndarray, want: np.ndarray, tol: float, what: str) -> float:
    if got.dtype.kind == "i":
        return 0.0  # top-k ids may swap on ties; their log-probs are compared instead
    err = float(np.abs(got - want).max()) if got.size else 0.0
    if err > tol:
        raise ParityError(f"{name}: {what} differs by {err:.2e} > {tol:.0e}")
    return err


def verify_one_shot(
    model: AttentionLM, bundle_dir: Path, trials: int, rng: np.random.Generator, span: int
) -> dict[str, float]:
    cfg = model.cfg
    worst: dict[str, float] = {}
    for name in ONE_SHOT:
        spec = GRAPHS[name]
        assert spec.take_row is not None
        session = _session(bundle_dir, name)
        worst[name] = 0.0
        for _ in range(trials):
            ids, mask, lengths = random_batch(rng, cfg.vocab_size, span)
            if ids.shape[1] < spec.min_length:
                continue
            heads = random_head_mask(rng, len(lengths), cfg.n_layer, cfg.n_head)
            steering = random_steering(rng, len(lengths), cfg.n_layer, cfg.d_model)
            feed = {"input_ids": ids, "attention_mask": mask, "head_mask": heads, "steering": steering}
            if name == "attention":
                feed["maps"] = random_maps(rng, cfg.n_layer * cfg.n_head)
            got = session.run(None, feed)
            want = _torch(model, name, *feed.values())
            for row, n in enumerate(lengths):
                if n < spec.min_length:
                    continue
                g, w = spec.take_row(got, row, n), spec.take_row(want, row, n)
                g, w = (g, w) if isinstance(g, tuple) else ((g,), (w,))
                # The same text alone, without padding, must give the same answer.
                feed = {
                    "input_ids": ids[row : row + 1, :n],
                    "attention_mask": mask[row : row + 1, :n],
                    "head_mask": heads[row : row + 1],
                    "steering": steering[row : row + 1],
                    **({"maps": feed["maps"]} if name == "attention" else {}),
                }
                alone = spec.take_row(session.run(None, feed), 0, n)
                alone = alone if isinstance(alone, tuple) else (alone,)
                for gi, wi, ai in zip(g, w, alone, strict=True):
                    worst[name] = max(
                        worst[name],
                        _check(name, gi, wi, spec.tolerance, "ONNX Runtime vs PyTorch"),
                        _check(name, ai, gi, spec.tolerance, "a padded row vs the same text alone"),
                    )
                if name == "next_token" and g[0].argmax() != w[0].argmax():
                    raise ParityError(f"{name}: top-1 token differs ({g[0].argmax()} vs {w[0].argmax()})")
                if name == "attention" and np.any(got[0][row][:, :n, n:]):
                    raise ParityError(f"{name}: padded keys have non-zero weight")
        log.info("%s parity: worst abs error %.2e (tolerance %.0e)", name, worst[name], spec.tolerance)
    return worst


def verify_generation(model: AttentionLM, bundle_dir: Path, trials: int, rng: np.random.Generator, span: int) -> float:
    """Greedy decoding with the KV cache in ONNX Runtime against PyTorch recomputing every sequence.

    Each trial starts 1..5 prompts of random lengths together and decodes every row up to the full
    context; rows leave the batch as they reach it, so the batch mix changes as in the service.
    Returns the worst log-prob difference.
    """
    cfg, tol = model.cfg, GRAPHS["decode"].tolerance
    prefill, decode = _session(bundle_dir, "prefill"), _session(bundle_dir, "decode")
    worst = 0.0

    def compare(got: np.ndarray, seqs: list[list[int]], step: int, heads: np.ndarray, steer: np.ndarray) -> list[int]:
        """Check ORT's next-token log-probs (B, V) against PyTorch's; returns the greedy tokens."""
        nonlocal worst
        ids, mask = pad([np.asarray(s) for s in seqs])
        (want,) = _torch(model, "next_token", ids, mask, heads, steer)
        worst = max(worst, _check("decode", got, want, tol, f"step {step} log-probs vs recomputation"))
        chosen = got.argmax(-1)
        for i, t in enumerate(chosen):
            top2 = np.sort(want[i])[-2:]
            if t != want[i].argmax() and top2[1] - top2[0] > tol:  # a tie may go either way
                raise ParityError(f"decode: step {step} row {i}: greedy token {t} vs {want[i].argmax()}")
        return [int(t) for t in chosen]

    L = cfg.n_layer
    for trial in range(trials):
        # The first trial always includes a one-token prompt, so decoding runs through the whole span.
        lengths = [1 if trial == 0 else int(rng.integers(1, span))] + [
            int(rng.integers(1, span)) for _ in range(int(rng.integers(0, 5)))
        ]
        seqs = [rng.integers(0, cfg.vocab_size, n).tolist() for n in lengths]
        ids, mask = pad([np.asarray(s) for s in seqs])
        # Some rows generate with heads ablated or steered, beside plain rows, and are checked
        # against PyTorch recomputing with the same interventions.
        heads = random_head_mask(rng, len(seqs), cfg.n_layer, cfg.n_head)
        steer = random_steering(rng, len(seqs), cfg.n_layer, cfg.d_model)
        feed = {"input_ids": ids, "attention_mask": mask, "head_mask": heads, "steering": steer}
        logprobs, keys, values, _ = prefill.run(None, feed)
        # Cache storage per layer (rows, nh, context, hs); what lies past a row's length is noise,
        # which the graph must ignore.
        storage = rng.standard_normal((2 * L, len(seqs), cfg.n_head, span, cfg.d_head))
        storage = storage.astype(np.float32)
        for i, n in enumerate(lengths):
            storage[:L, i, :, :n] = keys[i, :, :, :n]
            storage[L:, i, :, :n] = values[i, :, :, :n]
        tokens = compare(logprobs, seqs, 0, heads, steer)
        step = 0
        while True:
            live = [i for i, s in enumerate(seqs) if len(s) < span]
            if not live:
                break
            step += 1
            # The capacity varies from step to step, as the service's does: just past the longest row.
            capacity = int(rng.integers(max(len(seqs[i]) for i in live) + 1, span + 1))
            caches = storage[:, live, :, :capacity]
            feed = {
                "input_ids": np.asarray([[tokens[i]] for i in live], dtype=np.int64),
                "positions": np.asarray([len(seqs[i]) for i in live], dtype=np.int64),
                "head_mask": heads[live],
                "steering": steer[live],
                **{f"key_cache_{layer}": caches[layer] for layer in range(L)},
                **{f"value_cache_{layer}": caches[L + layer] for layer in range(L)},
            }
            logprobs, *present = decode.run(None, feed)
            storage[:, live, :, :capacity] = np.stack(present[: 2 * L])
            for i in live:
                seqs[i].append(tokens[i])
            for i, t in zip(
                live, compare(logprobs, [seqs[i] for i in live], step, heads[live], steer[live]), strict=True
            ):
                tokens[i] = t
    log.info("cached decoding parity: worst abs error %.2e over %d trials (tolerance %.0e)", worst, trials, tol)
    return worst


def verify_bundle(model: AttentionLM, bundle_dir: Path, trials: int = 12, seed: int = 0) -> dict[str, float]:
    """Compare every graph with PyTorch; returns the worst error per graph. Inputs are up to SPAN
    tokens long (the whole context of the committed models): past that, a GPT-2-sized model's
    attention tensors for a batch of random rows take gigabytes, and decoding each row to a
    1024-token context against PyTorch recomputing every step, hours."""
    rng = np.random.default_rng(seed)
    span = min(model.cfg.context_length, SPAN)
    worst = verify_one_shot(model, bundle_dir, trials, rng, span)
    worst["generation"] = verify_generation(model, bundle_dir, max(2, trials // 4), rng, span)
    worst["resume"] = verify_resume(model, bundle_dir, trials, rng, span)
    verify_helpers(bundle_dir, rng)
    return worst


def verify_resume(model: AttentionLM, bundle_dir: Path, trials: int, rng: np.random.Generator, span: int) -> float:
    """The resume graph against PyTorch patching the same activation with a hook, and the
    invariant that resuming an unpatched stream from any point gives the plain run's answer.

    Each row patches one random site (the residual stream before a block, an attention layer's
    output, an MLP's output) at one random position, as the service's patching does.
    """
    cfg, tol = model.cfg, GRAPHS["resume"].tolerance
    session, L = _session(bundle_dir, "resume"), cfg.n_layer
    worst = 0.0
    for _ in range(trials):
        ids, mask, lengths = random_batch(rng, cfg.vocab_size, span)
        with torch.no_grad():
            acts = model.run_blocks(torch.from_numpy(ids), torch.from_numpy(mask)).activations
        resid, attn_out = acts.resid.numpy(), acts.attn_out.numpy()
        (plain,) = _torch(
            model, "next_token", ids, mask, ones_mask(model, len(lengths)), no_steering(model, len(lengths))
        )
        entry = rng.integers(0, 2 * L + 1, len(lengths))
        streams = np.stack(
            [resid[b, e // 2] + attn_out[b, e // 2] if e % 2 else resid[b, e // 2] for b, e in enumerate(entry)]
        )
        (unpatched,) = session.run(None, {"stream": streams, "attention_mask": mask, "entry": entry})
        worst = max(worst, _check("resume", unpatched, plain, tol, "an unpatched resume vs the plain run"))
        delta = np.zeros_like(streams)
        for b, n in enumerate(lengths):
            delta[b, int(rng.integers(0, n))] = rng.standard_normal(cfg.d_model)
        (got,) = session.run(None, {"stream": streams + delta, "attention_mask": mask, "entry": entry})
        want = [
            patched_by_hook(model, ids[b : b + 1, :n], int(entry[b]), delta[b : b + 1, :n])
            for b, n in enumerate(lengths)
        ]
        worst = max(worst, _check("resume", got, np.concatenate(want), tol, "a patched resume vs a PyTorch hook"))
    log.info("resume parity: worst abs error %.2e (tolerance %.0e)", worst, tol)
    return worst


def patched_by_hook(model: AttentionLM, ids: np.ndarray, entry: int, delta: np.ndarray) -> np.ndarray:
    """Next-token log-probs (1, V) with delta added to the residual stream at entry point `entry`
    by forward hooks on the plain model (a reference independent of AttentionLM.resume)."""
    L, add = model.cfg.n_layer, torch.from_numpy(delta)
    if entry == 2 * L:  # after the last block: its output
        module, hook = model.blocks[L - 1], lambda m, args, out: (out[0] + add, *out[1:])
        handle = module.register_forward_hook(hook)
    elif entry % 2:  # after block l's attention: its attention output
        module = model.blocks[entry // 2].attn
        handle = module.register_forward_hook(lambda m, args, out: out._replace(out=out.out + add))
    else:  # before block l: its input
        handle = model.blocks[entry // 2].register_forward_pre_hook(lambda m, args: (args[0] + add, *args[1:]))
    try:
        with torch.no_grad():
            hidden, _ = model.hidden_states(torch.from_numpy(ids))
            return torch.log_softmax(model.logits(hidden[:, -1]), dim=-1).numpy()
    finally:
        handle.remove()


def verify_helpers(bundle_dir: Path, rng: np.random.Generator) -> None:
    """The copy and resize_cache graphs do exactly what bundlespec says."""
    data = rng.standard_normal(1000).astype(np.float32)
    (copied,) = _session(bundle_dir, "copy").run(None, {"source": data})
    if not np.array_equal(copied, data):
        raise ParityError("copy: the target differs from the source")
    cache = rng.standard_normal((3, 2, 8, 4)).astype(np.float32)
    resize = _session(bundle_dir, "resize_cache")
    for capacity in (4, 8, 16):
        (resized,) = resize.run(None, {"cache": cache, "new_capacity": np.array([capacity], dtype=np.int64)})
        want = np.zeros((3, 2, capacity, 4), dtype=np.float32)
        keep = min(capacity, 8)
        want[:, :, :keep] = cache[:, :, :keep]
        if not np.array_equal(resized, want):
            raise ParityError(f"resize_cache: capacity 8 -> {capacity} is wrong")

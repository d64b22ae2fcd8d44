"""The generation core: sampling, text assembly, and the continuous-batching scheduler on the real runner."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.core.bundle import load_bundle
from service.core.errors import InputError, QueueFullError
from service.core.generation import GenerationObserver, GenerationParams, Scheduler
from service.core.kvcache import KVCache
from service.core.runner import Job, ModelRunner
from service.core.sampling import ARGMAX_UP_TO, Sampler, SamplingParams, log_softmax, top_indices
from service.core.text import TextTracker

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def runner(toy_bundle):
    return ModelRunner(load_bundle(toy_bundle), "cpu", max_padding=0.1)


class Recorder(GenerationObserver):
    def __init__(self) -> None:
        self.active: list[int] = []
        self.decoded: list[int] = []
        self.steps: list[tuple[int, list[int]]] = []  # (prompts prefilled, decode widths) per hand-off

    def state(self, active: int, waiting: int, reserved_tokens: int) -> None:
        self.active.append(active)

    def step_done(self, prefilled: int, decode_widths: list[int], seconds: float) -> None:
        self.decoded.extend(decode_widths)
        self.steps.append((prefilled, decode_widths))


def scheduler(runner, **kw) -> Scheduler:
    args = {"max_active": 32, "kv_cache_tokens": 32 * 24, "max_waiting": 64, "step_timeout_s": 30}
    args.update(kw)
    return Scheduler(runner, ThreadPoolExecutor(1), runner.bundle.tokenizer, **args)


def prompt(runner, text: str) -> np.ndarray:
    return np.asarray(runner.bundle.tokenizer.encode(text).ids, dtype=np.int64)


async def collect(stream) -> list:
    return [step async for step in stream]


def run(coro):
    return asyncio.run(coro)


# -- sampling ------------------------------------------------------------------------------------


def test_greedy_takes_the_most_likely_and_a_seed_repeats_its_draws():
    lp = log_softmax(np.log(np.array([0.1, 0.6, 0.3])))
    assert Sampler(GREEDY, None).choose(lp) == 1
    draws = [Sampler(SamplingParams(1.0), 7).choose(lp) for _ in range(5)]
    assert len(set(draws)) == 1
    many = Sampler(SamplingParams(1.0), 0)
    counts = np.bincount([many.choose(lp) for _ in range(3000)], minlength=3) / 3000
    np.testing.assert_allclose(counts, [0.1, 0.6, 0.3], atol=0.04)


def test_top_k_and_top_p_cut_the_tail():
    lp = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    top1 = Sampler(SamplingParams(1.0, top_k=1), 0)
    assert {top1.choose(lp) for _ in range(50)} == {0}
    nucleus = Sampler(SamplingParams(1.0, top_p=0.8), 0)  # 0.5 + 0.3 reach 0.8: tokens 2 and 3 are out
    assert {nucleus.choose(lp) for _ in range(300)} == {0, 1}


# -- text ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, ARGMAX_UP_TO, ARGMAX_UP_TO + 1, 40])
def test_top_indices_orders_by_value_then_id_whichever_way_it_picks(k):
    rng = np.random.default_rng(k)
    for _ in range(300):
        lp = rng.integers(-3, 3, int(rng.integers(1, 60))).astype(np.float64)  # many equal values
        lp[rng.random(len(lp)) < 0.3] = -np.inf  # and some impossible tokens
        want = sorted(range(len(lp)), key=lambda i: (-lp[i], i))[:k]
        assert top_indices(lp, k).tolist() == want


def test_text_tracker_holds_back_stop_strings_and_split_characters(toy_bundle):
    tok = load_bundle(toy_bundle).tokenizer
    ids = tok.encode("I do not like hate.\nwe").ids
    t = TextTracker(tok, ("hate.",))
    out, stopped = "", False
    for i in ids:
        delta, stopped = t.add(i)
        out += delta
        if stopped:
            break
    assert stopped and out == "I do not like "
    # A character that spans two byte-level tokens is only handed out once it is complete.
    e = TextTracker(tok, ())
    pieces = [e.add(i)[0] for i in tok.encode("é").ids]
    assert "".join(pieces) + e.flush() == "é" and all("\ufffd" not in p for p in pieces)


# -- the scheduler ---------------------------------------------------------------------------------


def test_greedy_generation_matches_recomputing_with_the_one_shot_graph(runner):
    async def main():
        s = scheduler(runner)
        s.start()
        ids = prompt(runner, "I do not")
        (stream,) = s.submit([(ids, GenerationParams(max_tokens=10, sampling=GREEDY))])
        steps = await collect(stream)
        await s.stop(1)
        return ids, steps

    ids, steps = run(main())
    assert len(steps) == 10 and steps[-1].finish_reason == "length"
    seq = list(ids)
    for step in steps:  # the next_token graph over the whole sequence, no cache
        (want,) = runner.run("next_token", [np.asarray(seq)])
        assert step.token_id == int(np.argmax(want))
        assert abs(step.logprob - float(want[step.token_id])) < 1e-4
        seq.append(step.token_id)


def test_sequences_join_between_steps_and_leave_when_done(runner):
    rec = Recorder()

    async def main():
        # One decode step per hand-off: the toy model is fast enough to finish a whole burst first.
        s = scheduler(runner, observer=rec, burst_s=0)
        s.start()
        (long,) = s.submit([(prompt(runner, "we do"), GenerationParams(max_tokens=12, sampling=GREEDY))])
        first = await long.__anext__()
        (short,) = s.submit([(prompt(runner, "you"), GenerationParams(max_tokens=3, sampling=GREEDY))])
        rest, short_steps = await asyncio.gather(collect(long), collect(short))
        await s.stop(1)
        return [first, *rest], short_steps, s

    long_steps, short_steps, s = run(main())
    assert len(long_steps) == 12 and len(short_steps) == 3
    assert 2 in rec.decoded, "the second sequence should have joined the first one's decode steps"
    assert rec.active[-1] == 0 and s.reserved_tokens == 0


def test_a_cancelled_sequence_leaves_at_once_and_frees_its_cache(runner):
    rec = Recorder()

    async def main():
        s = scheduler(runner, observer=rec)
        s.start()
        a, b = s.submit([(prompt(runner, "I do"), GenerationParams(max_tokens=20, sampling=GREEDY))] * 2)
        await a.__anext__()
        await b.__anext__()
        a.cancel()
        rest = await collect(b)
        await s.stop(1)
        return rest, s

    rest, s = run(main())
    assert len(rest) == 19
    assert rec.decoded[-1] == 1, "only the sequence still being read should be decoded at the end"
    assert s.reserved_tokens == 0 and not s.active


def test_the_kv_budget_makes_sequences_wait_and_the_queue_is_bounded(runner):
    rec = Recorder()

    async def main():
        # Room for one 3 + 10 token sequence at a time.
        s = scheduler(runner, kv_cache_tokens=20, max_waiting=2, observer=rec)
        s.start()
        params = GenerationParams(max_tokens=10, sampling=GREEDY)
        ids = prompt(runner, "I do not")
        streams = s.submit([(ids, params), (ids, params)])
        with pytest.raises(QueueFullError):
            s.submit([(ids, params)])
        # More sequences than the queue can ever hold is the caller's error, not "retry later".
        with pytest.raises(InputError, match="MAX_WAITING_SEQUENCES=2 can ever hold"):
            s.submit([(ids, params)] * 3)
        with pytest.raises(InputError, match="KV_CACHE_TOKENS"):
            s.submit([(ids, GenerationParams(max_tokens=21))])
        results = await asyncio.gather(*(collect(x) for x in streams))
        await s.stop(1)
        return results

    a, b = run(main())
    assert [x.token_id for x in a] == [x.token_id for x in b]
    assert max(rec.active) == 1 and max(rec.decoded) == 1, "the budget allows one sequence at a time"


def test_a_seed_gives_the_same_text_whatever_the_batch_mates(runner):
    sampled = GenerationParams(max_tokens=15, sampling=SamplingParams(temperature=1.5), seed=42)

    async def main():
        s = scheduler(runner)
        s.start()
        ids = prompt(runner, "we")
        (alone,) = s.submit([(ids, sampled)])
        alone_steps = await collect(alone)
        others = [
            (prompt(runner, t), GenerationParams(max_tokens=15, sampling=SamplingParams(1.0)))
            for t in ("I do not like", "you", "they do like like.\nwe do")
        ]
        crowd = s.submit([*others[:2], (ids, sampled), others[2]])
        crowd_steps = await asyncio.gather(*(collect(x) for x in crowd))
        await s.stop(1)
        return alone_steps, crowd_steps[2]

    alone, among = run(main())
    assert [x.token_id for x in alone] == [x.token_id for x in among]


def test_attention_per_step_covers_the_context_before_each_token(runner):
    async def main():
        s = scheduler(runner)
        s.start()
        ids = prompt(runner, "I do not")
        params = GenerationParams(max_tokens=4, sampling=GREEDY, attention=([1], [0, 2]))
        (stream,) = s.submit([(ids, params)])
        steps = await collect(stream)
        await s.stop(1)
        return ids, steps

    ids, steps = run(main())
    seq = list(ids)
    for step in steps:
        assert step.attention is not None and step.attention.shape == (1, 2, len(seq))
        np.testing.assert_allclose(step.attention.sum(-1), 1.0, atol=1e-5)
        # The same weights as the attention graph's last query row over the same tokens.
        (full,) = runner.run("attention", [np.asarray(seq)])  # every map, layer by layer
        full = full.reshape(runner.bundle.arch.n_layer, runner.bundle.arch.n_head, len(seq), len(seq))
        np.testing.assert_allclose(step.attention, full[[1]][:, [0, 2], -1, :], atol=1e-5)
        seq.append(step.token_id)


def test_staggered_sequences_match_recomputation_while_the_cache_moves_rows_and_capacity(runner):
    """Sequences join at different steps, one leaves early (its row goes to the last one) and the
    storage's capacity grows past its first size: each still gets what recomputation gives."""
    context = runner.bundle.context_length
    texts = ["I", "we do", "you do not like", "they"]

    async def main():
        s = scheduler(runner, burst_s=0)
        s.start()
        start_capacity = s.cache.capacity
        buffers = s.cache.addresses
        first = s.submit([(prompt(runner, texts[0]), GenerationParams(max_tokens=context - 2, sampling=GREEDY))])
        head = [await first[0].__anext__() for _ in range(3)]
        later = s.submit(
            [(prompt(runner, t), GenerationParams(max_tokens=context // 2, sampling=GREEDY)) for t in texts[1:]]
        )
        await later[0].__anext__()
        later[0].cancel()  # leaves at once: a row in the middle frees up
        results = await asyncio.gather(collect(first[0]), *(collect(x) for x in later[1:]))
        grown = s.cache.capacity
        await s.stop(1)
        assert s.cache.addresses == buffers, "the storage is allocated once"
        return [head + results[0], *results[1:]], start_capacity, grown, s

    outputs, start_capacity, grown, s = run(main())
    assert grown > start_capacity, "the longest sequence should have outgrown the first capacity"
    assert not s.cache.owners
    for text, steps in zip([texts[0], *texts[2:]], outputs, strict=True):
        seq = list(prompt(runner, text))
        for step in steps:
            (want,) = runner.run("next_token", [np.asarray(seq)])
            assert step.token_id == int(np.argmax(want))
            assert abs(step.logprob - float(want[step.token_id])) < 1e-4
            seq.append(step.token_id)


def test_a_decode_step_writes_the_cache_in_place(runner):
    """The runner's decode step reads and writes the storage it is bound to: no copy in or out."""
    arch = runner.bundle.arch
    cache = KVCache(arch.n_layer, arch.n_head, arch.d_head, rows=2, context=runner.bundle.context_length, ops=runner)
    ids = prompt(runner, "we do")
    (pre,) = runner.prefill([Job(ids)])
    cache.add("a", pre.keys, pre.values)
    before = [v.copy() for v in cache.read()]
    runner.decode(np.array([3]), np.array([len(ids)]), cache.bound())
    for v, b in zip(cache.read(), before, strict=True):
        assert np.array_equal(v[:, :, : len(ids)], b[:, :, : len(ids)]), "the prompt's positions are left alone"
        assert np.any(v[:, :, len(ids)] != b[:, :, len(ids)]), "the new token's keys and values land in the storage"


def test_the_cache_keeps_each_rows_positions_through_removals_and_relayouts(runner):
    # The runner's helper graphs do the copies; they do not depend on the model's shape.
    cache = KVCache(n_layer=2, n_head=2, d_head=3, rows=3, context=64, ops=runner)
    rng = np.random.default_rng(0)
    data = {o: rng.standard_normal((2, 2, 2, n, 3)).astype(np.float32) for o, n in (("a", 5), ("b", 20), ("c", 9))}
    for owner, kv in data.items():
        cache.add(owner, kv[0], kv[1])
    assert cache.capacity == 32  # grown for b's 20 positions

    def held(owner):
        row, n = cache.row(owner), data[owner].shape[3]
        views = cache.read()
        return np.stack([np.stack([v[row, :, :n] for v in views[:2]]), np.stack([v[row, :, :n] for v in views[2:]])])

    cache.remove("b")  # the last row (c) moves into b's
    assert cache.owners == ["a", "c"] and cache.row("c") == 1
    cache.fit(9)  # needs 16, more than a quarter of 32: it stays
    assert cache.capacity == 32
    cache.fit(40)
    assert cache.capacity == 64
    cache.fit(3)  # needs 16, a quarter of 64: it shrinks, to twice what it needs
    assert cache.capacity == 32
    for owner in ("a", "c"):
        np.testing.assert_array_equal(held(owner), data[owner])
    cache.remove("a")
    cache.remove("a")  # twice is harmless
    assert cache.owners == ["c"]
    np.testing.assert_array_equal(held("c"), data["c"])


def test_prompts_join_a_budget_at_a_time_and_running_sequences_keep_moving(runner):
    rec = Recorder()
    ids = prompt(runner, "we do")

    async def main():
        s = scheduler(runner, observer=rec, prefill_tokens_per_step=len(ids))  # one prompt per step
        s.start()
        (running,) = s.submit([(prompt(runner, "I"), GenerationParams(max_tokens=20, sampling=GREEDY))])
        await running.__anext__()
        joining = s.submit([(ids, GenerationParams(max_tokens=4, sampling=GREEDY))] * 3)
        await asyncio.gather(collect(running), *(collect(x) for x in joining))
        await s.stop(1)

    run(main())
    with_prompts = [(n, widths) for n, widths in rec.steps if n]
    assert [n for n, _ in with_prompts] == [1, 1, 1, 1], "the first prompt alone, then one per step"
    # Every step that prefilled a joining prompt also advanced the sequences already running.
    assert all(widths and widths[0] >= 1 for _, widths in with_prompts[1:])


def test_the_storage_never_goes_to_the_host(runner, monkeypatch):
    """On a GPU, reading an OrtValue to the host is a copy. Joins, leaves and capacity changes run as
    device copies (the bundle's helper graphs), so across a generation with all three the storage is
    never read: the only reads are each decode step's log-probs. Reads are made copies here, as on a
    GPU, and the generations still match recomputation."""
    import onnxruntime as ort

    real = ort.OrtValue.numpy
    reads = []

    def copied(self):
        reads.append(1)
        return real(self).copy()

    monkeypatch.setattr(ort.OrtValue, "numpy", copied)
    context = runner.bundle.context_length
    rec = Recorder()

    async def main():
        s = scheduler(runner, burst_s=0, observer=rec)
        s.start()
        reads.clear()
        params = [GenerationParams(max_tokens=n, sampling=GREEDY) for n in (context - 4, 3, context // 2)]
        streams = s.submit([(prompt(runner, t), p) for t, p in zip(["I", "we do", "you"], params, strict=True)])
        results = await asyncio.gather(*(collect(x) for x in streams))
        grown = s.cache.capacity
        await s.stop(1)
        return results, grown

    outputs, grown = run(main())
    assert grown > 16, "the capacity should have changed during the generation"
    assert len(reads) == len(rec.decoded), "one read per decode step (its log-probs), none of the storage"
    for text, steps in zip(["I", "we do", "you"], outputs, strict=True):
        seq = list(prompt(runner, text))
        for step in steps:
            (want,) = runner.run("next_token", [np.asarray(seq)])
            assert step.token_id == int(np.argmax(want)), text
            seq.append(step.token_id)

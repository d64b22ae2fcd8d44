"""Length grouping inside a batch, and the runner's answers not depending on it."""

import math

import numpy as np
import pytest

from bundlespec.padding import group_by_length
from service.core.bundle import load_bundle
from service.core.runner import Job, ModelRunner


def test_groups_cover_every_row_once_and_bound_the_padding():
    lengths = [250, 3, 7, 120, 118, 5, 240, 6, 60, 61]
    for max_padding in (0.0, 0.1, 0.5):
        groups = group_by_length(lengths, max_padding)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        for g in groups:
            padded = len(g) * max(lengths[i] for i in g)
            assert padded <= (1 + max_padding) * sum(lengths[i] for i in g) or len(g) == 1


def test_no_limit_means_one_padded_batch_and_zero_means_equal_lengths_only():
    lengths = [5, 9, 5, 2]
    assert [sorted(g) for g in group_by_length(lengths, math.inf)] == [[0, 1, 2, 3]]
    assert sorted(sorted(g) for g in group_by_length(lengths, 0.0)) == [[0, 2], [1], [3]]


@pytest.mark.parametrize("kind", ["next_token", "attention", "score"])
def test_grouped_and_padded_runs_give_the_same_answers_in_the_same_order(toy_bundle, kind):
    bundle = load_bundle(toy_bundle)
    rng = np.random.default_rng(1)
    rows = [rng.integers(0, bundle.vocab_size, n) for n in (20, 2, 9, 20, 3, 15)]
    grouped = ModelRunner(bundle, "cpu", max_padding=0.0).run(kind, rows)
    padded = ModelRunner(bundle, "cpu", max_padding=math.inf).run(kind, rows)
    for g, p, r in zip(grouped, padded, rows, strict=True):
        g, p = (g, p) if isinstance(g, tuple) else ((g,), (p,))
        assert kind != "score" or g[0].shape == (len(r) - 1,)
        for a, b in zip(g, p, strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_attention_rows_asking_for_other_maps_share_a_call_and_each_gets_its_own(toy_bundle):
    """The graph returns only the maps asked for (one layer's computed maps at a time); rows with
    other maps in one batch run separately and each gets exactly its maps of the full answer."""
    bundle = load_bundle(toy_bundle)
    runner = ModelRunner(bundle, "cpu", max_padding=0.1)
    rng = np.random.default_rng(2)
    rows = [rng.integers(0, bundle.vocab_size, n) for n in (12, 7, 12, 3)]
    every = bundle.arch.n_layer * bundle.arch.n_head
    full = runner.run("attention", rows)
    asked = [(0,), (1, every - 1), (0,), tuple(range(every))]
    picked = runner.run("attention", [Job(r, maps=m) for r, m in zip(rows, asked, strict=True)])
    for f, p, m, r in zip(full, picked, asked, rows, strict=True):
        assert f.shape == (every, len(r), len(r)) and p.shape == (len(m), len(r), len(r))
        np.testing.assert_allclose(p, f[list(m)], atol=1e-6)

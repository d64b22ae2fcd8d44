"""Properties of the attention model that must hold for any weights."""

import numpy as np
import pytest
import torch

from bundlespec.manifest import Architecture
from model.transformer import AttentionLM, sinusoidal_positions

CFG = Architecture(vocab_size=97, n_layer=2, n_head=4, d_model=32, context_length=16, dropout=0.0)


@pytest.fixture(scope="module")
def model() -> AttentionLM:
    torch.manual_seed(0)
    return AttentionLM(CFG).eval()


def test_positional_codes_are_unique_and_bounded():
    pe = sinusoidal_positions(256, 64)
    assert pe.shape == (256, 64)
    assert pe.abs().max() <= 1.0
    distances = torch.cdist(pe, pe) + torch.eye(256) * 10
    assert distances.min() > 0.1  # no two positions share a code


@torch.no_grad()
def test_changing_a_token_never_changes_anything_before_it(model):
    ids = torch.randint(0, CFG.vocab_size, (1, 12))
    hidden, weights = model.hidden_states(ids, need_weights=True)
    for t in (0, 5, 11):
        changed = ids.clone()
        changed[0, t] = (changed[0, t] + 1) % CFG.vocab_size
        h2, w2 = model.hidden_states(changed, need_weights=True)
        torch.testing.assert_close(h2[:, :t], hidden[:, :t])
        for a, b in zip(weights, w2, strict=True):
            torch.testing.assert_close(b[:, :, :t, :t], a[:, :, :t, :t])
        if t < 11:
            assert not torch.allclose(h2[:, t:], hidden[:, t:])


@torch.no_grad()
def test_attention_rows_sum_to_one_and_are_zero_above_diagonal_and_on_padding(model):
    ids = torch.randint(0, CFG.vocab_size, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 1:] = 0
    _, weights = model.hidden_states(ids, mask, need_weights=True)
    assert len(weights) == CFG.n_layer
    for w in weights:
        assert w.shape == (3, CFG.n_head, 10, 10)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, CFG.n_head, 10))
        upper = torch.triu(torch.ones(10, 10, dtype=torch.bool), diagonal=1)
        assert (w[:, :, upper] == 0).all()
        assert (w[1, :, :, 6:] == 0).all()
        assert (w[2, :, :, 1:] == 0).all()


@torch.no_grad()
def test_explicit_softmax_path_matches_fused_training_path(model):
    ids = torch.randint(0, CFG.vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    fused, _ = model.hidden_states(ids, mask)
    explicit, _ = model.hidden_states(ids, mask, need_weights=True)
    torch.testing.assert_close(explicit[0, :4], fused[0, :4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit[1], fused[1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_padding_does_not_change_real_positions(model):
    ids = torch.randint(0, CFG.vocab_size, (1, 7))
    alone, _ = model.hidden_states(ids, torch.ones_like(ids), need_weights=True)
    padded_ids = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1).long()
    padded, _ = model.hidden_states(padded_ids, mask, need_weights=True)
    np.testing.assert_allclose(padded[0, :7].numpy(), alone[0].numpy(), atol=1e-5)


def test_config_rejects_heads_that_do_not_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        Architecture(d_model=30, n_head=4)


@torch.no_grad()
def test_last_position_path_equals_the_full_forward_at_the_last_real_token(model):
    ids = torch.randint(0, CFG.vocab_size, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    mask[2, 1:] = 0
    full, _ = model.hidden_states(ids, mask)
    last = mask.sum(1) - 1
    torch.testing.assert_close(model.last_hidden(ids, mask), full[torch.arange(3), last], atol=1e-5, rtol=1e-5)

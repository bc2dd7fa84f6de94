"""Tests for imutune.losses: FilterLoss (per-sample weighted CE) and WeightedCrossEntropy."""
from __future__ import annotations

import math

import pytest
import torch
from imutune.train.losses import FilterLoss, WeightedCrossEntropy
from torch.nn import functional as F


def _data(n=6, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g), torch.randint(0, k, (n,), generator=g)


def test_filterloss_all_ones_equals_cross_entropy():
    logits, y = _data()
    got = FilterLoss()(logits, y, torch.ones(6))
    torch.testing.assert_close(got, F.cross_entropy(logits, y))
    # any constant weight gives the same weighted mean
    torch.testing.assert_close(FilterLoss()(logits, y, torch.full((6,), 0.3)), F.cross_entropy(logits, y))


def test_filterloss_hand_computed_weighted_mean():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 0])
    w = torch.tensor([1.0, 0.5, 0.25])
    ce = [math.log(1 + math.exp(-2.0)), math.log(2.0), math.log(1 + math.exp(3.0))]
    expected = (1.0 * ce[0] + 0.5 * ce[1] + 0.25 * ce[2]) / 1.75
    assert FilterLoss()(logits, y, w).item() == pytest.approx(expected, rel=1e-6)


def test_filterloss_matches_reduction_none():
    logits, y = _data(n=8, k=3, seed=2)
    w = torch.rand(8, generator=torch.Generator().manual_seed(5))
    ce = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(FilterLoss()(logits, y, w), (w * ce).sum() / w.sum())


def test_filterloss_label_smoothing():
    logits, y = _data()
    got = FilterLoss(label_smoothing=0.1)(logits, y, torch.ones(6))
    torch.testing.assert_close(got, F.cross_entropy(logits, y, label_smoothing=0.1))


def test_filterloss_zero_weight_removes_sample():
    logits, y = _data()
    logits.requires_grad_(True)
    w = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.0, 2.0])
    FilterLoss()(logits, y, w).backward()
    assert torch.equal(logits.grad[1], torch.zeros(4))
    assert torch.equal(logits.grad[4], torch.zeros(4))
    assert all(logits.grad[i].abs().sum() > 0 for i in (0, 2, 3, 5))
    # and the value equals the loss over the remaining samples alone
    keep = torch.tensor([0, 2, 3, 5])
    with torch.no_grad():
        full = FilterLoss()(logits, y, w)
        sub = FilterLoss()(logits[keep], y[keep], w[keep])
    torch.testing.assert_close(full, sub)


def test_filterloss_changing_zero_weighted_logits_does_not_change_loss():
    logits, y = _data()
    w = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    a = FilterLoss()(logits, y, w)
    logits2 = logits.clone()
    logits2[1] = torch.tensor([100.0, -100.0, 50.0, 0.0])
    torch.testing.assert_close(FilterLoss()(logits2, y, w), a)


def test_filterloss_all_zero_weights():
    logits, y = _data()
    with pytest.raises(ValueError, match=r"weights are all zero; FilterLoss needs at least one positive weight"):
        FilterLoss()(logits, y, torch.zeros(6))


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_filterloss_negative_or_nonfinite_weights(bad):
    logits, y = _data()
    w = torch.ones(6)
    w[2] = bad
    with pytest.raises(ValueError, match=r"weights must be finite and >= 0; got negative or NaN/Inf values"):
        FilterLoss()(logits, y, w)


def test_filterloss_shape_mismatch():
    logits, y = _data()
    with pytest.raises(ValueError, match=r"weights must have shape \(6,\), got \(5,\)"):
        FilterLoss()(logits, y, torch.ones(5))
    with pytest.raises(ValueError, match=r"weights must have shape \(6,\), got \(6, 1\)"):
        FilterLoss()(logits, y, torch.ones(6, 1))


def test_filterloss_check_off_does_not_raise():
    logits, y = _data()
    out = FilterLoss(check_weights=False)(logits, y, torch.zeros(6))
    assert out.item() == 0.0  # 0 / clamp_min(0, 1e-12): finite, no NaN


def test_weighted_cross_entropy_class_weights():
    logits, y = _data(n=10, k=3, seed=1)
    cw = torch.tensor([0.2, 1.0, 3.0])
    got = WeightedCrossEntropy(cw)(logits, y, torch.rand(10))   # sample weights are ignored
    torch.testing.assert_close(got, F.cross_entropy(logits, y, weight=cw))
    assert not torch.allclose(got, F.cross_entropy(logits, y))


def test_weighted_cross_entropy_plain_and_smoothing():
    logits, y = _data(n=10, k=3, seed=1)
    torch.testing.assert_close(WeightedCrossEntropy()(logits, y), F.cross_entropy(logits, y))
    torch.testing.assert_close(WeightedCrossEntropy(label_smoothing=0.2)(logits, y),
                               F.cross_entropy(logits, y, label_smoothing=0.2))


def test_weighted_cross_entropy_class_weights_buffer():
    m = WeightedCrossEntropy([1, 2, 3])
    assert m.class_weights.dtype == torch.float32
    assert "class_weights" in m.state_dict()
    assert WeightedCrossEntropy().class_weights is None


# --------------------------------------------------------------------------- noise-robust losses (issue 16)

def test_gce_hand_computed_and_limits():
    from imutune.train.losses import GeneralizedCrossEntropy

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    p = torch.softmax(logits, 1)[torch.arange(2), y]
    q = 0.7
    exp = ((1 - p ** q) / q).mean()
    assert torch.allclose(GeneralizedCrossEntropy(q)(logits, y, torch.ones(2)), exp)
    # q = 1 is the mean absolute error 1 - p_y; tiny q approaches cross-entropy
    assert torch.allclose(GeneralizedCrossEntropy(1.0)(logits, y), (1 - p).mean())
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(GeneralizedCrossEntropy(1e-4)(logits, y), ce, atol=1e-3)
    w = torch.tensor([1.0, 0.0])
    assert torch.allclose(GeneralizedCrossEntropy(q)(logits, y, w), (1 - p[0] ** q) / q)
    with pytest.raises(ValueError, match="q must be in"):
        GeneralizedCrossEntropy(0.0)
    with pytest.raises(ValueError, match="all zero"):
        GeneralizedCrossEntropy()(logits, y, torch.zeros(2))


def test_gce_bounded_on_confidently_wrong_label():
    from imutune.train.losses import GeneralizedCrossEntropy

    logits = torch.tensor([[20.0, -20.0]])
    y = torch.tensor([1])
    assert float(GeneralizedCrossEntropy(0.7)(logits, y)) <= 1 / 0.7 + 1e-6
    assert float(torch.nn.functional.cross_entropy(logits, y)) > 30


def test_sce_hand_computed():
    from imutune.train.losses import SymmetricCrossEntropy

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    sm = torch.softmax(logits, 1)
    py = sm[torch.arange(2), y]
    # RCE from the definition -sum_k p_k log q_k with log 0 := -4
    logq = torch.full_like(sm, -4.0)
    logq[torch.arange(2), y] = 0.0
    rce = -(sm * logq).sum(1)
    exp = (0.1 * -torch.log(py) + 1.0 * rce).mean()
    assert torch.allclose(SymmetricCrossEntropy()(logits, y, torch.ones(2)), exp, atol=1e-6)
    with pytest.raises(ValueError, match="not both 0"):
        SymmetricCrossEntropy(0.0, 0.0)
    with pytest.raises(ValueError, match="log_zero"):
        SymmetricCrossEntropy(log_zero=1.0)

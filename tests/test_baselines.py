"""Tests for imutune.baselines (every fine-tuning method of the FilterLoss
benchmark) and the baseline losses of imutune.losses (focal, class-balanced,
inverse frequency)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from imutune.personalize.baselines import (
    BASELINES,
    FILTERLOSS_METHODS,
    METHODS,
    no_finetune,
    resample_windows,
    run_method,
)
from imutune.personalize.weights import FilterConfig
from imutune.signal.windows import WindowConfig, Windows
from imutune.train.loop import TrainConfig, predict_logits
from imutune.train.losses import (
    ClassBalancedLoss,
    FocalLoss,
    effective_number_weights,
    inverse_frequency_weights,
)
from imutune.train.pretrain import pretrain
from torch.nn import functional as F

CHANNELS = tuple(f"ch{i}" for i in range(3))


def _windows(counts=(30, 8, 3), T=25, seed=0, class_names=("a", "b", "c")) -> Windows:
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, k) for k, n in enumerate(counts)]).astype(np.int64)
    x = rng.normal(size=(len(y), 3, T)).astype(np.float32)
    x[np.arange(len(y)), y % 3] += 2.0
    return Windows(x, y, np.arange(len(y)) % 5, np.array(["u"] * len(y)), tuple(class_names), CHANNELS)


@pytest.fixture(scope="module")
def bundle():
    src = _windows(counts=(40, 40, 40), seed=1)
    return pretrain(src, model_name="tinycnn1d", window=WindowConfig(window_s=0.5), progress=False,
                    train_config=TrainConfig(epochs=2, batch_size=32, seed=0))


BUDGET = TrainConfig(epochs=2, batch_size=16, lr=1e-3, seed=0)
FAST_FILTER = FilterConfig(probe_steps=20, meta_iterations=3, oof_epochs=1, n_folds=2)


def _opts(name, n=41):
    if name in ("filterloss", "filterloss_cv", "filterloss_learned", "filterloss_soft", "cleanlab"):
        return {"filter_config": FAST_FILTER}
    if name == "oracle":
        return {"noisy_mask": np.arange(n) % 7 == 0}
    return {}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_fine_tunes_with_the_same_budget(bundle, name):
    w = _windows()
    out = run_method(name, bundle, w, BUDGET, **_opts(name))
    assert out.info["method"] == name
    assert out.model is not bundle.model                          # the input bundle is untouched
    logits = predict_logits(out.model, out.normalizer(w.x))
    assert logits.shape == (len(w), 3) and np.all(np.isfinite(logits))
    if name != "none":
        assert out.info["train_config"]["epochs"] == BUDGET.epochs
        assert out.info["train_config"]["lr"] == BUDGET.lr
        assert out.info["steps"] > 0


def test_method_lists():
    assert set(BASELINES) | set(FILTERLOSS_METHODS) == set(METHODS)
    assert {"none", "ce", "oversample", "undersample", "class_weighted", "class_balanced", "focal", "gce", "sce",
            "cleanlab", "oracle"} == set(BASELINES)


def _flipped() -> tuple[Windows, np.ndarray]:
    """90 separable windows of which 10 (every 9th) carry the next class's label."""
    w = _windows(counts=(30, 30, 30), seed=3)
    flip = np.arange(0, 90, 9)
    y = w.y.copy()
    y[flip] = (y[flip] + 1) % 3
    return Windows(w.x, y, w.recording, w.users, w.class_names, w.channels), flip


FLIP_FILTER = FilterConfig(oof_epochs=15, n_folds=3, oof_lr=3e-3)


def test_cleanlab_drops_flipped_labels_on_a_tiny_case(bundle):
    from imutune.personalize.baselines import cleanlab_issues

    noisy, flip = _flipped()
    fc = FLIP_FILTER
    issues, probs = cleanlab_issues(bundle, noisy, BUDGET, filter_config=fc)
    assert probs.shape == (90, 3) and np.allclose(probs.sum(1), 1)
    assert np.isin(flip, np.flatnonzero(issues)).mean() >= 0.6    # most flipped windows are found ...
    assert issues.sum() <= 2 * flip.size                          # ... without dropping half the data
    out = run_method("cleanlab", bundle, noisy, BUDGET, filter_config=fc)
    assert out.info["dropped"] == np.flatnonzero(issues).tolist()
    assert out.info["n_train_effective"] == 90 - int(issues.sum())


def test_filterloss_soft_gives_noisy_windows_no_weight_and_boundary_windows_their_quality(bundle):
    from imutune.personalize.filter import BOUNDARY, HIGH_VALUE, NOISY

    noisy, flip = _flipped()
    out = run_method("filterloss_soft", bundle, noisy, BUDGET, filter_config=FLIP_FILTER)
    assert out.info["category_weights"] == {"high_value": 1.0, "boundary": 1.0, "noisy": 0.0}
    assert out.info["soft_weights"] is True and out.info["filter_mode"] == "fixed"
    cats = np.asarray(out.info["categories"])
    sw = np.asarray(out.info["sample_weights"])
    assert np.all(sw[cats == NOISY] == 0) and np.all(sw[cats == HIGH_VALUE] == 1)
    assert np.all((sw[cats == BOUNDARY] >= 0) & (sw[cats == BOUNDARY] <= 1))
    assert (cats[flip] == NOISY).mean() >= 0.5                    # the flipped windows lose their weight
    assert sw[flip].sum() < 0.25 * flip.size


def test_gce_and_sce_use_their_losses(bundle, monkeypatch):
    import imutune.personalize.baselines as B

    seen = []
    real = B.train

    def spy(model, x, y, *, loss_fn=None, **kw):
        seen.append(type(loss_fn).__name__)
        return real(model, x, y, loss_fn=loss_fn, **kw)

    monkeypatch.setattr(B, "train", spy)
    a = run_method("gce", bundle, _windows(), BUDGET)
    b = run_method("sce", bundle, _windows(), BUDGET)
    assert seen == ["GeneralizedCrossEntropy", "SymmetricCrossEntropy"]
    assert a.info["q"] == 0.7 and b.info["alpha"] == 0.1 and b.info["beta"] == 1.0


def test_oracle_drops_exactly_the_corrupted_windows_and_needs_the_truth(bundle):
    w = _windows()
    mask = np.zeros(len(w), bool)
    mask[[0, 5, 40]] = True
    out = run_method("oracle", bundle, w, BUDGET, noisy_mask=mask)
    assert out.info["dropped"] == [0, 5, 40] and out.info["n_train_effective"] == len(w) - 3
    with pytest.raises(ValueError, match="needs noisy_mask"):
        run_method("oracle", bundle, w, BUDGET)
    with pytest.raises(ValueError, match="noisy_mask must have shape"):
        run_method("oracle", bundle, w, BUDGET, noisy_mask=mask[:5])


@pytest.mark.parametrize("name", [m for m in METHODS if m != "none"])
def test_methods_accept_a_class_without_windows(bundle, name):
    w = _windows(counts=(20, 6, 0))                               # class "c" has no target windows
    out = run_method(name, bundle, w, BUDGET, **_opts(name, len(w)))
    assert all(np.isfinite(out.info["loss_history"]))


@pytest.mark.parametrize("name", [m for m in METHODS if m != "none"])
def test_new_class_set_replaces_the_head(bundle, name):
    w = _windows(counts=(10, 10, 5, 5), class_names=("w", "x", "y", "z"))
    out = run_method(name, bundle, w, BUDGET, **_opts(name, len(w)))
    assert out.class_names == ("w", "x", "y", "z") and out.model.num_classes == 4
    assert out.info["head_replaced"] is True


def test_no_finetune_is_the_pretrained_model_and_rejects_new_classes(bundle):
    w = _windows()
    out = no_finetune(bundle, w)
    np.testing.assert_array_equal(predict_logits(out.model, out.normalizer(w.x)),
                                  predict_logits(bundle.model, bundle.normalizer(w.x)))
    with pytest.raises(ValueError, match="differ"):
        no_finetune(bundle, _windows(class_names=("p", "q", "r")))


def test_run_method_unknown_and_channel_mismatch(bundle):
    with pytest.raises(ValueError, match="unknown"):
        run_method("smote", bundle, _windows())
    w = _windows()
    bad = Windows(w.x, w.y, w.recording, w.users, w.class_names, ("x", "y", "z"))
    with pytest.raises(ValueError, match="channels"):
        run_method("ce", bundle, bad, BUDGET)


def test_resampling_balances_and_keeps_real_windows():
    w = _windows(counts=(30, 8, 3))
    xo, yo = resample_windows(w, "over", seed=0)
    assert np.bincount(yo).tolist() == [30, 30, 30] and xo.shape == (90, 3, 25)
    xu, yu = resample_windows(w, "under", seed=0)
    assert np.bincount(yu).tolist() == [3, 3, 3]
    flat = {row.tobytes() for row in w.x.reshape(len(w), -1)}
    assert all(r.tobytes() in flat for r in xo.reshape(len(yo), -1))
    # labels stay attached to their windows
    for xs, ys in ((xo, yo), (xu, yu)):
        lookup = {row.tobytes(): lab for row, lab in zip(w.x.reshape(len(w), -1), w.y)}
        assert all(lookup[r.tobytes()] == lab for r, lab in zip(xs.reshape(len(ys), -1), ys))
    with pytest.raises(ValueError, match=r"kind must be 'over' or 'under', got 'smote'"):
        resample_windows(w, "smote")


def test_oversampling_takes_more_steps_and_undersampling_fewer(bundle):
    w = _windows(counts=(30, 8, 3))
    steps = {m: run_method(m, bundle, w, BUDGET).info["steps"] for m in ("ce", "oversample", "undersample")}
    assert steps["undersample"] < steps["ce"] < steps["oversample"]


# --------------------------------------------------------------------------- losses

def _data(n=8, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g), torch.randint(0, k, (n,), generator=g)


def test_focal_gamma_zero_is_cross_entropy_and_gamma_two_by_hand():
    logits, y = _data()
    torch.testing.assert_close(FocalLoss(0.0)(logits, y, torch.ones(8)), F.cross_entropy(logits, y))
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    p = [math.exp(2) / (math.exp(2) + 1), 1 / (1 + math.e)]
    terms = [-(1 - pi) ** 2 * math.log(pi) for pi in p]
    w = torch.tensor([1.0, 3.0])
    assert FocalLoss(2.0)(logits, y, w).item() == pytest.approx((terms[0] + 3 * terms[1]) / 4, rel=1e-5)


def test_class_balanced_weights_follow_the_effective_number():
    counts = np.array([100, 10, 1, 0])
    beta = 0.99
    eff = (1 - beta ** counts[:3]) / (1 - beta)
    raw = 1 / eff
    np.testing.assert_allclose(effective_number_weights(counts, beta)[:3], raw * 3 / raw.sum(), rtol=1e-5)
    assert effective_number_weights(counts, beta)[3] == 0.0
    np.testing.assert_allclose(effective_number_weights(counts, 0.0)[:3], [1, 1, 1])
    logits, y = _data(k=4)
    y = y.clamp(max=2)
    loss = ClassBalancedLoss(counts, beta)(logits, y, torch.ones(8))
    cw = torch.from_numpy(effective_number_weights(counts, beta))
    torch.testing.assert_close(loss, F.cross_entropy(logits, y, weight=cw))
    torch.testing.assert_close(ClassBalancedLoss(counts, 0.0)(logits, y, torch.ones(8)), F.cross_entropy(logits, y))


def test_inverse_frequency_weights_absent_class_is_zero_not_inf():
    w = inverse_frequency_weights([30, 10, 0])
    np.testing.assert_allclose(w, [40 / 60, 40 / 20, 0.0])
    with pytest.raises(ValueError, match=r"class_counts are all zero; expected at least one class with samples"):
        inverse_frequency_weights([0, 0])
    with pytest.raises(ValueError, match=r"class_counts must be >= 0 for at least 2 classes, got \[3\.0, -1\.0\]"):
        inverse_frequency_weights([3, -1])


@pytest.mark.parametrize("loss", [FocalLoss(2.0), ClassBalancedLoss([5, 5, 5], 0.99)])
@pytest.mark.parametrize("bad", ["zeros", "nan", "negative", "shape"])
def test_baseline_losses_reject_bad_weights(loss, bad):
    logits, y = _data()
    w = {"zeros": torch.zeros(8), "nan": torch.full((8,), float("nan")), "negative": -torch.ones(8),
         "shape": torch.ones(3)}[bad]
    with pytest.raises(ValueError, match=r"ClassBalancedLoss: weights are all zero;|ClassBalancedLoss: weights must be finit|ClassBalancedLoss: weights must have sha|FocalLoss: weights are all zero; expecte|FocalLoss: weights must be finite and >=|FocalLoss: weights must have shape \(8,\),"):
        loss(logits, y, w)


def test_class_balanced_batch_of_only_absent_classes_raises_instead_of_nan():
    loss = ClassBalancedLoss([5, 0, 5], 0.99)
    with pytest.raises(ValueError, match="zero count"):
        loss(torch.randn(2, 3), torch.tensor([1, 1]), torch.ones(2))
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\), got 1\.0"):
        ClassBalancedLoss([5, 5], beta=1.0)
    with pytest.raises(ValueError, match=r"gamma must be >= 0, got -1\.0"):
        FocalLoss(gamma=-1.0)

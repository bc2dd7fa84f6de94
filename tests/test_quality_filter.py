"""Tests for the full sample-quality filter of imutune.quality: out-of-fold +
kNN scoring on a constructed case with flipped labels, the category rule, the
cross-validated weight grid, the meta-learned weights and the bad inputs."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from imutune.personalize import filter as Q
from imutune.personalize.filter import (
    BOUNDARY,
    HIGH_VALUE,
    NOISY,
    QualityConfig,
    categorize,
    category_counts,
    knn_agreement,
    stratified_folds,
)
from imutune.personalize.weights import (
    CategoryWeights,
    FilterConfig,
    class_balance_factors,
    filter_weights,
    learn_weights,
    score_embeddings,
    select_weights,
)
from torch import nn


def _blobs(K=4, D=16, n=50, n_flip=20, seed=0, spread=3.0):
    """Well-separated Gaussian clusters; ``n_flip`` labels flipped to another class on purpose."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(K, D)) * spread
    y_true = np.repeat(np.arange(K), n)
    z = (centers[y_true] + rng.normal(size=(len(y_true), D))).astype(np.float32)
    flip = rng.choice(len(y_true), size=n_flip, replace=False)
    y = y_true.copy()
    y[flip] = (y_true[flip] + rng.integers(1, K, size=n_flip)) % K
    return z, y, y_true, flip


class _MeanModel(nn.Module):
    """Toy pretrained model: embedding = per-channel means and spreads of the window."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = channels
        self.head = nn.Linear(2 * channels, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(2), x.std(2)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def _windows(K=3, n=40, C=3, T=16, n_flip=12, seed=0):
    rng = np.random.default_rng(seed)
    y_true = np.repeat(np.arange(K), n)
    x = rng.normal(size=(len(y_true), C, T)).astype(np.float32)
    x[np.arange(len(y_true)), y_true % C] += 4.0                 # class k lifts channel k
    flip = rng.choice(len(y_true), size=n_flip, replace=False)
    y = y_true.copy()
    y[flip] = (y_true[flip] + 1) % K
    return x, y, flip


# --------------------------------------------------------------------------- scoring

def test_filter_finds_flipped_labels():
    z, y, _, flip = _blobs()
    probs, agreement, cats = score_embeddings(z, y, 4)
    noisy = np.flatnonzero(cats == NOISY)
    caught = np.intersect1d(noisy, flip)
    assert caught.size >= 0.9 * flip.size                         # recall
    assert caught.size >= 0.9 * noisy.size                        # precision
    assert probs.shape == (200, 4) and np.allclose(probs.sum(1), 1)
    assert agreement[flip].max() < 0.5 and np.median(np.delete(agreement, flip)) >= 0.8


def test_oof_probabilities_do_not_see_their_own_window():
    # one flipped window whose label appears nowhere else nearby: in-sample it could be memorized,
    # out-of-fold the fold model never saw it and predicts the cluster's class
    z, y, y_true, flip = _blobs(n_flip=5, seed=3)
    p = Q.oof_probabilities(z, y, 4, n_folds=5)
    assert (p[flip].argmax(1) == y_true[flip]).mean() >= 0.8


def test_knn_agreement_normalizes_rare_classes_and_singletons():
    # cosine similarity: directions matter; class 0 near 0 deg, class 1 near 90 deg, a singleton at 225 deg
    z = np.array([[1, 0], [1, 0.05], [0, 1], [0.05, 1], [0.1, 1], [-0.05, 1], [-1, -1]], np.float32)
    y = np.array([0, 0, 1, 1, 1, 1, 2])
    a = knn_agreement(z, y, k=3)
    # class 0 has 2 windows: its one possible same-class neighbour is the nearest -> 1, not 1/3
    np.testing.assert_allclose(a[:2], 1.0)
    np.testing.assert_allclose(a[2:6], 1.0)
    assert a[6] == 1.0                                            # singleton class: no evidence, documented 1


def test_knn_agreement_rejects_nan():
    z = np.ones((4, 2), np.float32)
    z[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        knn_agreement(z, np.array([0, 0, 1, 1]))


def test_blocked_folds_deal_runs_of_consecutive_windows_within_a_recording():
    from imutune.personalize.filter import blocked_folds

    # class 0: 64 windows in recording 0 then 16 in recording 1; class 1: 8 windows (rare)
    y = np.array([0] * 64 + [0] * 16 + [1] * 8)
    g = np.array([0] * 64 + [1] * 16 + [1] * 8)
    f = blocked_folds(y, g, 4, block_windows=16, seed=0)
    assert f.shape == (88,) and set(f.tolist()) == {0, 1, 2, 3}
    # class 0 has 80 windows -> runs of clip(80 // 8, 1, 16) = 10 consecutive windows, never across recordings
    runs = [f[i:i + 10] for i in range(0, 60, 10)] + [f[60:64]] + [f[64:74], f[74:80]]
    assert all(len(set(r.tolist())) == 1 for r in runs)
    assert len(set(f[:64].tolist())) == 4                          # the long recording spreads over every fold
    # the rare class: runs of clip(8 // 8, 1, 16) = 1 window, dealt over every fold
    assert sorted(np.bincount(f[80:], minlength=4).tolist()) == [2, 2, 2, 2]
    # block_windows=1 is window-by-window dealing, as stratified_folds
    assert np.array_equal(blocked_folds(y, g, 4, block_windows=1, seed=3), stratified_folds(y, 4, seed=3))
    with pytest.raises(ValueError, match="groups has 3 entries and labels 88"):
        blocked_folds(y, g[:3], 4)
    with pytest.raises(ValueError, match="block_windows"):
        blocked_folds(y, g, 4, block_windows=0)
    with pytest.raises(ValueError, match="fewer than n_folds=4"):
        blocked_folds(y[:3], g[:3], 4)


def test_filter_weights_uses_blocked_folds_given_the_recordings(monkeypatch):
    calls = []
    real = Q.blocked_folds

    def spy(*a, **k):
        calls.append(k.get("block_windows"))
        return real(*a, **k)

    monkeypatch.setattr(Q, "blocked_folds", spy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6, 50)).astype(np.float32)
    y = np.repeat([0, 1, 2], 8)
    from imutune.models.resnet1d import create_model

    torch.manual_seed(0)
    model = create_model("tinycnn1d", in_channels=6, num_classes=3)
    cfg = FilterConfig(mode="fixed", oof_epochs=1, n_folds=2, fold_block_windows=4)
    filter_weights(model, x, y, config=cfg)
    assert calls == []                                             # no recordings: per-window folds
    filter_weights(model, x, y, config=cfg, groups=np.zeros(24, np.int64))
    assert calls == [4]
    with pytest.raises(ValueError, match=r"groups has shape \(3,\); expected \(24,\)"):
        filter_weights(model, x, y, config=cfg, groups=np.zeros(3))


def test_stratified_folds_spread_every_class_and_reject_too_few_windows():
    y = np.array([0] * 10 + [1] * 3 + [2])
    f = stratified_folds(y, 5, seed=0)
    for k in (0, 1):
        assert len(set(f[y == k].tolist())) == min(5, (y == k).sum())
    assert np.bincount(f[y == 0], minlength=5).tolist() == [2] * 5
    with pytest.raises(ValueError, match="fewer than n_folds"):
        stratified_folds(np.array([0, 1, 1]), 5)


# --------------------------------------------------------------------------- category rule

def test_categorize_full_rule_table():
    probs = np.array([[0.9, 0.1],    # right, confident, neighbours agree      -> high-value
                      [0.9, 0.1],    # right, confident, neighbours disagree   -> boundary
                      [0.55, 0.45],  # right, small margin                     -> boundary
                      [0.1, 0.9],    # confidently wrong, neighbours disagree  -> noisy
                      [0.1, 0.9],    # confidently wrong, neighbours agree     -> boundary
                      [0.45, 0.55]])  # unconfidently wrong                    -> boundary
    y = np.array([0, 0, 0, 0, 0, 0])
    a = np.array([1.0, 0.2, 1.0, 0.1, 0.9, 0.0])
    cats = categorize(probs, y, agreement=a, config=QualityConfig(min_class_windows=1))
    assert cats.tolist() == [HIGH_VALUE, BOUNDARY, BOUNDARY, NOISY, BOUNDARY, BOUNDARY]


def test_categorize_never_marks_rare_classes_noisy():
    probs = np.array([[0.05, 0.95], [0.05, 0.95], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    y = np.array([1, 0, 0, 0, 0])      # window 0 is the only one of class 1 and looks wrong
    a = np.zeros(5)
    cats = categorize(probs, y, agreement=a, config=QualityConfig(min_class_windows=3))
    assert cats[0] == BOUNDARY          # protected: class 1 has 1 < 3 windows
    assert cats[1] == NOISY             # class 0 has 4 windows: judged normally


def test_categorize_without_agreement_is_the_first_version():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=50)
    y = rng.integers(0, 3, 50)
    cats = categorize(p, y)
    pred = p.argmax(1)
    best_other = np.where(np.eye(3)[y] == 1, -1, p).max(1)
    assert np.all(cats[(pred != y) & (best_other >= 0.6)] == NOISY)
    assert np.all(cats[(pred == y) & (p[np.arange(50), y] - best_other >= 0.2)] == HIGH_VALUE)


@pytest.mark.parametrize("bad", ["nan_probs", "nan_agreement", "agreement_range", "agreement_shape"])
def test_categorize_rejects_bad_scores(bad):
    p = np.full((4, 2), 0.5)
    y = np.array([0, 1, 0, 1])
    a = np.ones(4)
    if bad == "nan_probs":
        p[0] = np.nan
    elif bad == "nan_agreement":
        a[2] = np.nan
    elif bad == "agreement_range":
        a[1] = 1.5
    else:
        a = np.ones(3)
    with pytest.raises(ValueError, match=r"agreement contains 1 NaN/Inf values \(fir|agreement must have shape \(4,\), got \(3,\)|agreement must lie in \[0, 1\]|probs contains 2 NaN/Inf values \(first a"):
        categorize(p, y, agreement=a)


def test_class_balance_factors():
    y = np.array([0] * 10 + [1] * 2 + [2] * 5)
    np.testing.assert_allclose(class_balance_factors(y, 4, 0.0), [1, 1, 1, 1])
    np.testing.assert_allclose(class_balance_factors(y, 4, 1.0), [0.2, 1.0, 0.4, 1.0])   # class 3 absent -> 1
    np.testing.assert_allclose(class_balance_factors(y, 4, 0.5), np.sqrt([0.2, 1.0, 0.4, 1.0]))
    with pytest.raises(ValueError, match=r"class-balance exponent must be finite and >= 0, got nan"):
        class_balance_factors(y, 4, float("nan"))


# --------------------------------------------------------------------------- weight search

def test_select_weights_downweights_flipped_labels():
    z, y, _, _ = _blobs()
    _, _, cats = score_embeddings(z, y, 4)
    cfg = FilterConfig(cv_tolerance=0.0)
    cw, beta, table = select_weights(z, y, cats, 4, config=cfg)
    assert len(table) == len(cfg.weight_grid) * len(cfg.balance_grid)   # no soft factors given: no soft entries
    chosen = [r for r in table if r["chosen"]]
    assert len(chosen) == 1
    best_f1 = max(r["macro_f1"] for r in table if r["valid"])
    assert chosen[0]["macro_f1"] == pytest.approx(best_f1)
    assert beta in cfg.balance_grid
    # with a tolerance the earliest grid entry (least filtering) within it wins
    small = FilterConfig(probe_steps=30, balance_grid=(0.0,))
    cw2, _, table2 = select_weights(z, y, cats, 4, config=replace(small, cv_tolerance=1.0))
    assert table2[0]["chosen"] and cw2 == CategoryWeights(*FilterConfig().weight_grid[0])
    soft = np.linspace(0.2, 1.0, len(y))
    _, _, table3 = select_weights(z, y, cats, 4, config=small, soft=soft)
    assert len(table3) == 2 * len(small.weight_grid) and {r["soft"] for r in table3} == {False, True}


def test_select_weights_penalizes_dropping_clean_windows_marked_noisy():
    # issue 16: the old criterion scored only windows not marked noisy, so zeroing the noisy weight was free.
    # Class 0 has two far-apart clusters; the filter (wrongly) marks all of cluster A noisy. Dropping them
    # leaves no class-0 example near A, so the held-out A windows are lost: the criterion must see that.
    rng = np.random.default_rng(0)
    centers = np.array([[8, 0, 0], [-8, 0, 0], [0, 8, 0], [0, 0, 8]], np.float32)   # A, B (class 0), 1, 2
    z = np.concatenate([c + rng.normal(size=(30, 3)).astype(np.float32) for c in centers])
    y = np.repeat([0, 0, 1, 2], 30)
    cats = np.full(len(y), 0)
    cats[:30] = NOISY
    cfg = FilterConfig(cv_tolerance=0.0, weight_grid=((1.0, 1.0, 0.0), (1.0, 1.0, 1.0)), balance_grid=(0.0,))
    cw, _, table = select_weights(z, y, cats, 3, config=cfg)
    assert cw.noisy == 1.0
    assert table[1]["macro_f1"] > table[0]["macro_f1"]


def test_select_weights_skips_all_zero_entries_and_errors_when_none_valid():
    z, y, _, _ = _blobs(n_flip=0)
    cats = np.full(len(y), NOISY)                          # everything noisy
    cfg = FilterConfig(weight_grid=((1.0, 1.0, 0.0), (1.0, 0.5, 0.5)), balance_grid=(0.0,))
    cw, beta, table = select_weights(z, y, cats, 4, config=cfg)
    assert [r["valid"] for r in table] == [False, True]
    assert cw == CategoryWeights(1.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="no weight grid entry"):
        select_weights(z, y, cats, 4, config=replace(cfg, weight_grid=((1.0, 1.0, 0.0),)))


def test_learned_weights_downweight_noise_and_lower_the_meta_loss():
    z, y, _, flip = _blobs()
    _, _, cats = score_embeddings(z, y, 4)
    cw, beta, per, trace = learn_weights(z, y, cats, 4, config=FilterConfig(mode="learned"))
    assert cw.noisy < 0.5 * cw.high_value
    assert per is None and 0 < beta < 1
    assert trace["meta_loss"][-1] < trace["meta_loss"][0]
    cw2, _, per2, _ = learn_weights(z, y, cats, 4, config=FilterConfig(mode="learned", per_sample=True))
    assert per2.shape == (len(y),) and per2.max() == pytest.approx(1.0)
    assert per2[flip].mean() < 0.5 * np.delete(per2, flip).mean()


def test_filter_config_validation():
    with pytest.raises(ValueError, match=r"mode must be one of \['fixed', 'cv', 'learned'\], got 'magic'"):
        FilterConfig(mode="magic")
    with pytest.raises(ValueError, match=r"boundary must be in \[0\.0, 1\.0\], got 2\.0"):
        FilterConfig(weight_grid=((1.0, 2.0, 0.0),))
    with pytest.raises(ValueError, match=r"class-balance exponents must be finite and >= 0, got -1\.0"):
        FilterConfig(balance_grid=(-1.0,))
    with pytest.raises(ValueError, match=r"n_folds must be an integer >= 2, got 1"):
        FilterConfig(n_folds=1)


# --------------------------------------------------------------------------- end to end on windows

@pytest.mark.parametrize("mode", ["fixed", "cv", "learned"])
def test_filter_weights_on_a_model(mode):
    x, y, flip = _windows()
    torch.manual_seed(0)
    model = _MeanModel(3, 3)
    res = filter_weights(model, x, y, config=FilterConfig(mode=mode, oof="head", cv_tolerance=0.0))
    w = res.sample_weights
    assert w.shape == (len(y),) and w.dtype == np.float32 and np.all(np.isfinite(w)) and w.max() <= 1.0 + 1e-6
    assert np.isin(flip, np.flatnonzero(res.categories == NOISY)).mean() >= 0.8
    if mode != "fixed":
        assert w[flip].mean() < np.delete(w, flip).mean()
    s = res.summary()
    assert set(s["category_counts"]) == {"high_value", "boundary", "noisy"}
    assert s["scoring_seconds"] >= 0 and s["selection_seconds"] >= 0


def test_filter_weights_bad_inputs():
    x, y, _ = _windows()
    model = _MeanModel(3, 3)
    with pytest.raises(ValueError, match="fewer than n_folds"):
        filter_weights(model, x[:3], y[:3])
    xn = x.copy()
    xn[3, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        filter_weights(model, xn, y)
    with pytest.raises(ValueError, match="all sample weights are zero|all zero"):
        filter_weights(model, x, y, config=FilterConfig(mode="fixed", oof="head", fixed_weights=CategoryWeights(0, 0, 0)))

    class _NanEmbed(_MeanModel):
        def embed(self, x):
            return super().embed(x) * float("nan")

    with pytest.raises(ValueError, match="NaN"):
        filter_weights(_NanEmbed(3, 3), x, y)


def test_filter_weights_with_a_class_without_windows():
    x, y, _ = _windows()
    keep = y != 2                                            # class 2 has no target windows
    res = filter_weights(_MeanModel(3, 3), x[keep], y[keep], num_classes=3, config=FilterConfig(oof_epochs=2))
    assert np.all(np.isfinite(res.sample_weights)) and res.sample_weights.max() > 0
    assert res.class_factors.shape == (3,)


def test_finetune_with_filterloss_cv_and_learned():
    from imutune.personalize.finetune import FinetuneConfig, finetune
    from imutune.signal.windows import WindowConfig, Windows
    from imutune.train.loop import TrainConfig
    from imutune.train.pretrain import pretrain

    rng = np.random.default_rng(0)
    x, y, _ = _windows(C=6, T=50, n=20)
    w = Windows(x * 0.1 + rng.normal(size=x.shape).astype(np.float32) * 0.01, y, np.arange(len(y)) % 6,
                np.array(["u"] * len(y)), ("a", "b", "c"), tuple(f"ch{i}" for i in range(6)))
    pre = pretrain(w, model_name="tinycnn1d", window=WindowConfig(window_s=1.0), progress=False,
                   train_config=TrainConfig(epochs=1, batch_size=16))
    for loss in ("filterloss-cv", "filterloss-learned"):
        cfg = FinetuneConfig(train=TrainConfig(epochs=1, batch_size=16), loss=loss,
                             filter=FilterConfig(meta_iterations=3, probe_steps=20, oof_epochs=1, n_folds=2))
        out = finetune(pre, w, config=cfg, progress=False)
        assert out.info["filter_mode"] == loss.split("-")[1]
        assert sum(out.info["category_counts"].values()) == len(y)
        assert out.info["selection_seconds"] >= 0 and np.isfinite(out.info["loss_history"]).all()
    with pytest.raises(ValueError, match=r"loss must be one of \['filterloss', 'filterloss-cv', 'filterloss-learne"):
        FinetuneConfig(loss="filterloss-magic")


def test_category_counts_names():
    assert category_counts(np.array([0, 0, 2])) == {"high_value": 2, "boundary": 0, "noisy": 1}


def test_filter_weights_full_oof_and_label_issues():
    # oof="full" (default): fold models fine-tuned end to end; confident-learning issues join the noisy rule
    x, y, flip = _windows()
    torch.manual_seed(0)
    res = filter_weights(_MeanModel(3, 3), x, y, config=FilterConfig(mode="fixed", oof_epochs=30, oof_lr=0.05))
    assert res.issues is not None and res.issues.shape == y.shape
    assert res.quality_factors.shape == y.shape and 0 <= res.quality_factors.min() <= res.quality_factors.max() <= 1
    noisy = np.flatnonzero(res.categories == NOISY)
    assert np.isin(flip, noisy).mean() >= 0.7 and np.isin(noisy, flip).mean() >= 0.7
    off = filter_weights(_MeanModel(3, 3), x, y, config=FilterConfig(
        mode="fixed", oof_epochs=30, oof_lr=0.05, quality=QualityConfig(label_issues="off")))
    assert off.issues is None


def test_label_issue_rules():
    probs = np.array([[0.45, 0.55], [0.45, 0.55], [0.9, 0.1]])
    y = np.array([0, 0, 0])
    a = np.array([0.1, 0.9, 0.1])
    issues = np.array([True, True, False])
    # not confidently wrong: only the confident-learning issue can make it noisy, and "agree" needs low agreement
    agree = categorize(probs, y, agreement=a, issues=issues, config=QualityConfig(min_class_windows=1))
    union = categorize(probs, y, agreement=a, issues=issues,
                       config=QualityConfig(min_class_windows=1, label_issues="union"))
    off = categorize(probs, y, agreement=a, issues=issues,
                     config=QualityConfig(min_class_windows=1, label_issues="off"))
    assert agree.tolist() == [NOISY, BOUNDARY, BOUNDARY]
    assert union.tolist() == [NOISY, NOISY, BOUNDARY]
    assert off.tolist() == [BOUNDARY, BOUNDARY, BOUNDARY]
    with pytest.raises(ValueError, match="label_issues"):
        QualityConfig(label_issues="maybe")


# --------------------------------------------------------------------------- the source view

def test_categorize_source_veto_protects_windows_the_pretrained_model_backs():
    # all four would be noisy (confidently wrong fold model, low agreement); the pretrained model backs the
    # label of windows 0 and 1 (p >= 0.5: protected -> boundary) but not of 2 and 3
    probs = np.array([[0.1, 0.9]] * 4)
    y = np.zeros(4, dtype=np.int64)
    a = np.zeros(4)
    src = np.array([[0.95, 0.05], [0.5, 0.5], [0.49, 0.51], [0.02, 0.98]])
    cfg = QualityConfig(min_class_windows=1, source_veto=0.5)
    assert categorize(probs, y, agreement=a, config=cfg, source_probs=src).tolist() == \
        [BOUNDARY, BOUNDARY, NOISY, NOISY]
    # off (the default), or without source probabilities: the rule is unchanged
    off = QualityConfig(min_class_windows=1)
    assert categorize(probs, y, agreement=a, config=off, source_probs=src).tolist() == [NOISY] * 4
    assert categorize(probs, y, agreement=a, config=cfg).tolist() == [NOISY] * 4
    # the veto only protects: it never makes a window noisy or high-value
    right = np.array([[0.9, 0.1]] * 4)
    assert categorize(right, y, agreement=np.ones(4), config=cfg, source_probs=src[::-1]).tolist() == \
        [HIGH_VALUE] * 4


def test_categorize_source_probs_errors():
    p = np.full((4, 2), 0.5)
    y = np.array([0, 1, 0, 1])
    a = np.ones(4)
    cfg = QualityConfig(source_veto=0.5)
    with pytest.raises(ValueError, match=r"source_probs must have shape \(4, 2\) like probs, got \(3, 2\)"):
        categorize(p, y, agreement=a, config=cfg, source_probs=np.full((3, 2), 0.5))
    with pytest.raises(ValueError, match="probs must be probabilities"):
        categorize(p, y, agreement=a, config=cfg, source_probs=np.full((4, 2), 2.0))
    with pytest.raises(ValueError, match=r"source_veto must be in \[0.0, 1.0\], got 1.5"):
        QualityConfig(source_veto=1.5)


def test_filter_weights_source_view_uses_the_pretrained_head():
    x, y, flip = _windows()
    torch.manual_seed(0)
    model = _MeanModel(3, 3)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([8.0, 0.0, 0.0]))   # the "pretrained" model says class 0, always
    base = FilterConfig(mode="fixed", oof="head", fixed_soft=True, fixed_weights=CategoryWeights(1.0, 1.0, 0.0))
    off = filter_weights(model, x, y, config=base)
    on = filter_weights(model, x, y, config=replace(base, quality=replace(base.quality, source_veto=0.5),
                                                    source_soft=True))
    # windows labelled 0 are backed by the source (p(0) = e^8 / (e^8 + 2)): never noisy, soft factor at least that
    lab0 = y == 0
    p0 = np.exp(8.0) / (np.exp(8.0) + 2.0)
    assert np.any(off.categories[lab0] == NOISY)
    assert not np.any(on.categories[lab0] == NOISY)
    p_label = np.where(lab0, p0, (1 - p0) / 2)                  # the source's probability of each window's label
    np.testing.assert_allclose(on.quality_factors, np.maximum(off.quality_factors, p_label), rtol=1e-6)
    # the other windows: the source gives their label ~0, so categories and soft factors are the filter's own
    np.testing.assert_array_equal(on.categories[~lab0], off.categories[~lab0])
    np.testing.assert_allclose(on.quality_factors[~lab0], off.quality_factors[~lab0])
    # the source probabilities are the model's own softmax outputs
    from imutune.personalize.weights import _source_probs
    z = Q.embed_windows(model, x, device="cpu")
    sp = _source_probs(z, Q._head_of(model, 3), replace(base, source_soft=True))
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(sp, ref, rtol=1e-5, atol=1e-6)
    assert _source_probs(z, None, replace(base, source_soft=True)) is None   # no head for these classes: off
    assert _source_probs(z, Q._head_of(model, 3), base) is None             # off unless asked for


def test_categorize_source_flag_needs_all_three_views_against_the_label():
    # fold model predicts class 1 without confidence (0.45 < noisy_confidence): not noisy by the fold rule
    probs = np.array([[0.4, 0.45, 0.15]] * 5)
    y = np.zeros(5, dtype=np.int64)
    a = np.array([0.1, 0.1, 0.1, 0.9, 0.1])
    src = np.array([[0.05, 0.9, 0.05],    # source confidently another class, low agreement   -> noisy
                    [0.05, 0.05, 0.9],    # source another class (not the fold model's): still all against
                    [0.35, 0.55, 0.1],    # source another class, but below source_flag          -> boundary
                    [0.05, 0.9, 0.05],    # neighbours agree with the label                       -> boundary
                    [0.9, 0.05, 0.05]])   # source backs the label                                -> boundary
    cfg = QualityConfig(min_class_windows=1, source_flag=0.6)
    assert categorize(probs, y, agreement=a, config=cfg, source_probs=src).tolist() == \
        [NOISY, NOISY, BOUNDARY, BOUNDARY, BOUNDARY]
    # the fold model must disagree with the label too
    right = np.array([[0.5, 0.45, 0.05]] * 5)
    assert NOISY not in categorize(right, y, agreement=a, config=cfg, source_probs=src).tolist()
    # off by default
    assert NOISY not in categorize(probs, y, agreement=a, config=QualityConfig(min_class_windows=1),
                                   source_probs=src).tolist()
    with pytest.raises(ValueError, match=r"source_flag must be in \[0.0, 1.0\], got -0.1"):
        QualityConfig(source_flag=-0.1)


def _says(classes, k=3, p=0.9):
    """Probabilities (N, k) that put ``p`` on each window's class of ``classes``."""
    out = np.full((len(classes), k), (1 - p) / (k - 1))
    out[np.arange(len(classes)), classes] = p
    return out


def test_change_point_flags_moves_a_late_change_to_where_the_model_puts_it():
    # the user tapped "1" three windows late: windows 7-9 are labelled 0 but look like class 1
    y = np.array([0] * 10 + [1] * 10)
    truth = np.array([0] * 7 + [1] * 13)
    flags = Q.change_point_flags(y, _says(truth), np.zeros(20, int))
    assert np.flatnonzero(flags).tolist() == [7, 8, 9]
    early = np.array([0] * 12 + [1] * 8)                     # tapped two windows early: 10 and 11 flagged
    assert np.flatnonzero(Q.change_point_flags(y, _says(early), np.zeros(20, int))).tolist() == [10, 11]
    # the model agrees with the user, or has no opinion (ties): the user's change stays, nothing flagged
    assert not Q.change_point_flags(y, _says(y), np.zeros(20, int)).any()
    assert not Q.change_point_flags(y, np.full((20, 3), 1 / 3), np.zeros(20, int)).any()


def test_change_point_flags_limits_runs_groups_and_lone_labels():
    # a change moves at most into the inner half of each run, so a run never vanishes
    y = np.array([0] * 4 + [1] * 4)
    assert np.flatnonzero(Q.change_point_flags(y, _says(np.ones(8, int)), np.zeros(8, int))).tolist() == [2, 3]
    # a lone label (a run of one window) cannot be moved over, and neither can its neighbours here
    lone = np.array([0] * 5 + [2] + [0] * 5)
    assert not Q.change_point_flags(lone, _says(np.zeros(11, int)), np.zeros(11, int)).any()
    # changes are searched within a recording only: the same labels split into two recordings at the change
    y2 = np.array([0] * 10 + [1] * 10)
    truth = np.array([0] * 7 + [1] * 13)
    g = np.array([0] * 10 + [1] * 10)
    assert not Q.change_point_flags(y2, _says(truth), g).any()
    # the order within a recording is the time order, wherever its windows sit: two interleaved recordings,
    # the first (even positions) labelled 3 windows late, the second (odd positions) labelled right
    yi, ti, gi = np.empty(40, int), np.empty(40, int), np.tile([0, 1], 20)
    yi[0::2], yi[1::2] = y2, truth
    ti[0::2], ti[1::2] = truth, truth
    assert np.flatnonzero(Q.change_point_flags(yi, _says(ti), gi)).tolist() == [14, 16, 18]
    with pytest.raises(ValueError, match=r"groups must have shape \(8,\), one recording index per window, got \(7,\)"):
        Q.change_point_flags(y, _says(y), np.zeros(7, int))
    with pytest.raises(ValueError, match="probs must be probabilities"):
        Q.change_point_flags(y, np.full((8, 3), 0.5), np.zeros(8, int))
    with pytest.raises(ValueError, match=r"change_points must be True, False or None \(the loss decides\), got 'yes'"):
        QualityConfig(change_points="yes")


def test_categorize_change_points_marks_moved_windows_noisy_under_the_veto():
    y = np.array([0] * 10 + [1] * 10)
    truth = np.array([0] * 7 + [1] * 13)
    probs = _says(y, p=0.6)                                   # the fold model learned the user's labels
    a = np.ones(20)
    src = _says(truth)
    g = np.zeros(20, int)
    cfg = QualityConfig(change_points=True)
    cats = categorize(probs, y, agreement=a, config=cfg, source_probs=src, groups=g)
    assert np.flatnonzero(cats == NOISY).tolist() == [7, 8, 9]
    # off by default, and without the windows' order (no groups) or the source probabilities
    assert NOISY not in categorize(probs, y, agreement=a, config=QualityConfig(), source_probs=src, groups=g)
    assert NOISY not in categorize(probs, y, agreement=a, config=cfg, source_probs=src)
    assert NOISY not in categorize(probs, y, agreement=a, config=cfg, groups=g)
    # the source veto still protects: window 9's label gets p_source 0.55 >= 0.5, so only 7 and 8 are noisy
    src9 = src.copy()
    src9[9] = [0.55, 0.45, 0.0]
    cats = categorize(probs, y, agreement=a, config=replace(cfg, source_veto=0.5), source_probs=src9, groups=g)
    assert np.flatnonzero(cats == NOISY).tolist() == [7, 8]

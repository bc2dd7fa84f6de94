"""Regression tests for the four FilterLoss-path defects of issue 16 (each failed before the fix)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from imutune.personalize.filter import NOISY, QualityConfig
from imutune.personalize.finetune import FinetuneConfig, finetune
from imutune.personalize.weights import FilterConfig, filter_weights
from imutune.signal.windows import WindowConfig, Windows
from imutune.train.loop import TrainConfig
from imutune.train.pretrain import pretrain

CH = tuple(f"ch{i}" for i in range(3))


def _windows(n=30, flip=0.2, seed=0, class_names=("a", "b", "c")):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n)
    x = rng.normal(size=(len(y), 3, 25)).astype(np.float32)
    x[np.arange(len(y)), y] += 3.0
    yn = y.copy()
    idx = rng.choice(len(y), size=int(flip * len(y)), replace=False)
    yn[idx] = (y[idx] + 1) % 3
    return Windows(x, yn, np.arange(len(y)) % 5, np.array(["u"] * len(y)), tuple(class_names), CH)


@pytest.fixture(scope="module")
def bundle():
    return pretrain(_windows(n=40, flip=0.0, seed=1), model_name="tinycnn1d", window=WindowConfig(window_s=0.5),
                    progress=False, train_config=TrainConfig(epochs=10, batch_size=32, lr=1e-2, seed=0))


FAST = TrainConfig(epochs=1, batch_size=16, lr=1e-3)
# no rule can fire: confidence, agreement, label issues off, and no re-placed activity change (change_points)
NEVER_NOISY = QualityConfig(noisy_confidence=1.0, agreement_noisy=0.0, label_issues="off", change_points=False)


@pytest.mark.parametrize("loss", ["filterloss", "filterloss-cv", "filterloss-learned", "filterloss-soft"])
def test_custom_filter_thresholds_reach_the_filter(bundle, loss):
    # defect 1: finetune() overwrote FilterConfig.quality with FinetuneConfig's defaults, so thresholds under
    # which no window can be noisy still gave noisy windows
    w = _windows()
    fc = FilterConfig(quality=NEVER_NOISY, oof="head", probe_steps=20, meta_iterations=2)
    out = finetune(bundle, w, config=FinetuneConfig(train=FAST, loss=loss, filter=fc), progress=False)
    assert out.info["category_counts"]["noisy"] == 0
    direct = filter_weights(bundle.model, bundle.normalizer(w.x), w.y, config=replace(fc, mode="fixed"))
    assert int((direct.categories == NOISY).sum()) == 0
    # the baselines entry point forwards them too
    from imutune.personalize.baselines import run_method

    b = run_method(loss.replace("-", "_"), bundle, w, FAST, filter_config=fc)
    assert b.info["category_counts"]["noisy"] == 0
    # an explicit FinetuneConfig.quality overrides for every variant (and is not silently dropped)
    out2 = finetune(bundle, w, config=FinetuneConfig(train=FAST, loss=loss, quality=NEVER_NOISY,
                                                     filter=replace(fc, quality=QualityConfig())), progress=False)
    assert out2.info["category_counts"]["noisy"] == 0


def test_first_version_does_not_judge_with_the_shifted_pretrained_model(bundle):
    # defect 3: the first-version filter judged with the pretrained model, so a user shift marked clean windows
    # noisy. Here the user's class names are the source's in another order: the pretrained head is confidently
    # wrong on every clean window, but its features still separate the classes (before the fix: all 90 noisy).
    w = _windows(flip=0.0, class_names=("b", "c", "a"))
    w = Windows(w.x, w.y, w.recording, w.users, ("a", "b", "c"), w.channels)
    shifted = Windows(w.x, (w.y + 1) % 3, w.recording, w.users, w.class_names, w.channels)
    out = finetune(bundle, shifted, config=FinetuneConfig(train=FAST, loss="filterloss"), progress=False)
    assert out.info["category_counts"]["noisy"] <= 0.1 * len(shifted)


def test_head_only_scoring_is_gone_new_class_set_gets_the_same_budget(bundle, monkeypatch):
    # defect 4: for a new class set the first-version path trained the head in train mode (moving the frozen
    # backbone's BatchNorm running statistics) for extra epochs before the real fine-tune
    import imutune.personalize.finetune as FT

    calls = []
    real = FT.train

    def spy(model, x, y, *, config, **kw):
        bn = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        calls.append((config.epochs, [b.running_mean.clone() for b in bn]))
        return real(model, x, y, config=config, **kw)

    monkeypatch.setattr(FT, "train", spy)
    w = _windows(class_names=("w", "x", "y"))                    # a new class set: the head is replaced
    out = finetune(bundle, w, config=FinetuneConfig(train=FAST, loss="filterloss"), progress=False)
    assert out.info["head_replaced"] is True
    assert [c[0] for c in calls] == [FAST.epochs]                 # one training run, the budget's epochs
    orig = [b.running_mean for b in bundle.model.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]
    for a, b in zip(calls[0][1], orig):                           # BatchNorm statistics untouched before it
        assert torch.equal(a, b)


def test_cv_criterion_counts_windows_marked_noisy():
    # defect 2: see tests/test_quality_filter.py::test_select_weights_penalizes_dropping_clean_windows_marked_noisy;
    # here end to end: on clean, well-separated data the CV never zeroes the noisy weight for free
    from imutune.personalize.weights import select_weights

    rng = np.random.default_rng(0)
    centers = np.array([[8, 0, 0], [-8, 0, 0], [0, 8, 0], [0, 0, 8]], np.float32)
    z = np.concatenate([c + rng.normal(size=(30, 3)).astype(np.float32) for c in centers])
    y = np.repeat([0, 0, 1, 2], 30)
    cats = np.zeros(len(y), int)
    cats[:30] = NOISY
    _, _, table = select_weights(z, y, cats, 3, config=FilterConfig(cv_tolerance=0.0))
    zero_noisy = [r["macro_f1"] for r in table if r["weights"]["noisy"] == 0.0]
    keep_noisy = [r["macro_f1"] for r in table if r["weights"]["noisy"] > 0.0]
    assert max(keep_noisy) > max(zero_noisy)
    assert next(r for r in table if r["chosen"])["weights"]["noisy"] > 0.0


@pytest.mark.parametrize("loss", ["filterloss-soft", "filterloss-cv"])
def test_source_view_is_filterloss_softs_and_off_for_a_new_class_set(bundle, monkeypatch, loss):
    # filterloss-soft runs the filter with the source view (SOFT_SOURCE_VETO, source soft factor); the other
    # variants do not; a replaced head is random, so the pretrained model has no view of the new classes
    import imutune.personalize.weights as W

    seen = []
    orig = W.filter_weights

    def spy(*a, **kw):
        seen.append(kw["config"])
        return orig(*a, **kw)

    monkeypatch.setattr(W, "filter_weights", spy)
    fc = FilterConfig(oof="head", probe_steps=20, meta_iterations=2)
    finetune(bundle, _windows(), config=FinetuneConfig(train=FAST, loss=loss, filter=fc), progress=False)
    finetune(bundle, _windows(class_names=("x", "y", "z")), config=FinetuneConfig(train=FAST, loss=loss, filter=fc),
             progress=False)
    same, new = seen
    soft = loss == "filterloss-soft"
    assert same.quality.source_veto == (W.SOFT_SOURCE_VETO if soft else None) and same.source_soft is soft
    assert same.quality.source_flag == (W.SOFT_SOURCE_FLAG if soft else None)
    assert same.quality.change_points is (True if soft else None)
    assert new.quality.source_veto is None and new.quality.source_flag is None and new.source_soft is False
    assert new.quality.change_points is None
    # a source_veto the user sets is kept
    seen.clear()
    finetune(bundle, _windows(), config=FinetuneConfig(train=FAST, loss=loss, quality=QualityConfig(source_veto=0.9),
                                                       filter=fc), progress=False)
    assert seen[0].quality.source_veto == 0.9
    seen.clear()                                      # and so is change_points=False
    finetune(bundle, _windows(), config=FinetuneConfig(train=FAST, loss=loss, quality=QualityConfig(change_points=False),
                                                       filter=fc), progress=False)
    assert seen[0].quality.change_points is False

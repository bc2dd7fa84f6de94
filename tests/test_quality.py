"""Tests for imutune.quality: the sample-quality filter and its FilterLoss weights."""
from __future__ import annotations

import numpy as np
import pytest
from imutune.personalize.filter import (
    BOUNDARY,
    CATEGORY_NAMES,
    HIGH_VALUE,
    NOISY,
    QualityConfig,
    categorize,
    category_counts,
)
from imutune.personalize.weights import CategoryWeights, sample_weights


def test_category_constants():
    assert (HIGH_VALUE, BOUNDARY, NOISY) == (0, 1, 2)
    assert CATEGORY_NAMES == ("high_value", "boundary", "noisy")


def test_categorize_hand_made():
    probs = np.array([
        [0.90, 0.05, 0.05],   # label 0, confident correct            -> high value
        [0.05, 0.90, 0.05],   # label 0, confidently wrong (0.9 >= 0.6) -> noisy
        [0.45, 0.40, 0.15],   # label 0, correct but margin 0.05 < 0.2 -> boundary
        [0.40, 0.45, 0.15],   # label 0, wrong but only 0.45 confident  -> boundary
        [0.30, 0.10, 0.60],   # label 1, wrong at exactly 0.6          -> noisy
        [0.20, 0.60, 0.20],   # label 1, correct, margin exactly 0.4   -> high value
        [0.10, 0.50, 0.40],   # label 2, wrong, 0.5 < 0.6              -> boundary
    ])
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    cats = categorize(probs, labels)
    assert cats.dtype == np.int64
    assert cats.tolist() == [HIGH_VALUE, NOISY, BOUNDARY, BOUNDARY, NOISY, HIGH_VALUE, BOUNDARY]


def test_categorize_thresholds_move_categories():
    probs = np.array([[0.55, 0.45], [0.3, 0.7]])
    labels = np.array([0, 0])
    assert categorize(probs, labels).tolist() == [BOUNDARY, NOISY]             # margin 0.1 < 0.2; 0.7 >= 0.6
    cfg = QualityConfig(boundary_margin=0.1, noisy_confidence=0.75)
    assert categorize(probs, labels, config=cfg).tolist() == [HIGH_VALUE, BOUNDARY]
    # margin 0 makes every correct prediction high value
    assert categorize(np.array([[0.5, 0.5]]), np.array([0]),
                      config=QualityConfig(boundary_margin=0.0)).tolist() == [HIGH_VALUE]


def test_flipped_labels_are_noisy():
    """A logistic model fitted on well separated blobs with 10% flipped labels still predicts the
    true class confidently, so exactly the flipped windows are confidently wrong."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    k, n_per = 3, 40
    centers = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    y_true = np.repeat(np.arange(k), n_per)
    x = centers[y_true] + rng.normal(scale=1.0, size=(k * n_per, 2))
    flipped = rng.choice(len(y_true), size=12, replace=False)
    y_noisy = y_true.copy()
    y_noisy[flipped] = (y_true[flipped] + rng.integers(1, k, size=12)) % k
    assert np.all(y_noisy[flipped] != y_true[flipped])
    probs = LogisticRegression(C=1.0, max_iter=1000).fit(x, y_noisy).predict_proba(x)
    cats = categorize(probs, y_noisy)
    assert set(np.flatnonzero(cats == NOISY).tolist()) == set(flipped.tolist())
    clean = np.setdiff1d(np.arange(len(y_true)), flipped)
    assert np.mean(cats[clean] == HIGH_VALUE) >= 0.9
    assert category_counts(cats)["noisy"] == 12
    w = sample_weights(cats)
    np.testing.assert_array_equal(w[flipped], np.float32(0.1))


def test_sample_weights_mapping():
    cats = np.array([HIGH_VALUE, BOUNDARY, NOISY, NOISY, HIGH_VALUE])
    w = sample_weights(cats)
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, np.array([1.0, 0.5, 0.1, 0.1, 1.0], np.float32))
    w2 = sample_weights(cats, CategoryWeights(high_value=0.9, boundary=0.0, noisy=0.0))
    np.testing.assert_array_equal(w2, np.array([0.9, 0, 0, 0, 0.9], np.float32))
    assert sample_weights(np.zeros(0, np.int64)).shape == (0,)


def test_category_weights_as_array():
    np.testing.assert_array_equal(CategoryWeights(0.7, 0.3, 0.05).as_array(), np.array([0.7, 0.3, 0.05], np.float32))


def test_category_counts():
    assert category_counts(np.array([0, 2, 2, 1, 2])) == {"high_value": 1, "boundary": 1, "noisy": 3}
    assert category_counts(np.zeros(0)) == {"high_value": 0, "boundary": 0, "noisy": 0}


# --------------------------------------------------------------------------- errors

def test_sample_weights_all_zero():
    cats = np.array([NOISY, BOUNDARY])
    with pytest.raises(ValueError, match=r"all sample weights are zero with CategoryWeights"):
        sample_weights(cats, CategoryWeights(high_value=1.0, boundary=0.0, noisy=0.0))


@pytest.mark.parametrize("bad", [[0, 3], [-1, 0]])
def test_sample_weights_bad_category(bad):
    with pytest.raises(ValueError, match=r"categories must be in \{0, 1, 2\}, got values in"):
        sample_weights(np.array(bad))


def test_probs_not_summing_to_one():
    with pytest.raises(ValueError, match=r"probs must be probabilities \(rows >= 0 summing to 1\); apply softmax"):
        categorize(np.array([[0.5, 0.6], [0.5, 0.5]]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"probs must be probabilities"):
        categorize(np.array([[2.0, -1.0]]), np.array([0]))          # sums to 1 but negative
    with pytest.raises(ValueError, match=r"apply softmax to logits first"):
        categorize(np.array([[3.2, -0.7, 1.1]]), np.array([0]))     # raw logits


def test_probs_nan():
    with pytest.raises(ValueError, match=r"probs contains 1 NaN/Inf values \(first at index \(1, 0\)\)"):
        categorize(np.array([[0.5, 0.5], [np.nan, 0.5]]), np.array([0, 1]))


def test_probs_shape():
    with pytest.raises(ValueError, match=r"probs must have shape \(N, K\) with N > 0, got \(3,\)"):
        categorize(np.array([0.2, 0.3, 0.5]), np.array([0]))
    with pytest.raises(ValueError, match=r"got \(0, 3\)"):
        categorize(np.zeros((0, 3)), np.zeros(0, np.int64))


@pytest.mark.parametrize("bad", [[0, 2], [0, -1]])
def test_labels_out_of_range(bad):
    with pytest.raises(ValueError, match=r"labels has values \[-?\d\] outside the class list; expected integers in \[0, 1\]"):
        categorize(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array(bad))


def test_labels_length_mismatch():
    with pytest.raises(ValueError, match=r"labels has 3 entries and probs 2 rows; expected equal"):
        categorize(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([0, 1, 1]))


@pytest.mark.parametrize("field", ["boundary_margin", "noisy_confidence"])
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_quality_config_out_of_range(field, bad):
    with pytest.raises(ValueError, match=rf"{field} must be in \[0.0, 1.0\]"):
        QualityConfig(**{field: bad})


@pytest.mark.parametrize("field", ["high_value", "boundary", "noisy"])
@pytest.mark.parametrize("bad", [-0.5, 2.0])
def test_category_weights_out_of_range(field, bad):
    with pytest.raises(ValueError, match=rf"{field} must be in \[0.0, 1.0\], got {bad}"):
        CategoryWeights(**{field: bad})


def test_quality_module_reexports_the_new_homes():
    # personalize/quality.py was split into filter.py (scoring) and weights.py (weights); old imports still work
    from imutune.personalize import filter as F
    from imutune.personalize import quality as Q
    from imutune.personalize import weights as W

    for name in Q.__all__:
        assert getattr(Q, name) is (getattr(F, name) if hasattr(F, name) else getattr(W, name)), name

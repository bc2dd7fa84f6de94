"""Tests for imutune.metrics: accuracy, macro-F1 (checked against scikit-learn), confusion matrix, latency."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imutune.metrics import (
    accuracy,
    confusion_matrix,
    latency_summary,
    macro_f1,
    restore_ratio,
)
from sklearn.metrics import f1_score


def test_accuracy_exact():
    assert accuracy([0, 1, 2, 1], [0, 2, 2, 1]) == 0.75
    assert accuracy(np.array([3]), np.array([3])) == 1.0
    assert accuracy([0, 0], [1, 1]) == 0.0
    assert isinstance(accuracy([0], [0]), float)


def test_confusion_matrix_exact():
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 4)
    assert cm.dtype == np.int64
    assert cm.tolist() == [[1, 1, 0, 0],
                           [0, 1, 0, 0],
                           [1, 0, 2, 0],
                           [0, 0, 0, 0]]


def test_macro_f1_hand_computed():
    # class 0: tp 1, support 2, predicted 2 -> 0.5; class 1: tp 2, support 2, predicted 3 -> 0.8; class 2: 0
    assert macro_f1([0, 0, 1, 1, 2], [0, 1, 1, 1, 0]) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_macro_f1_absent_true_class_left_out():
    # class 1 is predicted but never true: it is not part of the mean
    assert macro_f1([0, 0], [0, 1]) == pytest.approx(2 / 3)
    assert macro_f1([0, 0], [0, 1], num_classes=5) == pytest.approx(2 / 3)
    assert macro_f1([0, 1, 2], [0, 1, 2]) == 1.0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5).flatmap(lambda k: st.tuples(
    st.just(k),
    st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=25))))
def test_macro_f1_matches_sklearn(case):
    k, pairs = case
    t = np.array([a for a, _ in pairs])
    p = np.array([b for _, b in pairs])
    expected = f1_score(t, p, average="macro", labels=np.unique(t), zero_division=0)
    assert macro_f1(t, p) == pytest.approx(expected, abs=1e-12)
    assert macro_f1(t, p, num_classes=k) == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= macro_f1(t, p) <= 1.0
    assert accuracy(t, p) == pytest.approx(np.mean(t == p))
    cm = confusion_matrix(t, p, k)
    assert cm.sum() == len(t) and np.trace(cm) == int((t == p).sum())


def test_latency_summary_exact():
    s = latency_summary([4.0, 1.0, 3.0, 2.0])
    assert s == {"p50": 2.5, "p95": pytest.approx(3.85), "p99": pytest.approx(3.97), "max": 4.0, "mean": 2.5, "n": 4}
    assert latency_summary([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0, "max": 7.0, "mean": 7.0, "n": 1}
    s = latency_summary(np.arange(1, 101, dtype=float))
    assert s["p50"] == 50.5 and s["p99"] == pytest.approx(99.01) and s["n"] == 100


def test_restore_ratio():
    assert restore_ratio(0.8, 0.9) == pytest.approx(0.8 / 0.9)
    assert restore_ratio(0.9234, 1.0) == pytest.approx(0.9234)
    assert restore_ratio(0.95, 0.9) > 1.0


# --------------------------------------------------------------------------- errors

def test_length_mismatch_and_empty():
    for fn in (accuracy, macro_f1):
        with pytest.raises(ValueError, match=r"y_true has 3 labels and y_pred 2; expected the same length"):
            fn([0, 1, 1], [0, 1])
        with pytest.raises(ValueError, match=r"y_true is empty; expected at least one label"):
            fn([], [])
    with pytest.raises(ValueError, match=r"y_true has 1 labels and y_pred 2"):
        confusion_matrix([0], [0, 1], 2)


def test_confusion_matrix_out_of_range():
    with pytest.raises(ValueError, match=r"y_pred has values in \[0, 3\]; expected \[0, 2\]"):
        confusion_matrix([0, 1], [0, 3], 3)
    with pytest.raises(ValueError, match=r"y_true has values in \[-1, 1\]; expected \[0, 2\]"):
        confusion_matrix([-1, 1], [0, 1], 3)
    with pytest.raises(ValueError, match=r"y_true has values in \[0, 4\]; expected \[0, 2\]"):
        macro_f1([0, 4], [0, 1], num_classes=3)


def test_latency_summary_empty():
    with pytest.raises(ValueError, match=r"latencies_ms is empty; expected at least one measurement"):
        latency_summary([])


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan")])
def test_restore_ratio_bad_source(bad):
    with pytest.raises(ValueError, match=r"source_accuracy must be > 0, got"):
        restore_ratio(0.8, bad)

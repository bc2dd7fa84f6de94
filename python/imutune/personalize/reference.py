"""An honest classical reference: RandomForest and logistic regression on per-window statistics.

Every personalization report puts the deep model's macro-F1 beside what a
classical pipeline reaches on the *same* calibration windows: hand-crafted
per-channel statistics (the features of the activity-recognition
literature, e.g. Bulling, Blanke and Schiele, "A tutorial on human activity
recognition using body-worn inertial sensors", ACM Comput. Surv. 2014,
Sec. 4.2; Figo et al., "Preprocessing techniques for context recognition from
accelerometer data", Pers. Ubiquit. Comput. 2010) fed to scikit-learn's
``RandomForestClassifier`` (Breiman 2001) and ``LogisticRegression``.
The statistics are computed on the raw windows in the contract's physical
units (the forest is scale-free; the logistic regression standardizes them
with statistics of the training windows only).

13 statistics per channel (:data:`STATISTICS`), so a (N, C, T) batch gives
(N, 13 C) features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..metrics import accuracy, macro_f1
from ..signal.windows import Windows

__all__ = ["STATISTICS", "ReferenceConfig", "ClassicalReference", "window_statistics", "fit_reference", "reference_score",
           "reference_report", "reference_markdown", "REFERENCE_METHODS"]

#: The per-channel statistics, in feature order (13 per channel).
STATISTICS = ("mean", "std", "min", "max", "p10", "p25", "median", "p75", "p90", "energy", "mean_crossing_rate",
              "mean_abs_diff", "skewness")
#: Classical methods the reference fits.
REFERENCE_METHODS = ("random_forest", "logistic_regression")


@dataclass(frozen=True)
class ReferenceConfig:
    """How the classical reference is fitted.

    Attributes
    ----------
    methods : tuple of str
        Among :data:`REFERENCE_METHODS`.
    n_estimators : int
        Trees of the random forest.
    logreg_c : float
        Inverse L2 strength of the logistic regression (scikit-learn ``C``).
    seed : int
        ``random_state`` of both estimators.
    """

    methods: tuple[str, ...] = REFERENCE_METHODS
    n_estimators: int = 200
    logreg_c: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        methods = tuple(self.methods)
        bad = [m for m in methods if m not in REFERENCE_METHODS]
        if not methods or bad:
            raise ValueError(f"ReferenceConfig.methods has {list(methods)}; expected a non-empty subset of "
                             f"{list(REFERENCE_METHODS)}")
        object.__setattr__(self, "methods", methods)
        if isinstance(self.n_estimators, bool) or not isinstance(self.n_estimators, int) or self.n_estimators < 1:
            raise ValueError(f"ReferenceConfig.n_estimators must be an int >= 1, got {self.n_estimators!r}")
        if not (isinstance(self.logreg_c, (int, float)) and np.isfinite(self.logreg_c) and self.logreg_c > 0):
            raise ValueError(f"ReferenceConfig.logreg_c must be a positive number, got {self.logreg_c!r}")


def window_statistics(x: np.ndarray) -> np.ndarray:
    """Per-channel statistics of windows.

    Parameters
    ----------
    x : np.ndarray
        Array of shape (N, C, T), real, T >= 2.

    Returns
    -------
    np.ndarray
        Array of shape (N, 13 C), float32: for channel c the 13 values of
        :data:`STATISTICS` at columns ``13 c .. 13 c + 12``. ``energy`` is the
        mean square; ``mean_crossing_rate`` the fraction of consecutive
        sample pairs that cross the window mean (zero crossings of the
        mean-removed signal); ``mean_abs_diff`` the mean absolute first
        difference; ``skewness`` the third standardized moment (0 for a
        constant channel).

    Raises
    ------
    ValueError
        If ``x`` is not a real (N, C, T) array with N >= 1, T >= 2, or holds NaN/Inf.
    """
    a = np.asarray(x)
    if a.ndim != 3 or a.shape[0] < 1 or a.shape[2] < 2 or a.dtype.kind not in "fiu":
        raise ValueError(f"x must be a real array of shape (N, C, T) with N >= 1 and T >= 2, got dtype {a.dtype} "
                         f"of shape {a.shape}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("x holds NaN or Inf; expected finite sensor values")
    return _compute_statistics(a)


def _compute_statistics(a: np.ndarray) -> np.ndarray:
    mean = a.mean(axis=2)                                             # (N, C)
    std = a.std(axis=2)
    pct = np.percentile(a, [10, 25, 50, 75, 90], axis=2)              # (5, N, C)
    centred = a - mean[:, :, None]
    energy = (a ** 2).mean(axis=2)
    sign = np.signbit(centred)
    crossings = (sign[:, :, 1:] != sign[:, :, :-1]).mean(axis=2)
    mad = np.abs(np.diff(a, axis=2)).mean(axis=2)
    safe = np.where(std > 1e-12, std, 1.0)
    skew = np.where(std > 1e-12, (centred ** 3).mean(axis=2) / safe ** 3, 0.0)
    feats = np.stack([mean, std, a.min(axis=2), a.max(axis=2), *pct, energy, crossings, mad, skew],
                     axis=2)                                          # (N, C, 13)
    return feats.reshape(a.shape[0], -1).astype(np.float32)           # (N, C, 13) -> (N, 13 C)


class ClassicalReference:
    """Fitted classical classifiers on :func:`window_statistics` (see :func:`fit_reference`)."""

    def __init__(self, estimators: dict[str, Any], class_names: tuple[str, ...], channels: tuple[str, ...]) -> None:
        self.estimators = estimators
        self.class_names = class_names
        self.channels = channels

    def predict(self, windows: Windows) -> dict[str, np.ndarray]:
        """Predicted class index per window, per method: arrays of shape (N,), int64.

        Raises
        ------
        ValueError
            If the windows' channels differ from the training windows'.
        """
        if tuple(windows.channels) != self.channels:
            raise ValueError(f"windows have channels {list(windows.channels)}; the reference was fitted on "
                             f"{list(self.channels)}")
        f = window_statistics(windows.x)
        return {m: np.asarray(est.predict(f), dtype=np.int64) for m, est in self.estimators.items()}

    def evaluate(self, windows: Windows) -> dict[str, dict[str, float]]:
        """``{method: {"accuracy", "macro_f1"}}`` on ``windows`` (labelled against the training class list)."""
        w = windows.relabel(self.class_names, what="reference test windows")
        return {m: {"accuracy": accuracy(w.y, p), "macro_f1": macro_f1(w.y, p, len(self.class_names))}
                for m, p in self.predict(w).items()}


def fit_reference(train: Windows, *, config: ReferenceConfig = ReferenceConfig()) -> ClassicalReference:
    """Fit the classical reference on labelled windows.

    Parameters
    ----------
    train : Windows
        The calibration windows, x of shape (N, C, T) in physical units.
    config : ReferenceConfig

    Returns
    -------
    ClassicalReference

    Raises
    ------
    ValueError
        If ``train`` is empty or has fewer than 2 classes present.
    """
    if not isinstance(train, Windows):
        raise ValueError(f"train must be imutune Windows, got {type(train).__name__}")
    if len(train) == 0 or np.unique(train.y).size < 2:
        raise ValueError(f"train has {len(train)} windows of {np.unique(train.y).size} classes; the classical "
                         "reference needs at least 2 classes present")
    return _compute_fit(train, config)


def reference_score(train: Windows, test: Windows, *, method: str = "random_forest", seed: int = 0
                    ) -> dict[str, float]:
    """Fit one classical reference on ``train`` and score it on ``test``: ``{"accuracy", "macro_f1"}``.

    The reference every benchmark and the fleet put beside the personalized model: ``method`` (one of
    :data:`REFERENCE_METHODS`) on :func:`window_statistics` of the same calibration windows and labels.

    Raises
    ------
    ValueError
        As :func:`fit_reference` and :meth:`ClassicalReference.evaluate`, or for an unknown ``method``.
    """
    return fit_reference(train, config=ReferenceConfig(methods=(method,), seed=seed)).evaluate(test)[method]


def _compute_fit(train: Windows, config: ReferenceConfig) -> ClassicalReference:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f = window_statistics(train.x)
    est: dict[str, Any] = {}
    if "random_forest" in config.methods:
        est["random_forest"] = RandomForestClassifier(n_estimators=config.n_estimators, random_state=config.seed,
                                                      n_jobs=1).fit(f, train.y)
    if "logistic_regression" in config.methods:
        est["logistic_regression"] = make_pipeline(
            StandardScaler(), LogisticRegression(C=config.logreg_c, max_iter=2000, random_state=config.seed)
        ).fit(f, train.y)
    return ClassicalReference(est, tuple(train.class_names), tuple(train.channels))


def reference_report(train: Windows, test: Windows, *, model_macro_f1: float | None = None,
                     config: ReferenceConfig = ReferenceConfig()) -> dict[str, Any]:
    """The classical reference beside the personalized model, as a JSON-ready dict.

    Parameters
    ----------
    train : Windows
        The calibration windows the personalized model was fine-tuned on.
    test : Windows
        Held-out windows (classes matched by name to ``train``'s).
    model_macro_f1 : float, optional
        The personalized model's macro-F1 on ``test``.
    config : ReferenceConfig

    Returns
    -------
    dict
        ``{"features": "13 statistics per channel (...)", "n_train", "n_test",
        "methods": {method: {"accuracy", "macro_f1"}}, "model_macro_f1",
        "model_minus_reference": {method: model - method macro-F1} (when
        ``model_macro_f1`` is given), "best_reference", "verdict"}``.

    Raises
    ------
    ValueError
        As :func:`fit_reference`, or if ``test`` has a class outside ``train``'s list.
    """
    ref = fit_reference(train, config=config)
    scores = ref.evaluate(test)
    best = max(scores, key=lambda m: scores[m]["macro_f1"])
    out: dict[str, Any] = {"features": f"{len(STATISTICS)} statistics per channel ({', '.join(STATISTICS)})",
                           "n_train": len(train), "n_test": len(test), "methods": scores,
                           "best_reference": best, "model_macro_f1": model_macro_f1}
    if model_macro_f1 is not None:
        diff = {m: float(model_macro_f1) - s["macro_f1"] for m, s in scores.items()}
        out["model_minus_reference"] = diff
        d = diff[best]
        out["verdict"] = (f"the personalized model is {'ahead of' if d > 0 else 'behind' if d < 0 else 'level with'} "
                          f"the best classical reference ({best}) by {abs(d):.3f} macro-F1")
    return out


def reference_markdown(report: dict[str, Any]) -> str:
    """A Markdown table of :func:`reference_report`'s result."""
    lines = ["| method | macro-F1 | accuracy | model minus method |", "|---|---|---|---|"]
    m = report.get("model_macro_f1")
    if m is not None:
        lines.append(f"| personalized model | {m:.4f} | | |")
    for name, s in report["methods"].items():
        d = report.get("model_minus_reference", {}).get(name)
        lines.append(f"| {name} ({report['features'].split(' (')[0]}) | {s['macro_f1']:.4f} | {s['accuracy']:.4f} | "
                     f"{'' if d is None else f'{d:+.4f}'} |")
    if "verdict" in report:
        lines += ["", report["verdict"][0].upper() + report["verdict"][1:] + "."]
    return "\n".join(lines)


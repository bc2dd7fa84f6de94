"""Label-noise rehearsal on a user's own recordings: ``imutune finetune --label-noise``.

A user (or a developer) with clean labelled recordings can rehearse what their
real, self-labelled calibration session will do to personalization: the
recordings of each user are joined in the given order into one session
(:func:`imutune.signal.label_noise.concatenate_session`), the chosen noise model
corrupts the training labels (the truth is kept), and the chosen method
fine-tunes. The report gives the corrupted windows, the filter's noisy-window
precision and recall against the truth (FilterLoss variants and ``cleanlab``),
and, with test recordings, macro-F1 before and after.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._io import write_json_atomic
from .data.recordings import load_many
from .personalize.filter import NOISY
from .personalize.finetune import FinetuneConfig
from .personalize.run import personalize
from .signal.label_noise import concatenate_session, noisy_windows, parse_label_noise, precision_recall
from .signal.windows import longtail_subsample, make_windows
from .train.bundle import evaluate_bundle, load_bundle, save_bundle

__all__ = ["run_finetune_rehearsal"]


def run_finetune_rehearsal(base: str | os.PathLike, data: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                           *, label_noise: str, config: FinetuneConfig = FinetuneConfig(),
                           imbalance_ratio: float | None = None, test_data: Sequence[str | os.PathLike] = (),
                           seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``base`` on ``data`` whose labels carry ``label_noise``; write the bundle and a report.

    Parameters
    ----------
    label_noise : str
        A spec of :func:`imutune.signal.label_noise.parse_label_noise` (``"boundary:0.2"``, ...).
    imbalance_ratio : float, optional
        Long-tail subsample the training windows by their true class.

    Returns
    -------
    dict
        ``label_noise``, ``n_train``, ``corrupted_windows``, ``filter`` (precision/recall or None),
        ``before`` / ``after`` (with ``test_data``); also ``finetune_report.json`` in ``out_dir``.

    Raises
    ------
    ValueError
        On a bad spec (the message quotes it), or as :func:`imutune.personalize.finetune.finetune`.
    """
    noise = parse_label_noise(label_noise)
    bundle = load_bundle(base)
    recs = load_many(data)
    users = sorted({r.user for r in recs})
    sessions = [concatenate_session([r for r in recs if r.user == u], name=f"session:{u}") for u in users]
    nw = noisy_windows(sessions, noise, bundle.window, seed=seed, channels=bundle.channels)
    if imbalance_ratio is not None:
        nw = nw.subset(longtail_subsample(nw.y_true, imbalance_ratio, seed=seed, num_classes=nw.windows.num_classes))
    out = Path(out_dir)
    write_json_atomic(out / "finetune_config.json", {"base": str(base), "data": [str(p) for p in data],
                                                     "finetune": asdict(config), "label_noise": label_noise,
                                                     "imbalance_ratio": imbalance_ratio, "seed": seed})
    per = personalize(bundle, nw.windows, config=config, noisy_mask=nw.noisy, progress=progress)
    save_bundle(per, out)
    flagged = None
    if "categories" in per.info:
        flagged = np.asarray(per.info["categories"]) == NOISY
    elif "dropped" in per.info and config.loss == "cleanlab":
        flagged = np.zeros(len(nw.y_true), bool)
        flagged[np.asarray(per.info["dropped"], dtype=np.int64)] = True
    result: dict[str, Any] = {"label_noise": noise.describe(), "loss": config.loss, "n_train": len(nw.y_true),
                              "corrupted_windows": int(nw.noisy.sum()), "corrupted_share": nw.noise_rate,
                              "filter": None if flagged is None else precision_recall(flagged, nw.noisy),
                              "head_replaced": per.info.get("head_replaced")}
    if test_data:
        wt = make_windows(load_many(test_data), bundle.window, channels=bundle.channels)
        if tuple(wt.class_names) == tuple(bundle.class_names):
            result["before"] = evaluate_bundle(bundle, wt)
        result["after"] = evaluate_bundle(per, wt)
    write_json_atomic(out / "finetune_report.json", result)
    return result

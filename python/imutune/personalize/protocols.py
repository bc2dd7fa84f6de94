"""Evaluation protocols: how a target user's recordings become calibration (training) and test data.

* :func:`calibrate_then_use` -- the default everywhere (demo, ``imutune bench
  filterloss``): a user records a short, self-labelled calibration session in
  the placement they wear the device and then uses the model in that same
  placement later. Per recording, the first ``calibration_fraction`` of the
  samples in time is calibration data and the rest, after a gap of at least
  one window, is test data, so no test window overlaps (or touches) a
  calibration window.
* :func:`split_target` -- "new-placement": calibrate on one arm side, test on
  the other (the watch data's cross-arm split). A *stress case*: the test
  placement is never seen during calibration.
"""
from __future__ import annotations

from typing import Sequence

from .. import _validation as V
from ..data.recordings import Recording

__all__ = ["calibrate_then_use", "split_target", "PROTOCOLS"]

#: Protocol names used by the demo and the benchmark.
PROTOCOLS: tuple[str, ...] = ("calibrate-then-use", "new-placement", "cross-dataset")


def calibrate_then_use(recordings: Sequence[Recording], *, window_s: float, calibration_fraction: float = 0.5,
                       gap_s: float | None = None) -> tuple[list[Recording], list[Recording]]:
    """Split each recording in time into a calibration part and a later test part.

    Per recording of S samples at ``sample_rate_hz``: samples
    ``[0, cut)`` with ``cut = floor(calibration_fraction * S)`` are
    calibration data, samples ``[cut + G, S)`` with
    ``G = round(gap_s * sample_rate_hz)`` are test data. Windows are cut inside
    each part, so every calibration window ends before sample ``cut`` and every
    test window starts at ``cut + G`` or later: with ``gap_s >= window_s`` no
    test window overlaps a calibration window, and they are at least one
    window apart.

    Parameters
    ----------
    recordings : sequence of Recording
        The target user's recordings (any sample rate).
    window_s : float
        Window length in seconds (> 0) of the model that will be trained; each
        part must hold at least one full window.
    calibration_fraction : float
        Share of each recording's samples, from its start, used for
        calibration, in (0, 1). Default 0.5.
    gap_s : float, optional
        Samples skipped between the two parts, in seconds; at least
        ``window_s`` (the default).

    Returns
    -------
    (list of Recording, list of Recording)
        Calibration recordings and test recordings, one each per input in
        input order. ``name`` gets the suffix ``":calibration"`` / ``":test"``;
        ``meta`` keeps the original entries and adds ``split``
        (``"calibration"``/``"test"``), ``split_source`` (original name),
        ``split_start_sample`` / ``split_end_sample`` (half-open range in the
        original's samples), ``calibration_fraction`` and ``gap_s``.

    Raises
    ------
    ValueError
        If ``recordings`` is empty, ``window_s`` is not positive,
        ``calibration_fraction`` is outside (0, 1), ``gap_s`` is below
        ``window_s``, or a recording is too short for one window in each part
        (the message names the recording and gives the lengths).
    """
    if len(recordings) == 0:
        raise ValueError("recordings is empty; expected at least one Recording to split")
    window_s = V.check_positive("window_s", window_s, where="calibrate_then_use")
    frac = float(calibration_fraction)
    if not (0.0 < frac < 1.0):
        raise ValueError(f"calibration_fraction must be in (0, 1), got {calibration_fraction!r}")
    gap = window_s if gap_s is None else float(gap_s)
    if not gap >= window_s - 1e-12:
        raise ValueError(f"gap_s must be at least window_s={window_s} s so no test window touches a calibration "
                         f"window, got {gap_s!r}")
    return _compute_calibrate_then_use(list(recordings), window_s, frac, gap)


def _compute_calibrate_then_use(recordings: list[Recording], window_s: float, frac: float, gap_s: float
                                ) -> tuple[list[Recording], list[Recording]]:
    from ..signal.windows import seconds_to_samples

    cal, test = [], []
    for rec in recordings:
        T = seconds_to_samples(window_s, rec.sample_rate_hz, minimum=1)
        G = seconds_to_samples(gap_s, rec.sample_rate_hz)
        S = rec.n_samples
        cut = int(frac * S)
        if cut < T or S - (cut + G) < T:
            raise ValueError(
                f"recording {rec.name or rec.user!r} has {S} samples ({rec.duration_s:.2f} s); with "
                f"calibration_fraction={frac} and a gap of {gap_s} s it gives {cut} calibration and "
                f"{max(S - cut - G, 0)} test samples, expected at least one window ({T} samples) in each")
        common = {"split_source": rec.name, "calibration_fraction": frac, "gap_s": gap_s}
        cal.append(Recording(rec.values[:cut], rec.labels[:cut], rec.sample_rate_hz, rec.channels,
                             rec.class_names, rec.user, f"{rec.name}:calibration",
                             {**rec.meta, **common, "split": "calibration", "split_start_sample": 0,
                              "split_end_sample": cut}))
        test.append(Recording(rec.values[cut + G:], rec.labels[cut + G:], rec.sample_rate_hz, rec.channels,
                              rec.class_names, rec.user, f"{rec.name}:test",
                              {**rec.meta, **common, "split": "test", "split_start_sample": cut + G,
                               "split_end_sample": S}))
    return cal, test


def split_target(recordings: Sequence[Recording], target_user: str, *, train_side: int = 0
                 ) -> tuple[list[Recording], list[Recording], list[Recording]]:
    """Split watch recordings into (source, target_train, target_test): the "new-placement" stress case.

    Target training data are the target's recordings of arm ``train_side``;
    its other arm side is the test set (a placement never seen while
    calibrating; see :func:`calibrate_then_use` for the default protocol).

    Raises
    ------
    ValueError
        If the target user is unknown or lacks recordings of either side.
    """
    users = sorted({r.user for r in recordings})
    if target_user not in users:
        raise ValueError(f"target_user {target_user!r} not found; users are {users}")
    source = [r for r in recordings if r.user != target_user]
    tgt = [r for r in recordings if r.user == target_user]
    train = [r for r in tgt if r.meta.get("side") == train_side]
    test = [r for r in tgt if r.meta.get("side") != train_side]
    if not train or not test or not source:
        raise ValueError(f"target_user {target_user!r} needs recordings on both arm sides and source users; got "
                         f"{len(train)} train, {len(test)} test, {len(source)} source recordings")
    return source, train, test

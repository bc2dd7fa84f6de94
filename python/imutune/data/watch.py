"""The embedded smartwatch IMU data set shipped by ``seglearn``: its one reader, :func:`load_watch`.

Source: Burns et al., "Shoulder physiotherapy exercise recognition: machine
learning the inertial signals from a smartwatch", Physiol. Meas. 2018; data
file ``seglearn/data/watch_dataset.npy`` (BSD licence): 10 subjects x 2 arm
sides x 7 shoulder exercises, 6 channels at 50 Hz, accelerometer in g and
gyroscope in rad/s.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np

from .recording import Recording

__all__ = ["load_watch", "WATCH_CLASS_NAMES", "WATCH_CHANNELS", "WATCH_SAMPLE_RATE_HZ", "WATCH_UNITS"]

WATCH_CLASS_NAMES = ("PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW")
WATCH_CHANNELS = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
WATCH_SAMPLE_RATE_HZ = 50.0
#: Physical unit per channel (accelerometer in g, gyroscope in rad/s), declared in every recording's ``meta["units"]``.
WATCH_UNITS = {"acc_x": "g", "acc_y": "g", "acc_z": "g", "gyr_x": "rad/s", "gyr_y": "rad/s", "gyr_z": "rad/s"}


def _watch_file() -> Path:
    spec = importlib.util.find_spec("seglearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded watch data set needs the 'seglearn' package "
                                "(pip install seglearn); it was not found")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "watch_dataset.npy"
    if not path.is_file():
        raise FileNotFoundError(f"watch data file {str(path)!r} does not exist; reinstall seglearn")
    return path


def load_watch(*, subjects: Sequence[int] | None = None) -> list[Recording]:
    """Load the real smartwatch IMU data set shipped by ``seglearn``.

    Source: Burns et al., "Shoulder physiotherapy exercise recognition: machine
    learning the inertial signals from a smartwatch", Physiol. Meas. 2018; data
    file ``seglearn/data/watch_dataset.npy`` (BSD licence). It is read directly
    (``seglearn`` itself is not imported).

    Parameters
    ----------
    subjects : sequence of int, optional
        Subject numbers in 1..10 to keep; all by default.

    Returns
    -------
    list of Recording
        One per (subject, arm side, exercise): values (S, 6) float32 with
        channels ``acc_x, acc_y, acc_z`` in g and ``gyr_x, gyr_y, gyr_z`` in
        rad/s at 50 Hz; every sample labelled with the exercise (7 classes);
        ``user = f"subject{n:02d}"``; ``meta = {"side": 0 or 1, "subject": n,
        "units": WATCH_UNITS, "gravity": True}`` (the accelerometer includes
        gravity: its mean magnitude is about 1 g).
    """
    # The file is a pickled dict inside seglearn's installed package (not user input), hence allow_pickle.
    raw = np.load(_watch_file(), allow_pickle=True).item()
    keep = None if subjects is None else {int(s) for s in subjects}
    out = []
    for i, (x, y, subj, side) in enumerate(zip(raw["X"], raw["y"], raw["subject"], raw["side"])):
        subj, side, y = int(subj), int(side), int(y)
        if keep is not None and subj not in keep:
            continue
        x = np.asarray(x, dtype=np.float32)
        labels = np.full(x.shape[0], y, dtype=np.int64)
        out.append(Recording(x, labels, WATCH_SAMPLE_RATE_HZ, WATCH_CHANNELS, WATCH_CLASS_NAMES,
                             user=f"subject{subj:02d}", name=f"watch_s{subj:02d}_side{side}_{WATCH_CLASS_NAMES[y]}_{i:03d}",
                             meta={"side": side, "subject": subj, "units": dict(WATCH_UNITS), "gravity": True}))
    if keep is not None and not out:
        raise ValueError(f"subjects {sorted(keep)} not found in the watch data; expected numbers in 1..10")
    return out

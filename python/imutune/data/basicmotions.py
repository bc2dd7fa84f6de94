"""BasicMotions, a small real smartwatch IMU data set shipped inside the ``aeon`` wheel: :func:`load_basicmotions`.

Source: the UEA multivariate time-series classification archive (Bagnall et
al., "The UEA multivariate time series classification archive, 2018",
arXiv:1811.00075), problem *BasicMotions*: four students wore a smartwatch
and performed four activities (Standing, Running, Walking, Badminton), five
times each; 3-D accelerometer and 3-D gyroscope at 10 Hz, 10 s per case; 40
training and 40 test cases. File ``aeon/datasets/data/BasicMotions/
BasicMotions_{TRAIN,TEST}.ts`` of the ``aeon`` package (BSD-3-Clause). It is
read directly (``aeon`` is not imported: ``pip install --no-deps aeon`` is
enough), so nothing is downloaded.

Units are not documented by the source. The magnitudes (accelerometer std
about 11 while running, mean about 0 while standing, so gravity removed;
gyroscope std up to about 5) fit m/s^2 linear acceleration and rad/s, which is
what :func:`load_basicmotions` declares (``BASICMOTIONS_UNITS``); the watch
model's accelerometer is in g *with* gravity, so this target differs from the
source in sample rate, units and gravity handling.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .recording import Recording

__all__ = ["load_basicmotions", "BASICMOTIONS_CLASS_NAMES", "BASICMOTIONS_CHANNELS", "BASICMOTIONS_SAMPLE_RATE_HZ",
           "BASICMOTIONS_UNITS"]

BASICMOTIONS_CLASS_NAMES = ("Standing", "Running", "Walking", "Badminton")
BASICMOTIONS_CHANNELS = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
BASICMOTIONS_SAMPLE_RATE_HZ = 10.0
#: Declared units (inferred from the magnitudes; see the module docstring).
BASICMOTIONS_UNITS = {"acc_x": "m/s^2", "acc_y": "m/s^2", "acc_z": "m/s^2",
                      "gyr_x": "rad/s", "gyr_y": "rad/s", "gyr_z": "rad/s"}
_MAX_BYTES = 8 << 20


def _file(split: str) -> Path:
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the BasicMotions data set is read from the 'aeon' package "
                                "(pip install --no-deps aeon); it was not found")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "BasicMotions" / \
        f"BasicMotions_{split}.ts"
    if not path.is_file():
        raise FileNotFoundError(f"BasicMotions file {str(path)!r} does not exist; reinstall aeon")
    return path


def load_basicmotions(split: str = "TRAIN") -> list[Recording]:
    """Load BasicMotions cases as recordings.

    Parameters
    ----------
    split : {"TRAIN", "TEST"}
        The archive's fixed split (40 cases each, 10 per class).

    Returns
    -------
    list of Recording
        One per case: values (100, 6) float32 at 10 Hz, channels
        ``acc_x..gyr_z``, every sample labelled with the case's activity;
        ``user = name = f"bm_{split.lower()}_{i:02d}"`` (the archive does not
        say which student recorded a case); ``meta = {"units":
        BASICMOTIONS_UNITS, "source": "aeon BasicMotions", "split": split}``.

    Raises
    ------
    ValueError
        If ``split`` is not TRAIN or TEST, or the file is malformed (the message names it).
    FileNotFoundError
        If ``aeon`` is not installed.
    """
    if split not in ("TRAIN", "TEST"):
        raise ValueError(f"split must be 'TRAIN' or 'TEST', got {split!r}")
    path = _file(split)
    if path.stat().st_size > _MAX_BYTES:
        raise ValueError(f"BasicMotions file {str(path)!r} is {path.stat().st_size} bytes; expected under {_MAX_BYTES}")
    out = []
    in_data = False
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.lower() == "@data":
            in_data = True
            continue
        if not in_data:
            continue
        parts = s.split(":")
        label = parts[-1].strip()
        if len(parts) != 7 or label not in BASICMOTIONS_CLASS_NAMES:
            raise ValueError(f"BasicMotions file {str(path)!r} line {lineno}: expected 6 dimensions and a label "
                             f"among {list(BASICMOTIONS_CLASS_NAMES)}, got {len(parts) - 1} fields and {label[:40]!r}")
        try:
            v = np.array([[float(x) for x in p.split(",")] for p in parts[:-1]], dtype=np.float32)   # (6, T)
        except ValueError:
            raise ValueError(f"BasicMotions file {str(path)!r} line {lineno}: a value is not a number") from None
        k = BASICMOTIONS_CLASS_NAMES.index(label)
        i = len(out)
        name = f"bm_{split.lower()}_{i:02d}"
        out.append(Recording(np.ascontiguousarray(v.T), np.full(v.shape[1], k, dtype=np.int64),   # (6, T) -> (T, 6)
                             BASICMOTIONS_SAMPLE_RATE_HZ, BASICMOTIONS_CHANNELS, BASICMOTIONS_CLASS_NAMES,
                             user=name, name=name,
                             meta={"units": dict(BASICMOTIONS_UNITS), "source": "aeon BasicMotions", "split": split}))
    if not out:
        raise ValueError(f"BasicMotions file {str(path)!r} holds no cases after '@data'")
    return out

"""The eager API: any recording path to in-memory recordings (:func:`load_recordings`, :func:`load_many`).

This module dispatches a path to its format's loader and is the namespace of
the eager API (it exports the names it had before the per-format split, so
``imutune.data.recordings.load_npz`` and friends keep working). Each format
has one parser in its own module (:mod:`.npz`, :mod:`.csv`, :mod:`.shl2018`,
:mod:`.watch`), and its eager loader is that parser's stream read to the end.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .csv import load_csv
from .npz import load_npz, save_npz
from .recording import Recording
from .shl2018 import SHL_CLASS_NAMES, SHL_LABEL_FILE, load_shl2018
from .watch import WATCH_CHANNELS, WATCH_CLASS_NAMES, WATCH_SAMPLE_RATE_HZ, load_watch

__all__ = ["load_many", "Recording", "load_watch", "load_npz", "save_npz", "load_csv", "load_shl2018",
           "load_recordings", "WATCH_CLASS_NAMES", "WATCH_CHANNELS", "WATCH_SAMPLE_RATE_HZ",
           "SHL_CLASS_NAMES"]


def load_recordings(path: str | os.PathLike, **kwargs) -> list[Recording]:
    """Load recordings from a file, a folder or the embedded data set.

    Parameters
    ----------
    path : str or path-like
        * the string ``"watch"``: :func:`load_watch` (``kwargs`` go to it);
        * a ``.npz`` file: ``[load_npz(path)]`` (no ``kwargs`` allowed);
        * a ``.csv`` file: ``[load_csv(path, **kwargs)]``;
        * a folder containing ``Label.txt``: :func:`load_shl2018`
          (``kwargs`` go to it);
        * any other folder: every ``*.npz`` and ``*.csv`` file directly in it,
          in sorted file-name order (``kwargs`` go to :func:`load_csv`).
    **kwargs
        Options for the loader chosen, as above.

    Returns
    -------
    list of Recording

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist, or a folder holds neither ``Label.txt`` nor
        any ``.npz``/``.csv`` file.
    ValueError
        If a file has another suffix, ``kwargs`` are given where no loader
        takes them, or a loader rejects its input (its message names the file).
    """
    if isinstance(path, str) and path == "watch":
        return load_watch(**kwargs)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"recording path {str(p)!r} does not exist; expected a .npz or .csv file, "
                                "a folder of them, an SHL-2018 folder, or the string 'watch'")
    if p.is_dir():
        if (p / SHL_LABEL_FILE).is_file():
            return load_shl2018(p, **kwargs)
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in (".npz", ".csv"))
        if not files:
            raise FileNotFoundError(f"recording folder {str(p)!r} contains no .npz or .csv files and no "
                                    f"{SHL_LABEL_FILE!r} (SHL-2018 layout)")
        if kwargs and not any(f.suffix.lower() == ".csv" for f in files):
            raise ValueError(f"options {sorted(kwargs)} apply to .csv files, but recording folder {str(p)!r} "
                             "holds only .npz files")
        return [load_npz(f) if f.suffix.lower() == ".npz" else load_csv(f, **kwargs) for f in files]
    suffix = p.suffix.lower()
    if suffix == ".npz":
        if kwargs:
            raise ValueError(f"recording file {str(p)!r} is a .npz, which takes no options; got {sorted(kwargs)}")
        return [load_npz(p)]
    if suffix == ".csv":
        return [load_csv(p, **kwargs)]
    raise ValueError(f"recording file {str(p)!r} has suffix {p.suffix!r}; expected '.npz' or '.csv', a folder, "
                     "or the string 'watch'")


def load_many(paths: Sequence[str | os.PathLike]) -> list[Recording]:
    """Recordings from every path (``.npz``, ``.csv``, SHL-2018 folder, folder of files, or ``"watch"``)."""
    if not paths:
        raise ValueError("no data paths were given; expected at least one recording file or folder")
    recs: list[Recording] = []
    for p in paths:
        recs.extend(load_recordings(p))
    return recs

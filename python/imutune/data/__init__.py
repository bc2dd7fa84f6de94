"""Recordings and streams: one reader per file format.

Layout (each format module holds its one parser, a :class:`Stream`; the eager
loader is that stream read to the end with :func:`read_stream`):

* :mod:`.recording` -- :class:`Recording`, :class:`Stream`, :class:`StreamBlock`,
  :class:`RecordingStream`, :func:`read_stream` and the rules every reader
  shares (sample-rate range, gaps, unlabeled markers, class inference, name
  limits, error wrapping).
* :mod:`.npz` -- the generic ``.npz`` file (:class:`NpzStream`, :func:`load_npz`,
  :func:`save_npz`, :class:`NpzStreamWriter`).
* :mod:`.csv` -- CSV files (:class:`CsvStream`, :func:`load_csv`).
* :mod:`.shl2018` -- the SHL-2018 layout (:class:`Shl2018Stream`, :func:`load_shl2018`).
* :mod:`.watch` -- the embedded smartwatch data set (:func:`load_watch`).
* :mod:`.recordings` -- any path to recordings (:func:`load_recordings`, :func:`load_many`).
* :mod:`.streams` -- any path to streams (:func:`open_stream`, :func:`open_streams`)
  and :class:`StreamResampler`.

Every reader raises only ``ValueError`` and ``FileNotFoundError``, with the
file named.
"""
from __future__ import annotations

from .csv import CsvStream, load_csv
from .npz import NpzStream, NpzStreamWriter, load_npz, save_npz
from .recording import (
    DEFAULT_BLOCK_SAMPLES,
    MAX_CHANNELS,
    MAX_CLASSES,
    SAMPLE_RATE_RANGE_HZ,
    UNLABELED_MARKERS,
    Recording,
    RecordingStream,
    Stream,
    StreamBlock,
    read_stream,
    split_at_gaps,
)
from .recordings import load_many, load_recordings
from .shl2018 import SHL_CLASS_NAMES, Shl2018Stream, load_shl2018
from .streams import StreamResampler, open_stream, open_streams
from .watch import WATCH_CHANNELS, WATCH_CLASS_NAMES, WATCH_SAMPLE_RATE_HZ, load_watch

__all__ = [
    "Recording", "Stream", "StreamBlock", "RecordingStream", "read_stream", "split_at_gaps",
    "NpzStream", "NpzStreamWriter", "load_npz", "save_npz",
    "CsvStream", "load_csv",
    "Shl2018Stream", "load_shl2018", "SHL_CLASS_NAMES",
    "load_watch", "WATCH_CLASS_NAMES", "WATCH_CHANNELS", "WATCH_SAMPLE_RATE_HZ",
    "load_recordings", "load_many", "open_stream", "open_streams", "StreamResampler",
    "DEFAULT_BLOCK_SAMPLES", "SAMPLE_RATE_RANGE_HZ", "MAX_CHANNELS", "MAX_CLASSES", "UNLABELED_MARKERS",
]

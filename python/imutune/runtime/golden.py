"""Golden data from the reference runtime: what the phone loop must reproduce.

:class:`GoldenCapture` is the capture hook of :mod:`imutune.runtime.replay`
(``replay(..., capture=...)`` / ``replay_many(..., capture=...)``). While a
recording is replayed it records, per stream,

* ``samples``: the raw samples fed to the ring buffer, (S, C) float32, in the
  manifest's channel order and units at the manifest rate (after channel
  selection, resampling and NaN repair; before normalization);
* ``window_ends``: each window's exclusive end sample index, (W,) int64;
* ``inputs``: each window's normalized model input, (W, C, T) float32 (the
  ``(1, C, T)`` tensors given to ``backend.run``, stacked);
* ``logits``: the model's output per window, (W, K) float32;
* ``predictions`` / ``smoothed_predictions``: argmax and the causal majority
  vote over ``smoothing_k`` windows (from the :class:`ReplayResult`), (W,) int64.

:meth:`GoldenCapture.write` puts them into a folder as raw little-endian
``.bin`` files plus ``golden.json`` (an index with the file names, dtypes,
shapes and the replay settings) and a copy of the ``manifest.json``: plain
formats any JVM test can read with a ``ByteBuffer``. It is used by
``imutune replay ... --dump-golden DIR``; ``android_demo/tools/make_golden.py``
regenerates the Android host tests' golden data with it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .._io import write_bytes_atomic, write_json_atomic

__all__ = ["GoldenCapture", "GOLDEN_VERSION"]

#: Version of the ``golden.json`` layout.
GOLDEN_VERSION = 1
_DTYPES = {"samples": "<f4", "window_ends": "<i8", "inputs": "<f4", "logits": "<f4", "predictions": "<i8",
           "smoothed_predictions": "<i8"}


class _Stream:
    __slots__ = ("samples", "ends", "inputs", "logits")

    def __init__(self) -> None:
        self.samples: list[np.ndarray] = []
        self.ends: list[int] = []
        self.inputs: list[np.ndarray] = []
        self.logits: list[np.ndarray] = []


class GoldenCapture:
    """Capture hook recording what the runtime feeds and computes (see the module notes).

    The engine calls :meth:`samples` for every delivered block, :meth:`window`
    after every model call, :meth:`reset` on a stream gap that restarts the
    window sequence and :meth:`finish` with the stream's result. Captured
    streams must be gap-free (a golden stream is one contiguous recording).

    Memory: everything is kept until :meth:`write` (4 (S C + W C T + W K)
    bytes), so use it on short recordings.
    """

    def __init__(self) -> None:
        self._cur = _Stream()
        self._done: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ hook

    def samples(self, values: np.ndarray) -> None:
        """Raw samples fed, shape (n, C), float32, manifest channel order (copied)."""
        self._cur.samples.append(np.array(values, dtype=np.float32, copy=True))

    def window(self, end: int, x: np.ndarray, logits: np.ndarray) -> None:
        """One window: exclusive end sample index, input (1, C, T) float32, logits (1, K) (copied)."""
        self._cur.ends.append(int(end))
        self._cur.inputs.append(np.array(x[0], dtype=np.float32, copy=True))          # (1, C, T) -> (C, T)
        self._cur.logits.append(np.asarray(logits, dtype=np.float32).reshape(-1).copy())  # (1, K) -> (K,)

    def reset(self, skipped: int) -> None:
        """A gap restarting the window sequence: refused (a golden stream is contiguous).

        Raises
        ------
        ValueError
            Always; the message gives the gap length.
        """
        raise ValueError(f"golden capture got a stream gap of {skipped} samples; golden data needs a gap-free "
                         "recording (trim it to a contiguous part)")

    def finish(self, result: Any) -> None:
        """End of a stream: attach the runtime's predictions and smoothed predictions."""
        cur, self._cur = self._cur, _Stream()
        if not cur.ends:          # a stream shorter than one window: nothing to check against
            return
        K = len(result.class_names)
        smoothed = result.smoothed_predictions if result.smoothed_predictions is not None else result.predictions
        self._done.append({
            "recording": result.recording,
            "samples": np.concatenate(cur.samples) if cur.samples else np.zeros((0, 0), np.float32),
            "window_ends": np.asarray(cur.ends, dtype=np.int64),
            "inputs": np.stack(cur.inputs) if cur.inputs else np.zeros((0, 0, 0), np.float32),  # W x (C, T) -> (W, C, T)
            "logits": np.stack(cur.logits) if cur.logits else np.zeros((0, K), np.float32),    # W x (K,) -> (W, K)
            "predictions": np.asarray(result.predictions, dtype=np.int64),
            "smoothed_predictions": np.asarray(smoothed, dtype=np.int64),
            "smoothing_k": int(result.smoothing_k),
        })
        if not np.array_equal(self._done[-1]["window_ends"], np.asarray(result.window_ends)):
            raise ValueError(f"golden capture of {result.recording!r}: captured window ends differ from the "
                             "result's (the hook missed a window)")

    @property
    def n_streams(self) -> int:
        """Streams captured so far."""
        return len(self._done)

    # ------------------------------------------------------------------ output

    def write(self, out_dir: str | os.PathLike, *, manifest_path: str | os.PathLike | None = None,
              extra: dict | None = None) -> Path:
        """Write the captured streams into ``out_dir`` (``golden.json`` + ``.bin`` files).

        Parameters
        ----------
        out_dir : path-like
            Destination folder (created).
        manifest_path : path-like, optional
            ``manifest.json`` to copy next to the data as ``manifest.json``.
        extra : dict, optional
            JSON-ready fields added to the index (e.g. the artifact name).

        Returns
        -------
        Path
            The ``golden.json`` path.

        Raises
        ------
        ValueError
            If nothing was captured.
        """
        if not self._done:
            raise ValueError("golden capture holds no stream; replay at least one recording of one window")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        streams = []
        for i, s in enumerate(self._done):
            stem = f"{i:02d}_" + re.sub(r"[^A-Za-z0-9._-]+", "_", s["recording"] or "stream")[:60]
            files = {}
            for key, dtype in _DTYPES.items():
                arr = np.ascontiguousarray(s[key], dtype=dtype)
                name = f"{stem}.{key}.bin"
                write_bytes_atomic(out / name, arr.tobytes())
                files[key] = {"file": name, "dtype": dtype, "shape": list(arr.shape)}
            streams.append({"recording": s["recording"], "smoothing_k": s["smoothing_k"],
                            "n_samples": int(s["samples"].shape[0]), "n_windows": int(s["window_ends"].shape[0]),
                            "files": files})
        index = {"golden_version": GOLDEN_VERSION, "manifest": "manifest.json" if manifest_path else None,
                 **(extra or {}), "streams": streams}
        if manifest_path is not None:
            write_bytes_atomic(out / "manifest.json", Path(manifest_path).read_bytes())
        return write_json_atomic(out / "golden.json", index)

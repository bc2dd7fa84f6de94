"""CSV recordings: one parser (:class:`CsvStream`); :func:`load_csv` is that stream read to the end.

Layout: a header row, then one row per sample: a timestamp column in seconds
(``timestamp_s``), a label column (``label``: a class name, an integer index
into a declared class list, or ``""`` / ``"-1"`` for unlabeled) and one column
per channel; a channel column may declare its unit as a suffix in brackets,
``acc_x[m/s^2]`` (channel ``acc_x`` in m/s^2; 'g', 'm/s^2', 'rad/s', 'deg/s'
are converted to the model's units by
:func:`imutune.signal.windows.make_windows`; the units go to
``meta["units"]``). UTF-8, with or without a byte-order mark (as spreadsheet programs
write it). The rules for sample rates, gaps, labels and names are those of
:mod:`imutune.data.recording`.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .. import _validation as V
from .recording import (
    DEFAULT_BLOCK_SAMPLES,
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_NAME_CHARS,
    RATE_INFERENCE_ROWS,
    LabelCoder,
    Recording,
    Stream,
    StreamBlock,
    check_block_samples,
    check_names,
    check_sample_rate,
    find_gaps,
    infer_class_names,
    infer_sample_rate,
    is_float,
    parse_gravity,
    read_stream,
    reading,
)

__all__ = ["CsvStream", "load_csv", "MAX_NUMBER_CHARS"]

#: Longest timestamp or channel value field, in characters (a float64 needs at most ~25).
MAX_NUMBER_CHARS = 64


def _open_text(path: Path):
    # utf-8-sig: a leading byte-order mark (Excel's "CSV UTF-8") is dropped; anything else must be UTF-8.
    return open(path, "r", encoding="utf-8-sig", errors="strict", newline="")


class CsvStream(Stream):
    """A recording CSV (header row; timestamp, label and channel columns), read in row blocks.

    Parameters
    ----------
    path : path-like
        The ``.csv`` file.
    class_names : sequence of str, optional
        The class list; a label is a name in it or an integer index into it.
        By default a first pass collects the distinct labels and treats them
        as names (see :func:`imutune.data.recording.infer_class_names`).
    user : str, optional
        Default: the file stem.
    timestamp_column, label_column : str
    sample_rate_hz : float, optional
        Default: ``1 / median(diff(t))`` over the first 1001 rows; in
        [0.001, 100000] Hz either way.
    block_samples : int, default 8192
    require_finite : bool, default False
        Reject empty, NaN and Inf values naming the row (the eager
        :func:`load_csv` sets it; a stream otherwise passes them on as NaN for
        the runtime to repair or reject).
    gravity : bool or str, optional
        Whether the accelerometer columns include gravity (True /
        ``"included"``; False / ``"removed"``), stored in ``meta["gravity"]``;
        a CSV header has no place for it. None (default): unknown.

    Notes
    -----
    A gap -- two timestamps more than 1.5 sample periods apart -- starts a
    new block with ``gap_before = max(round(dt * fs) - 1, 1)``. A final row
    with fewer fields than the header (a file cut off while being written)
    is dropped and counted in :attr:`dropped_rows` (the replay report shows
    it as ``rows_dropped``). Any other malformed row raises.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Naming the file and, where it applies, the row (1-based line of the
        file; the header is row 1), the value and what was expected: not
        UTF-8; malformed quoting (a stray ``"`` whose field runs over
        several lines or to the end of the file); a field over the csv
        module's 131,072-character limit or a number field over 64
        characters; a missing column, an empty or repeated column name, no
        channel columns or more than 1024; no data rows; a row with another
        number of fields; a non-numeric, NaN or infinite timestamp;
        timestamps that do not increase; a non-numeric value; a label not in
        the class list or longer than 256 characters; more than 1024 distinct
        labels; a sample rate outside [0.001, 100000] Hz.
    """

    def __init__(self, path: str | os.PathLike, *, class_names: Sequence[str] | None = None,
                 user: str | None = None, timestamp_column: str = "timestamp_s", label_column: str = "label",
                 sample_rate_hz: float | None = None, block_samples: int = DEFAULT_BLOCK_SAMPLES,
                 require_finite: bool = False, gravity: bool | str | None = None) -> None:
        self.path = V.check_file(path, what="recording file", suffixes=(".csv",))
        self.where = where = f"recording file {str(self.path)!r}"
        self._source = str(self.path)
        self.block_samples = check_block_samples(block_samples)
        self.require_finite = bool(require_finite)
        if timestamp_column == label_column:
            raise ValueError(f"timestamp_column and label_column for {where} are both {timestamp_column!r}; "
                             "expected two different columns")
        if class_names is not None:
            class_names = check_names("class_names", class_names, where=where, limit=MAX_CLASSES)
        if sample_rate_hz is not None:
            sample_rate_hz = check_sample_rate(sample_rate_hz, where=where)
        self._tcol, self._lcol = str(timestamp_column), str(label_column)
        self.dropped_rows = 0
        with reading(where, str(self.path)):
            header = self._read_header()
            ti, li = header.index(self._tcol), header.index(self._lcol)
            self._header, self._ti, self._li = header, ti, li
            self._ch_idx = [i for i in range(len(header)) if i not in (ti, li)]
            if not self._ch_idx:
                raise ValueError(f"{where} has no channel columns; header is {header}")
            self.channels, self._units = _split_units([header[i] for i in self._ch_idx], where)
            # First pass: the same row parser as blocks(); labels (for class inference) and early timestamps.
            need_labels = class_names is None
            labels: set[str] = set()
            ts: list[str] = []
            ts_lines: list[int] = []
            n_rows = 0
            for line, row in self._rows():
                n_rows += 1
                if n_rows <= RATE_INFERENCE_ROWS:
                    ts.append(row[ti])
                    ts_lines.append(line)
                if need_labels:
                    lab = row[li]
                    if lab not in labels:
                        labels.add(lab)
                        self._labels([lab], [line])                  # length check
                        if len(labels) > MAX_CLASSES + 2:
                            infer_class_names({x.strip() for x in labels}, where=where)   # raises: too many
                elif n_rows >= RATE_INFERENCE_ROWS:
                    break
            if n_rows == 0:
                raise ValueError(f"{where} has no data rows; expected at least 1 row after the header")
            t = self._timestamps(ts, ts_lines)
            if sample_rate_hz is None:
                self._check_increasing(t, ts_lines)
                sample_rate_hz = infer_sample_rate(t, where=where)
            self.sample_rate_hz = sample_rate_hz
            self.class_names = (class_names if class_names is not None else
                                infer_class_names({x.strip() for x in labels}, where=where))
        self.user = str(user) if user is not None else self.path.stem
        self.name = self.path.stem
        self.n_samples = None
        self.meta: dict = {} if self._units is None else {"units": dict(zip(self.channels, self._units))}
        gravity = parse_gravity(gravity, where=where)
        if gravity is not None:
            self.meta["gravity"] = gravity

    # ------------------------------------------------------------------ the one row parser

    def _read_header(self) -> list[str]:
        where = self.where
        with _open_text(self.path) as fh:
            reader = csv.reader(_no_nul(fh, where), strict=True)
            try:
                header = next(reader)
            except StopIteration:
                raise ValueError(f"{where} has no header row") from None
            except csv.Error as e:
                raise ValueError(f"{where} row 1 (the header): {_csv_error_text(e)}; expected one line of "
                                 "comma-separated column names") from None
            if reader.line_num > 1:
                raise ValueError(f"{where} line 1: a quoted header field runs over {reader.line_num} lines "
                                 "(a stray '\"'?); expected one header line")
        header = [h.strip() for h in header]
        if len(header) > MAX_CHANNELS + 2:
            raise ValueError(f"{where} has {len(header)} header columns; expected at most {MAX_CHANNELS} "
                             "channels plus the timestamp and label columns")
        for col in (self._tcol, self._lcol):
            if col not in header:
                raise ValueError(f"{where} lacks column {col!r}; header is {header!r:.300}")
        check_names("header columns", header, where=where, limit=MAX_CHANNELS + 2)
        return header

    def _rows(self) -> Iterator[tuple[int, list[str]]]:
        """Yield ``(line, fields)`` of every data row, after the checks every pass shares.

        Blank lines are skipped. A field that spans lines (a stray quote), a
        row with another number of fields (except a short last row, which is
        dropped and counted) and csv module errors raise ``ValueError``.
        """
        where, ncol = self.where, len(self._header)
        self.dropped_rows = 0
        with _open_text(self.path) as fh:
            reader = csv.reader(_no_nul(fh, where), strict=True)
            prev_line = 1
            try:
                next(reader)
                prev_line = reader.line_num
                held: tuple[int, list[str]] | None = None   # a short row: dropped if it is the last one
                for row in reader:
                    line, prev_line = prev_line + 1, reader.line_num
                    if prev_line > line:
                        raise ValueError(f"{where} row {line}: a quoted field runs over lines {line}-"
                                         f"{prev_line} (a stray '\"'?); expected one row per line")
                    if len(row) != ncol:
                        if not row:
                            continue
                        if held is not None or len(row) > ncol:
                            bad = held if held is not None else (line, row)
                            raise ValueError(f"{where} row {bad[0]} has {len(bad[1])} fields; expected {ncol}")
                        held = (line, row)
                        continue
                    if held is not None:
                        raise ValueError(f"{where} row {held[0]} has {len(held[1])} fields; expected {ncol}")
                    yield line, row
            except csv.Error as e:
                raise ValueError(f"{where} row {prev_line + 1}: {_csv_error_text(e)}; expected one row of "
                                 f"{ncol} comma-separated fields per line") from None
            if held is not None:
                self.dropped_rows = 1

    def _timestamps(self, col: list[str], lines: list[int]) -> np.ndarray:
        """Timestamp fields -> (n,) float64 seconds; finite, at most MAX_NUMBER_CHARS characters each."""
        if not col:
            return np.empty(0, dtype=np.float64)
        if max(map(len, col)) > MAX_NUMBER_CHARS:
            k = next(k for k, x in enumerate(col) if len(x) > MAX_NUMBER_CHARS)
            raise ValueError(f"{self.where} row {lines[k]} has a {len(col[k])}-character timestamp; expected a "
                             "number of seconds")
        try:
            with np.errstate(over="ignore"):
                t = np.array(col, dtype=str).astype(np.float64)
        except ValueError:
            k = next(k for k, x in enumerate(col) if not is_float(x))
            raise ValueError(f"{self.where} row {lines[k]} has a non-numeric timestamp {col[k][:40]!r}; expected "
                             "seconds") from None
        fin = np.isfinite(t)
        if not fin.all():
            k = int(np.argmin(fin))
            raise ValueError(f"{self.where} row {lines[k]} has timestamp {col[k].strip()!r}; expected a finite "
                             "number of seconds")
        return t

    def _labels(self, col: list[str], lines: list[int]) -> list[str]:
        """Label fields, stripped; at most MAX_NAME_CHARS characters each."""
        if max(map(len, col)) > MAX_NAME_CHARS:
            out = [x.strip() for x in col]
            k = next((k for k, x in enumerate(out) if len(x) > MAX_NAME_CHARS), None)
            if k is not None:
                raise ValueError(f"{self.where} row {lines[k]} has a {len(out[k])}-character label; expected a "
                                 f"class name of at most {MAX_NAME_CHARS} characters")
            return out
        return [x.strip() for x in col]

    def _check_increasing(self, t: np.ndarray, lines: list[int], last_t: float | None = None) -> None:
        full = t if last_t is None else np.concatenate([[last_t], t])
        with np.errstate(over="ignore", invalid="ignore"):
            dt = np.diff(full)
        bad = ~(dt > 0) | ~np.isfinite(dt)
        if bad.any():
            i = int(np.argmax(bad))
            row = f"row {lines[i + (0 if last_t is not None else 1)]}"
            raise ValueError(f"{self.where}: timestamps must increase; {row} has {float(full[i + 1])!r} after "
                             f"{float(full[i])!r}")

    def _values(self, rows: list[list[str]], lines: list[int]) -> np.ndarray:
        out = np.empty((len(rows), len(self._ch_idx)), dtype=np.float32)
        for j, ci in enumerate(self._ch_idx):
            col = [r[ci] for r in rows]
            longest = max(map(len, col))
            if longest > MAX_NUMBER_CHARS:
                k = next(k for k, s in enumerate(col) if len(s) > MAX_NUMBER_CHARS)
                raise ValueError(f"{self.where} row {lines[k]} column {self._header[ci]!r} has a "
                                 f"{len(col[k])}-character value; expected a number")
            arr = np.char.strip(np.array(col, dtype=str))
            blank = arr == ""
            if blank.any():
                if self.require_finite:
                    k = int(np.argmax(blank))
                    raise ValueError(f"{self.where} row {lines[k]} column {self._header[ci]!r} is empty; "
                                     "expected a finite number")
                arr = np.where(blank, "nan", arr)
            try:
                with np.errstate(over="ignore"):
                    out[:, j] = arr.astype(np.float64)
            except (ValueError, OverflowError):
                k = next(k for k, s in enumerate(col) if s.strip() and not is_float(s))
                raise ValueError(f"{self.where} row {lines[k]} has a non-numeric value {col[k][:40]!r} in column "
                                 f"{self._header[ci]!r}; expected a number") from None
            if self.require_finite:
                fin = np.isfinite(out[:, j])
                if not fin.all():
                    k = int(np.argmin(fin))
                    raise ValueError(f"{self.where} row {lines[k]} column {self._header[ci]!r} is {col[k][:40]!r}, "
                                     "which is NaN/Inf in float32; expected a finite number")
        return out

    def _blocks(self) -> Iterator[StreamBlock]:
        coder = LabelCoder(self.class_names, where=self.where)
        fs = self.sample_rate_hz
        last_t: float | None = None
        pending_gap = 0
        rows: list[list[str]] = []
        lines: list[int] = []
        it = self._rows()
        done = False
        while not done:
            rows.clear()
            lines.clear()
            for line, row in it:
                rows.append(row)
                lines.append(line)
                if len(rows) >= self.block_samples:
                    break
            else:
                done = True
            if not rows:
                break
            t = self._timestamps([r[self._ti] for r in rows], lines)
            self._check_increasing(t, lines, last_t)
            values = self._values(rows, lines)
            labels = coder.codes(self._labels([r[self._li] for r in rows], lines), lines)
            full_t = t if last_t is None else np.concatenate([[last_t], t])
            gaps, missing = find_gaps(np.diff(full_t), fs)
            cuts = (gaps + (0 if last_t is not None else 1)).tolist()  # index in this block where a gap ends
            start = 0
            for cut, miss in zip(cuts, missing):
                if cut > start:
                    yield StreamBlock(values[start:cut], labels[start:cut], pending_gap)
                    pending_gap = 0
                pending_gap += miss
                start = cut
            if start < values.shape[0]:
                yield StreamBlock(values[start:], labels[start:], pending_gap)
                pending_gap = 0
            last_t = float(t[-1])


_UNIT_SUFFIX = re.compile(r"^(.*?\S)\s*\[([^\[\]]+)\]$")


def _split_units(names: list[str], where: str) -> tuple[tuple[str, ...], tuple[str | None, ...] | None]:
    """Channel names and units from header fields: ``acc_x[m/s^2]`` is channel ``acc_x`` in ``m/s^2``.

    A field without a ``[unit]`` suffix declares no unit (None); None overall when no field has one.
    """
    chans: list[str] = []
    units: list[str | None] = []
    for n in names:
        m = _UNIT_SUFFIX.match(n)
        chans.append(m.group(1) if m else n)
        units.append(m.group(2).strip() if m else None)
    out = check_names("channels", chans, where=where, limit=MAX_CHANNELS)
    return out, (None if all(u is None for u in units) else tuple(units))


def _no_nul(lines, where: str):
    """The file's lines, refusing NUL bytes (Python >= 3.11's csv module passes them through, and numpy drops
    trailing NULs of strings, so "1\x00" would read as 1.0)."""
    for n, line in enumerate(lines, 1):
        if "\x00" in line:
            raise ValueError(f"{where} line {n} contains a NUL byte; expected text (the file may be corrupt or "
                             "not a CSV)")
        yield line


def _csv_error_text(e: Exception) -> str:
    """The csv module's error, said for a user."""
    msg = str(e)
    if "field larger than field limit" in msg:
        return f"a field is longer than the csv module's limit of {csv.field_size_limit()} characters"
    if "unexpected end of data" in msg or "EOF" in msg:
        return "a quoted field is not closed before the end of the file (a stray '\"'?)"
    if "expected after" in msg:
        return f"malformed quoting ({msg}: a stray '\"' inside a field?)"
    return f"malformed CSV ({msg})"


def load_csv(path: str | os.PathLike, *, class_names: Sequence[str] | None = None,
             user: str | None = None, timestamp_column: str = "timestamp_s",
             label_column: str = "label", sample_rate_hz: float | None = None,
             gravity: bool | str | None = None) -> Recording:
    """Load a recording CSV: :class:`CsvStream` read to the end (:func:`imutune.data.recording.read_stream`).

    Parameters
    ----------
    path : path-like
        The CSV file (header row; ``timestamp_column`` in seconds,
        ``label_column``, every other column a channel).
    class_names : sequence of str, optional
        The class list (labels are names in it or integer indices into it). By
        default the distinct labels, as names (integer labels ordered by value).
    user : str, optional
        User id; the file stem by default.
    timestamp_column, label_column : str
    sample_rate_hz : float, optional
        Default ``1 / median(diff(t))`` over the first 1001 rows.
    gravity : bool or str, optional
        Whether the accelerometer includes gravity (``meta["gravity"]``; see
        :class:`CsvStream`); None: unknown.

    Returns
    -------
    Recording
        values (S, C) float32, labels (S,) int64 (-1 unlabeled), timestamp
        gaps in :attr:`Recording.gaps`, ``meta["dropped_rows"]`` if a cut-off
        last row was dropped.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        As :class:`CsvStream`, and for empty, NaN or Inf values; the message
        names the file and row.
    """
    return read_stream(CsvStream(path, class_names=class_names, user=user, timestamp_column=timestamp_column,
                                 label_column=label_column, sample_rate_hz=sample_rate_hz, require_finite=True,
                                 gravity=gravity))

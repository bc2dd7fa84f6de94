"""The generic ``.npz`` recording file: one parser (:class:`NpzStream`); :func:`load_npz` is that stream
read to the end. :func:`save_npz` and :class:`NpzStreamWriter` write it.

``np.savez`` stores each array as an ``.npy`` member of a zip archive. The
file holds ``values`` (S, C) real, ``labels`` (S,) integer (-1 unlabeled),
``sample_rate_hz`` (real scalar, Hz), ``channels`` (C,) str, ``class_names``
(K,) str, ``user`` (str) and, optionally, ``gaps`` (G, 2) integer (see
:attr:`imutune.data.recording.Recording.gaps`), ``units`` (C,) str and
``gravity`` (a bool scalar: True when the accelerometer includes gravity,
False when it was removed; absent: unknown; goes to ``meta["gravity"]``). The reader parses the
``.npy`` headers itself, checks them against the member sizes before reading
anything, and then reads rows sequentially (stored and deflated members
alike); no pickle is ever loaded.
"""
from __future__ import annotations

import io
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .. import _validation as V
from .._io import write_with_atomic
from .recording import (
    DEFAULT_BLOCK_SAMPLES,
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_NAME_CHARS,
    Recording,
    Stream,
    StreamBlock,
    check_block_samples,
    check_gaps,
    check_names,
    check_sample_rate,
    declared_gravity,
    read_stream,
    reading,
)

__all__ = ["NpzStream", "NpzStreamWriter", "load_npz", "save_npz", "NPZ_KEYS"]

#: Members every recording ``.npz`` holds (``gaps`` is optional).
NPZ_KEYS = ("values", "labels", "sample_rate_hz", "channels", "class_names", "user")
_SMALL = ("sample_rate_hz", "channels", "class_names", "user")
_SMALL_MEMBER_BYTES = 1 << 20


def _read_npy_header(fh, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fh)
        else:  # (3, 0): utf-8 header. numpy has no public reader for it; _read_array_header is private API.
            shape, fortran, dtype = fmt._read_array_header(fh, version)
    except Exception as e:
        raise ValueError(f"{where} is not .npy data (invalid .npy header: {type(e).__name__}: "
                         f"{str(e)[:120]})") from e
    if dtype.hasobject:
        raise ValueError(f"{where} holds Python objects (dtype {dtype}); expected plain arrays (no pickles)")
    return tuple(int(s) for s in shape), bool(fortran), dtype


def _member_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


class NpzStream(Stream):
    """A generic ``.npz`` recording file, read incrementally.

    Parameters
    ----------
    path : path-like
        File with members ``values`` (S, C), ``labels`` (S,), ``sample_rate_hz``,
        ``channels``, ``class_names``, ``user`` and optionally ``gaps``.
    block_samples : int, default 8192
        Rows read per block.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Naming the file: not a readable zip (e.g. truncated, a bit flip), a
        member missing or present twice, a member that is not ``.npy`` data
        or holds objects, a header whose shape disagrees with the member's
        size, ``values`` not 2-D real (complex, bool, structured and string
        data are rejected) with S >= 1 and 1 <= C <= 1024, ``labels`` not
        1-D integer of length S, an array in Fortran order, a
        ``sample_rate_hz`` that is not one real number in [0.001, 100000],
        ``channels`` / ``class_names`` that are not distinct non-empty
        strings, ``user`` not one string. While reading, a label outside
        -1..K-1, or a member that ends early or fails its CRC.
    """

    def __init__(self, path: str | os.PathLike, *, block_samples: int = DEFAULT_BLOCK_SAMPLES) -> None:
        self.path = V.check_file(path, what="recording file", suffixes=(".npz",))
        self.block_samples = check_block_samples(block_samples)
        self.where = where = f"recording file {str(self.path)!r}"
        self._source = str(self.path)
        with reading(where, str(self.path)):
            self._open(where)
        self.name = self.path.stem
        self.meta: dict = {} if self._units is None else {"units": dict(zip(self.channels, self._units))}
        if self._gravity is not None:
            self.meta["gravity"] = self._gravity

    def _open(self, where: str) -> None:
        try:
            zf = zipfile.ZipFile(self.path)
        except PermissionError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ValueError(f"{where} could not be read as .npz ({e}); it is not a complete .npz archive "
                             "and may be truncated") from e
        with zf:
            names = zf.namelist()
            twice = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else []
            if twice:
                raise ValueError(f"{where} holds members {twice} more than once; expected each key once")
            missing = [k for k in NPZ_KEYS if f"{k}.npy" not in names]
            if missing:
                raise ValueError(f"{where} lacks keys {missing}; expected keys {list(NPZ_KEYS)}")
            small = {k: self._small(zf, k, where) for k in _SMALL}
            gaps = self._small(zf, "gaps", where) if "gaps.npy" in names else None
            units = self._small(zf, "units", where) if "units.npy" in names else None
            gravity = self._small(zf, "gravity", where) if "gravity.npy" in names else None
            vshape, vfortran, vdtype, voff = self._big_header(zf, "values", where)
            lshape, lfortran, ldtype, loff = self._big_header(zf, "labels", where)
        if len(vshape) != 2 or vdtype.kind not in "fiu":
            raise ValueError(f"{where}: values must be a real (float or int) array of shape (S, C), got dtype "
                             f"{vdtype} of shape {vshape}")
        if vshape[0] < 1 or not (1 <= vshape[1] <= MAX_CHANNELS):
            raise ValueError(f"{where}: values has shape {vshape}; expected at least 1 sample and 1..{MAX_CHANNELS} "
                             "channels")
        if len(lshape) != 1 or ldtype.kind not in "iu":
            raise ValueError(f"{where}: labels must be an integer array of shape (S,), got dtype {ldtype} of shape "
                             f"{lshape}")
        if lshape[0] != vshape[0]:
            raise ValueError(f"{where}: labels has {lshape[0]} samples, values has {vshape[0]}; expected one label "
                             "per sample")
        if vfortran and vshape[1] > 1:
            raise ValueError(f"{where}: values is stored in Fortran (column-major) order and cannot be read row "
                             "by row; re-save it with imutune.data.save_npz or NpzStreamWriter")
        sr = small["sample_rate_hz"]
        if sr.size != 1:
            raise ValueError(f"sample_rate_hz in {where} must be a scalar, got shape {sr.shape}")
        if sr.dtype.kind not in "fiu":
            raise ValueError(f"sample_rate_hz in {where} must be a positive number of Hz in [0.001, 100000] "
                             f"(0 < fs <= 100 kHz), got dtype {sr.dtype} ({sr.reshape(-1)[0]!r})")
        self.sample_rate_hz = check_sample_rate(sr.reshape(()).item(), where=where)
        self.channels = self._names(small["channels"], "channels", where, MAX_CHANNELS)
        self.class_names = self._names(small["class_names"], "class_names", where, MAX_CLASSES)
        user = small["user"]
        if user.dtype.kind != "U" or user.size != 1 or len(str(user.reshape(-1)[0])) > MAX_NAME_CHARS:
            raise ValueError(f"user in {where} must be one string of at most {MAX_NAME_CHARS} characters, got "
                             f"dtype {user.dtype} of shape {user.shape}")
        self.user = str(user.reshape(()).item())
        if len(self.channels) != vshape[1]:
            raise ValueError(f"{where}: channels lists {len(self.channels)} names {list(self.channels)!r:.200} but "
                             f"values has {vshape[1]} columns")
        self.n_samples = int(vshape[0])
        self.gaps = self._gaps(gaps, where)
        self._units = self._unit_names(units, where)
        self._gravity = self._gravity_flag(gravity, where)
        self._vdtype, self._ldtype, self._voff, self._loff = vdtype, ldtype, voff, loff
        self._n_samples_verified = self._stored_exactly

    @staticmethod
    def _small(zf: zipfile.ZipFile, key: str, where: str) -> np.ndarray:
        info = zf.getinfo(f"{key}.npy")
        mwhere = f"{where} member {key!r}"
        if info.file_size > _SMALL_MEMBER_BYTES:
            raise ValueError(f"{mwhere} is {info.file_size} bytes; expected a small array (at most "
                             f"{_SMALL_MEMBER_BYTES} bytes)")
        with zf.open(info) as fh:
            data = fh.read(_SMALL_MEMBER_BYTES + 1)
        buf = io.BytesIO(data)
        shape, fortran, dtype = _read_npy_header(buf, mwhere)
        off = buf.tell()
        if _member_bytes(shape, dtype) != len(data) - off:
            raise ValueError(f"{mwhere}: its header states {shape} of {dtype} ({_member_bytes(shape, dtype)} bytes) "
                             f"but it holds {len(data) - off} bytes")
        arr = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=off)
        return arr.reshape(shape, order="F" if fortran else "C")

    def _big_header(self, zf: zipfile.ZipFile, key: str, where: str):
        info = zf.getinfo(f"{key}.npy")
        mwhere = f"{where} member {key!r}"
        with zf.open(info) as fh:
            shape, fortran, dtype = _read_npy_header(fh, mwhere)
            off = fh.tell()
        if len(shape) >= 1 and dtype.kind in "fiu" and _member_bytes(shape, dtype) != info.file_size - off:
            raise ValueError(f"{mwhere}: its header states shape {shape} of {dtype} "
                             f"({_member_bytes(shape, dtype)} bytes) but the member holds {info.file_size - off} "
                             "bytes; the file is truncated or corrupt")
        if key == "values":
            self._stored_exactly = (info.compress_type == zipfile.ZIP_STORED
                                    and info.compress_size == info.file_size <= self.path.stat().st_size)
        return shape, fortran, dtype, off

    @staticmethod
    def _names(arr: np.ndarray, kind: str, where: str, limit: int) -> tuple[str, ...]:
        if arr.dtype.kind != "U" or arr.ndim > 1:
            raise ValueError(f"{kind} in {where} must be a 1-D array of strings, got dtype {arr.dtype} of shape "
                             f"{arr.shape}")
        return check_names(kind, np.atleast_1d(arr).tolist(), where=where, limit=limit)

    def _unit_names(self, units: np.ndarray | None, where: str) -> tuple[str, ...] | None:
        """The optional ``units`` member: (C,) str, one physical unit per channel ('g', 'm/s^2', 'rad/s',
        'deg/s', ...; '' for undeclared)."""
        if units is None:
            return None
        if units.dtype.kind != "U" or units.ndim != 1 or units.shape[0] != len(self.channels):
            raise ValueError(f"units in {where} must be a 1-D array of {len(self.channels)} strings (one unit per "
                             f"channel {list(self.channels)!r:.200}, e.g. 'g', 'm/s^2', 'rad/s', 'deg/s'), got "
                             f"dtype {units.dtype} of shape {units.shape}")
        out = tuple(str(u).strip() for u in units.tolist())
        long = [u for u in out if len(u) > MAX_NAME_CHARS]
        if long:
            raise ValueError(f"units in {where} has a unit of {len(long[0])} characters; expected at most "
                             f"{MAX_NAME_CHARS}")
        return out

    @staticmethod
    def _gravity_flag(gravity: np.ndarray | None, where: str) -> bool | None:
        """The optional ``gravity`` member: one bool (True: accelerometer includes gravity)."""
        if gravity is None:
            return None
        if gravity.dtype.kind != "b" or gravity.size != 1:
            raise ValueError(f"gravity in {where} must be one bool (True: the accelerometer includes gravity, False: "
                             f"gravity removed), got dtype {gravity.dtype} of shape {gravity.shape}")
        return bool(gravity.reshape(-1)[0])

    def _gaps(self, gaps: np.ndarray | None, where: str) -> tuple[tuple[int, int], ...]:
        if gaps is None:
            return ()
        if gaps.dtype.kind not in "iu" or gaps.ndim != 2 or gaps.shape[1] != 2:
            raise ValueError(f"gaps in {where} must be an integer array of shape (G, 2), got dtype {gaps.dtype} "
                             f"of shape {gaps.shape}")
        return check_gaps(gaps.tolist(), self.n_samples, where)

    def _blocks(self) -> Iterator[StreamBlock]:
        where = self.where
        C, S, b = len(self.channels), self.n_samples, self.block_samples
        K = len(self.class_names)
        vsize, lsize = self._vdtype.itemsize * C, self._ldtype.itemsize
        gap_at = dict(self.gaps)
        cuts = sorted(gap_at) + [S]
        with zipfile.ZipFile(self.path) as zf, zf.open("values.npy") as fv, zf.open("labels.npy") as fl:
            fv.read(self._voff)
            fl.read(self._loff)
            done = 0
            ci = 0
            while done < S:
                while cuts[ci] <= done:
                    ci += 1
                n = min(b, S - done, cuts[ci] - done)
                vb = fv.read(n * vsize)
                lb = fl.read(n * lsize)
                if len(vb) != n * vsize or len(lb) != n * lsize:
                    got = min(len(vb) // vsize, len(lb) // lsize)
                    raise ValueError(f"{where} ends after {done + got} of the {S} samples its header states; "
                                     "the file is truncated")
                values = np.frombuffer(vb, dtype=self._vdtype).reshape(n, C).astype(np.float32, copy=False)  # (n*C,) -> (n, C)
                labels = np.frombuffer(lb, dtype=self._ldtype).astype(np.int64)
                bad = (labels < -1) | (labels >= K)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise ValueError(f"{where}: label {int(labels[i])} at sample {done + i} is outside the class "
                                     f"list (-1 or 0..{K - 1})")
                yield StreamBlock(values, labels, gap_at.get(done, 0))
                done += n
            # Reading to the end makes zipfile check the members' CRC-32.
            if fv.read(1) or fl.read(1):
                raise ValueError(f"{where} holds more data than its header states")


def load_npz(path: str | os.PathLike) -> Recording:
    """Load a generic recording file: :class:`NpzStream` read to the end.

    The ``.npz`` holds ``values`` (S, C) real, ``labels`` (S,) integer with -1
    for unlabeled samples, ``sample_rate_hz`` (scalar, Hz), ``channels`` (C,)
    str, ``class_names`` (K,) str, ``user`` (str) and optionally ``gaps`` and
    ``units`` ((C,) str, one physical unit per channel: 'g', 'm/s^2', 'rad/s',
    'deg/s'; '' for undeclared), which goes to ``meta["units"]`` as a
    channel -> unit mapping (:func:`imutune.signal.windows.make_windows`
    converts to the model's units), and ``gravity`` (bool scalar, to
    ``meta["gravity"]``: whether the accelerometer includes gravity).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        As :class:`NpzStream`, or if the contents fail the :class:`Recording`
        checks (e.g. NaN values); the message names the file.
    """
    return read_stream(NpzStream(path))


def save_npz(recording: Recording, path: str | os.PathLike) -> Path:
    """Write ``recording`` as a generic ``.npz`` recording file, atomically (with ``gaps`` if it has any, and
    ``units`` / ``gravity`` where ``meta`` declares them)."""
    if not isinstance(recording, Recording):
        raise ValueError(f"recording must be an imutune Recording, got {type(recording).__name__}")

    def _w(tmp: str) -> None:
        extra = {"gaps": np.asarray(recording.gaps, dtype=np.int64).reshape(-1, 2)} if recording.gaps else {}
        declared = recording.meta.get("units") if isinstance(recording.meta, dict) else None
        if isinstance(declared, dict):
            extra["units"] = np.array([str(declared.get(c) or "") for c in recording.channels], dtype=str)
        elif isinstance(declared, (list, tuple)) and len(declared) == len(recording.channels):
            extra["units"] = np.array([str(u or "") for u in declared], dtype=str)
        gravity = declared_gravity(recording)
        if gravity is not None:
            extra["gravity"] = np.bool_(gravity)
        with open(tmp, "wb") as fh:
            np.savez(fh, values=recording.values, labels=recording.labels,
                     sample_rate_hz=np.float64(recording.sample_rate_hz),
                     channels=np.array(recording.channels, dtype=str),
                     class_names=np.array(recording.class_names, dtype=str),
                     user=np.array(recording.user, dtype=str), **extra)
    return write_with_atomic(path, _w)


class NpzStreamWriter:
    """Write a generic ``.npz`` recording incrementally (constant memory), atomically.

    The archive has the members :func:`load_npz` and :class:`NpzStream` read,
    with ``values`` (S, C) float32 and ``labels`` (S,) int64 stored
    uncompressed. ``values`` is streamed straight into its zip member; labels
    go to a temporary file and are copied into theirs on :meth:`close`. The
    destination appears (atomic rename) only when exactly ``n_samples``
    samples were written and the writer closed without error.

    Parameters
    ----------
    path : path-like
        Destination ``.npz``.
    n_samples : int
        Total samples S that will be written (the ``.npy`` header needs it).
    channels, class_names : sequence of str
    sample_rate_hz : float
    user : str

    Examples
    --------
    >>> with NpzStreamWriter("day.npz", n_samples=S, channels=ch, class_names=cls,
    ...                      sample_rate_hz=100.0, user="u1") as w:   # doctest: +SKIP
    ...     for values, labels in chunks:
    ...         w.write(values, labels)
    """

    def __init__(self, path: str | os.PathLike, *, n_samples: int, channels: Sequence[str],
                 class_names: Sequence[str], sample_rate_hz: float, user: str) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() != ".npz":
            raise ValueError(f"path {str(self.path)!r} must end in .npz")
        where = f"NpzStreamWriter for {str(self.path)!r}"
        self.n_samples = V.check_int_at_least("n_samples", n_samples, 0)
        if not list(channels) or not list(class_names):
            raise ValueError("channels and class_names must both be non-empty")
        self.channels = check_names("channels", channels, where=where, limit=MAX_CHANNELS)
        self.class_names = check_names("class_names", class_names, where=where, limit=MAX_CLASSES)
        self.sample_rate_hz = check_sample_rate(sample_rate_hz, where=where)
        self.user = str(user)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._labels_tmp = tempfile.TemporaryFile()
        self._zf = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        C = len(self.channels)
        self._vfh = self._zf.open("values.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_1_0(self._vfh, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                                                         "fortran_order": False, "shape": (self.n_samples, C)})
        self.written = 0
        self._closed = False

    def write(self, values: np.ndarray, labels: np.ndarray) -> None:
        """Append samples: ``values`` (n, C) (cast to float32), ``labels`` (n,) int in [-1, K)."""
        if self._closed:
            raise ValueError("the writer is closed")
        v = np.asarray(values)
        lab = np.asarray(labels)
        C, K = len(self.channels), len(self.class_names)
        if v.ndim != 2 or v.shape[1] != C:
            raise ValueError(f"values must have shape (n, {C}), got {v.shape}")
        if v.dtype.kind not in "fiu":
            raise ValueError(f"values must be real numbers, got dtype {v.dtype}")
        if lab.shape != (v.shape[0],):
            raise ValueError(f"labels must have shape ({v.shape[0]},), got {lab.shape}")
        lab = V.check_labels("labels", lab, K)
        if self.written + v.shape[0] > self.n_samples:
            raise ValueError(f"writing {v.shape[0]} more samples would exceed n_samples={self.n_samples} "
                             f"({self.written} written)")
        self._vfh.write(np.ascontiguousarray(v, dtype="<f4").tobytes())
        self._labels_tmp.write(np.ascontiguousarray(lab, dtype="<i8").tobytes())
        self.written += v.shape[0]

    def close(self) -> Path:
        """Finish the archive and move it into place.

        Raises
        ------
        ValueError
            If fewer than ``n_samples`` samples were written (nothing is left
            at ``path``).
        """
        if self._closed:
            return self.path
        self._closed = True
        try:
            self._vfh.close()
            if self.written != self.n_samples:
                raise ValueError(f"{self.written} samples were written but n_samples={self.n_samples} was "
                                 f"declared; {str(self.path)!r} was not written")
            with self._zf.open("labels.npy", "w", force_zip64=True) as fl:
                np.lib.format.write_array_header_1_0(fl, {"descr": np.lib.format.dtype_to_descr(np.dtype("<i8")),
                                                          "fortran_order": False, "shape": (self.n_samples,)})
                self._labels_tmp.seek(0)
                while True:
                    buf = self._labels_tmp.read(1 << 20)
                    if not buf:
                        break
                    fl.write(buf)
            for key, arr in (("sample_rate_hz", np.float64(self.sample_rate_hz)),
                             ("channels", np.array(self.channels, dtype=str)),
                             ("class_names", np.array(self.class_names, dtype=str)),
                             ("user", np.array(self.user, dtype=str))):
                with self._zf.open(f"{key}.npy", "w") as fh:
                    np.lib.format.write_array(fh, np.asarray(arr), allow_pickle=False)
            self._zf.close()
            with open(self._tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self._tmp, self.path)
        except BaseException:
            self._abort()
            raise
        finally:
            self._labels_tmp.close()
        return self.path

    def _abort(self) -> None:
        try:
            self._zf.close()
        except Exception:
            pass
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self) -> "NpzStreamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True
            try:
                self._vfh.close()
            except Exception:
                pass
            self._labels_tmp.close()
            self._abort()

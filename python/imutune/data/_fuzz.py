"""Fuzzing harness for the recording readers (used by tests/test_data_fuzz.py and benchmarks/fuzz_readers.py).

Needs ``hypothesis`` (a test dependency); nothing in the package imports this module.

Four families of inputs, each a hypothesis strategy that draws a :class:`Case`
(file bytes plus what the generator deliberately broke):

* ``csv`` -- CSV text from a grammar: header order, BOM, quoting, CRLF;
  injected defects (duplicate / empty channel names, no channels, no rows, a
  stray quote, a wrong field count, non-increasing / NaN / Inf / text
  timestamps, non-numeric or over-long values, over-long labels, huge integer
  labels, non-UTF-8 bytes, NUL bytes, a field over the csv limit) and benign
  irregularities (gaps, blank lines, a cut-off last row, empty values).
* ``npz`` -- archives assembled member by member: dtypes (complex, bool,
  structured, strings), shapes (zero samples / channels), sample rates
  (1e308, 1e-300, True, complex, NaN), names (duplicate, empty, integer),
  duplicate members, raw (non-.npy) members, compression, gaps.
* ``shl`` -- SHL-2018 folders: order values (duplicates, >= 2**63, negative,
  text, "3.0"), frame lengths, label codes, NaN / text values, missing files,
  line-count mismatches.
* ``mutate`` -- byte-level mutations (flips, deletions, insertions,
  truncation, duplication) of seed files: the reliability-repro set and valid
  generated files.

:func:`run_case` feeds one case to a reader (eager or stream) and classifies
the outcome: ``valid`` (a Recording, or a fully read stream, passing the
invariants), ``clean_error`` (``ValueError``/``FileNotFoundError`` naming the
file), ``unnamed_error`` (a documented type without the file name),
``wrapped_internal`` (a documented type wrapping an ``AttributeError``,
``TypeError``, ``IndexError``, ``KeyError``, ``NameError`` or
``AssertionError``: a bug hidden behind the guard), ``traceback`` (any other
exception type), ``silent_accept`` (accepted although the generator broke the
structure, rows went missing, or an invariant fails) and ``hang`` (set by the
caller's timer).
"""
from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from .csv import CsvStream, load_csv
from .npz import NpzStream, load_npz
from .recording import MAX_CHANNELS, MAX_CLASSES, SAMPLE_RATE_RANGE_HZ, Stream
from .shl2018 import Shl2018Stream, load_shl2018

__all__ = ["Case", "finite_only", "csv_cases", "npz_cases", "shl_cases", "mutate_cases", "run_case", "OUTCOMES", "STRATEGIES",
           "seed_files"]

OUTCOMES = ("valid", "clean_error", "unnamed_error", "wrapped_internal", "traceback", "silent_accept", "hang")
_INTERNAL = ("AttributeError", "TypeError", "IndexError", "KeyError", "NameError", "AssertionError",
             "UnboundLocalError", "ZeroDivisionError", "RecursionError")


@dataclass
class Case:
    """One fuzz input.

    ``files`` maps relative paths to bytes (one file, or an SHL folder's
    files); ``target`` is the path the reader opens; ``broken`` lists the
    defects the generator injected on purpose (a reader must reject the
    input; ``eager_broken`` ones only the eager loader, e.g. NaN values);
    ``rows`` is the number of data rows a CSV holds (for the data-loss
    check) and ``values`` the (S, C) float32 samples the file holds (for the
    corruption check), None when unknown.
    """

    kind: str
    files: dict
    target: str
    broken: tuple = ()
    eager_broken: tuple = ()
    rows: int | None = None
    values: np.ndarray | None = None
    kwargs: dict = field(default_factory=dict)

    def write(self, folder: Path) -> Path:
        for rel, data in self.files.items():
            p = folder / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        return folder / self.target

    def __repr__(self) -> str:   # short, for hypothesis failure reports
        size = sum(len(v) for v in self.files.values())
        return f"Case({self.kind}, {self.target}, {size} bytes, broken={self.broken}, eager_broken={self.eager_broken})"


# --------------------------------------------------------------------------- CSV grammar


_NAMES = st.sampled_from(["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z", "mag", "Acc X", "é", "a,b"])
_CLASS = st.sampled_from(["Walk", "Run", "Still", "0", "1", "2", "7", "10000000", "-1", "", "  Walk  ", "walk",
                          "1e3", "99999999999999999999999999", "+3", "Ünïcode"])


def _fmt_float(x: float) -> str:
    return repr(float(x))


@st.composite
def csv_cases(draw) -> Case:
    broken: list[str] = []
    eager_broken: list[str] = []
    n_ch = draw(st.integers(1, 4))
    chans = draw(st.lists(_NAMES, min_size=n_ch, max_size=n_ch, unique=True))
    defect = draw(st.sampled_from(["none"] * 6 + ["dup_channel", "empty_channel", "no_channels", "missing_label"]))
    if defect == "dup_channel":
        chans = chans + [chans[0]]
        broken.append(defect)
    elif defect == "empty_channel":
        chans = chans + [""]
        broken.append(defect)
    elif defect == "no_channels":
        chans = []
        broken.append(defect)
    cols = ["timestamp_s"] + chans + ([] if defect == "missing_label" else ["label"])
    if defect == "missing_label":
        broken.append(defect)
    order = draw(st.permutations(range(len(cols))))
    cols = [cols[i] for i in order]
    fs = draw(st.sampled_from([1.0, 25.0, 50.0, 100.0, 1000.0]))
    n = draw(st.integers(0, 40))
    if n == 0:
        broken.append("no_rows")
    t = np.arange(n) / fs + draw(st.sampled_from([0.0, 1e9, -5.0]))
    if n > 3 and draw(st.booleans()):
        t[n // 2:] += draw(st.integers(2, 50)) / fs          # a gap: benign
    labels = draw(st.lists(_CLASS, min_size=n, max_size=n))
    if n and all(lab.strip() in ("", "-1") for lab in labels):
        broken.append("no_labels")                           # no class list can be inferred
    vals = draw(st.lists(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=len(chans),
                                  max_size=len(chans)), min_size=n, max_size=n))
    rows = []
    for i in range(n):
        rec = {"timestamp_s": f"{t[i]:.9g}" if abs(t[i]) < 1e6 else _fmt_float(t[i]), "label": labels[i]}
        fields = []
        for c in cols:
            if c == "timestamp_s":
                fields.append(rec["timestamp_s"])
            elif c == "label":
                fields.append(rec["label"])
            else:
                fields.append(None)
        k = 0
        for j, c in enumerate(cols):
            if fields[j] is None:
                fields[j] = _fmt_float(vals[i][k])
                k += 1
        rows.append(fields)
    # ---- injected defects in the rows
    inject = draw(st.sampled_from(["none"] * 8 + ["stray_quote", "field_count", "repeat_ts", "nan_ts", "inf_ts",
                                                  "text_ts", "text_value", "long_value", "long_label", "blank_value",
                                                  "nan_value", "huge_value", "not_utf8", "nul", "big_field"]))
    if n >= 2 and inject != "none" and "label" in cols and chans:
        i = draw(st.integers(0, n - 1))
        ti = cols.index("timestamp_s")
        vi = next(j for j, c in enumerate(cols) if c not in ("timestamp_s", "label"))
        li = cols.index("label")
        if inject == "stray_quote":
            rows[i][vi] = '"' + rows[i][vi]
            broken.append(inject)
        elif inject == "field_count" and i < n - 1:
            rows[i] = rows[i] + ["1"]
            broken.append(inject)
        elif inject == "repeat_ts" and i > 0:
            rows[i][ti] = rows[i - 1][ti]
            broken.append(inject)
        elif inject in ("nan_ts", "inf_ts", "text_ts"):
            rows[i][ti] = {"nan_ts": "nan", "inf_ts": draw(st.sampled_from(["inf", "-inf", "1e999"])),
                           "text_ts": "12:00:01"}[inject]
            broken.append(inject)
        elif inject == "text_value":
            rows[i][vi] = draw(st.sampled_from(["abc", "1,5", "1+2j", "0x10", "--1"]))
            broken.append(inject)
        elif inject == "long_value":
            rows[i][vi] = "1" * 100
            broken.append(inject)
        elif inject == "long_label":
            rows[i][li] = "L" * 300
            broken.append(inject)
        elif inject == "blank_value":
            rows[i][vi] = ""
            eager_broken.append(inject)
        elif inject == "nan_value":
            rows[i][vi] = draw(st.sampled_from(["nan", "inf", "-inf", "NaN"]))
            eager_broken.append(inject)
        elif inject == "huge_value":
            rows[i][vi] = "1e39"                             # inf in float32
            eager_broken.append(inject)
        elif inject in ("not_utf8", "nul", "big_field"):
            pass                                             # applied to the bytes below
    expected = None
    if not broken and chans:
        ci = [j for j, c in enumerate(cols) if c not in ("timestamp_s", "label")]
        try:
            with np.errstate(over="ignore"):
                expected = np.array([[float(r[j]) if r[j].strip() else np.nan for j in ci] for r in rows],
                                    dtype=np.float64).reshape(n, len(ci)).astype(np.float32)   # (n*C,) -> (n, C)
        except ValueError:
            expected = None

    def q(s: str) -> str:
        return '"' + s.replace('"', '""') + '"' if ("," in s or '"' in s[1:] or s.startswith(" ")) else s
    quote_all = draw(st.booleans())
    header = ",".join(('"' + c + '"') if quote_all else q(c) for c in cols)
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    lines = [header] + [",".join(f if (f.startswith('"') and f.count('"') == 1) else q(f) for f in r) for r in rows]
    if n >= 3 and draw(st.booleans()):
        lines.insert(draw(st.integers(1, len(lines))), "")   # a blank line: skipped
    n_rows = n
    if n >= 2 and draw(st.integers(0, 5)) == 0 and not any(b in broken for b in ("field_count",)) and "label" in cols:
        cut = lines[-1].split(",")[0]
        lines.append(cut)                                    # a cut-off last row: dropped and counted
        n_rows += bool(cut.strip())
    text = eol.join(lines) + (eol if draw(st.booleans()) else "")
    data = text.encode("utf-8")
    if draw(st.integers(0, 4)) == 0:
        data = b"\xef\xbb\xbf" + data                        # BOM: benign
    if inject == "not_utf8" and n >= 1:
        pos = draw(st.integers(len(header) + 1, len(data)))
        data = data[:pos] + b"\xe9" + data[pos:]
        broken.append(inject)
    elif inject == "nul" and n >= 1:
        pos = draw(st.integers(len(header) + 1, len(data)))
        data = data[:pos] + b"\x00" + data[pos:]
        broken.append(inject)
    elif inject == "big_field" and n >= 1:
        data = data + b"0.5," + b"7" * 131_100 + b",x\n"
        broken.append(inject)
    tp = []
    if "timestamp_s" in cols:
        ti = cols.index("timestamp_s")
        for r in rows:
            try:
                tp.append(float(r[ti]))
            except ValueError:
                tp.append(float("nan"))
    tp = np.asarray(tp, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        dtp = np.diff(tp)
    if tp.size and (not np.isfinite(tp).all() or not (dtp > 0).all() or not np.isfinite(dtp).all()):
        if not any(b in broken for b in ("repeat_ts", "nan_ts", "inf_ts", "text_ts")):
            broken.append("non_increasing")                  # float formatting can collide (e.g. 1e9 + i/1000)
    kwargs = {}
    if draw(st.integers(0, 3)) == 0:
        kwargs["sample_rate_hz"] = draw(st.sampled_from([50.0, 100.0, 1e308, 1e-300, True, 0.0]))
        if not isinstance(kwargs["sample_rate_hz"], bool) and 1e-3 <= kwargs["sample_rate_hz"] <= 1e5:
            pass
        else:
            broken.append("bad_rate_kwarg")
    if "sample_rate_hz" not in kwargs and n >= 1:
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            med = float(np.median(np.diff(tp[:1001]))) if n >= 2 else float("nan")
            ok = med > 0 and 1e-3 <= 1.0 / med <= 1e5
        if not ok and not broken:
            broken.append("inferred_rate")                   # one row, or a rate outside the accepted range
    name = draw(st.sampled_from(["rec.csv", "my data.csv", "ÜBER.csv", "x.CSV"]))
    return Case("csv", {name: data}, name, tuple(broken), tuple(eager_broken), rows=n_rows, kwargs=kwargs,
                values=expected if not broken else None)


# --------------------------------------------------------------------------- npz assembly


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


_NPZ_DEFECTS = ("zero_samples", "zero_channels", "structured", "string_values", "bool_values", "complex_values",
                "fortran", "label_range", "label_dtype", "bad_rate", "dup_channel", "empty_channel", "int_channels",
                "channel_count", "long_name", "int_classes", "no_classes", "dup_classes", "bad_user",
                "missing_member", "raw_member", "dup_member", "bad_gaps")


@st.composite
def npz_cases(draw) -> Case:
    """An archive with at most one injected defect (none in about half of the cases), plus benign variety
    (dtypes, byte order, compression, gaps, NaN values that only the eager loader rejects)."""
    defect = draw(st.sampled_from(("none",) * 20 + _NPZ_DEFECTS))
    broken = [] if defect == "none" else [defect]
    eager_broken: list[str] = []
    S = 0 if defect == "zero_samples" else draw(st.sampled_from([1, 2, 5, 17, 300]))
    C = 0 if defect == "zero_channels" else draw(st.sampled_from([1, 2, 3]))
    rng = np.random.default_rng(S * 7 + C)
    values = rng.normal(size=(S, C)) * 10
    if defect == "structured":
        values = np.zeros((S, C), dtype=[("a", "<f4"), ("b", "<i4")])
    elif defect == "string_values":
        values = values.astype("<U3")
    elif defect == "bool_values":
        values = values > 0
    elif defect == "complex_values":
        values = values.astype("<c8") + 1j
    else:
        values = values.astype(draw(st.sampled_from(["<f4", "<f4", "<f8", ">f4", "<i2", "|u1", "<f2"])))
        if values.dtype.kind == "f" and S * C and draw(st.integers(0, 5)) == 0:
            values.flat[draw(st.integers(0, S * C - 1))] = draw(st.sampled_from([np.nan, np.inf]))
            eager_broken.append("nan_value")
    if defect == "fortran":
        values = np.asfortranarray(np.zeros((max(S, 2), max(C, 2)), np.float32))
        S, C = values.shape
    K = draw(st.integers(1, 3))
    labels = rng.integers(-1, K, size=S)
    if defect == "label_range" and S:
        labels[draw(st.integers(0, S - 1))] = draw(st.sampled_from([K, -2, 10 ** 6]))
    if defect == "label_dtype":
        labels = labels.astype(draw(st.sampled_from(["<f8", "|b1", "<c16"])))
    else:
        labels = labels.astype(draw(st.sampled_from(["<i8", "<i8", "<i4", ">i8"])))
    sr = draw(st.sampled_from([np.float64(50.0), np.float32(100.0), np.int64(50), np.float64(1e5),
                               np.float64(1e-3)]))
    if defect == "bad_rate":
        sr = draw(st.sampled_from([np.float64(0.0), np.float64(-1.0), np.float64(1e308), np.float64(1e-300),
                                   np.bool_(True), np.complex128(50 + 1j), np.float64(np.nan), np.float64(np.inf),
                                   np.array("50"), np.array([50.0, 50.0]), np.float64(100000.1)]))
    chans = np.array([f"c{i}" for i in range(C)])
    if defect == "dup_channel":
        chans = np.array(["c0"] * C) if C >= 2 else np.array(["c0", "c0"])
        if C < 2:
            broken[-1] = "channel_count"
    elif defect == "empty_channel":
        chans = np.array([" "] + [f"c{i}" for i in range(1, C)]) if C else np.array([""])
    elif defect == "int_channels":
        chans = np.arange(C)
    elif defect == "channel_count":
        chans = np.array([f"c{i}" for i in range(C + 1)])
    elif defect == "long_name":
        chans = np.array(["x" * 300] + [f"c{i}" for i in range(1, C)]) if C else np.array(["x" * 300])
    classes = np.array([f"k{i}" for i in range(K)])
    if defect == "int_classes":
        classes = np.array(K)
    elif defect == "no_classes":
        classes = np.array([], dtype="<U1")
    elif defect == "dup_classes":
        classes = np.array(["k"] * (K + 1))
    user = np.array("u1") if defect != "bad_user" else draw(st.sampled_from([np.array(7), np.array(["a", "b"])]))
    members = {"values.npy": _npy(values), "labels.npy": _npy(labels), "sample_rate_hz.npy": _npy(np.asarray(sr)),
               "channels.npy": _npy(chans), "class_names.npy": _npy(classes), "user.npy": _npy(user)}
    if S >= 3 and draw(st.integers(0, 4)) == 0:
        members["gaps.npy"] = _npy(np.array([[1, 4]], dtype=np.int64))
    if defect == "bad_gaps":
        members["gaps.npy"] = _npy(draw(st.sampled_from([np.array([[S + 5, 1]]), np.array([[1, 0]]),
                                                         np.array([1.5, 2.0]), np.array([[0, 3]])])))
    if defect == "missing_member":
        del members[draw(st.sampled_from(sorted(k for k in members if k != "gaps.npy")))]
    if defect == "raw_member":
        members[draw(st.sampled_from(sorted(members)))] = b"not an npy member" + bytes(draw(st.integers(0, 40)))
    compress = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    buf = io.BytesIO()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                      # zipfile warns on duplicate names
        with zipfile.ZipFile(buf, "w", compression=compress) as zf:
            for k in draw(st.permutations(sorted(members))):
                zf.writestr(k, members[k])
            if defect == "dup_member":
                k = draw(st.sampled_from(sorted(members)))
                zf.writestr(k, members[k])
    expected = values.astype(np.float32) if not broken else None
    return Case("npz", {"rec.npz": buf.getvalue()}, "rec.npz", tuple(broken), tuple(eager_broken), values=expected)


# --------------------------------------------------------------------------- SHL folders


@st.composite
def shl_cases(draw) -> Case:
    broken: list[str] = []
    eager_broken: list[str] = []
    n = draw(st.integers(1, 4))
    F = draw(st.integers(1, 12))
    base = draw(st.lists(st.integers(0, 20), min_size=n, max_size=n, unique=True))
    order_lines = [str(o) for o in base]
    kind = draw(st.sampled_from(["ok"] * 6 + ["dup", "huge", "neg", "text", "float", "blank", "count"]))
    if kind == "dup" and n >= 2:
        order_lines[1] = order_lines[0]
        broken.append("dup_order")
    elif kind == "huge":
        order_lines[-1] = draw(st.sampled_from(["99999999999999999999", "9223372036854775808", "1e30", "inf"]))
        broken.append("huge_order")
    elif kind == "neg":
        order_lines[0] = "-3"
        broken.append("neg_order")
    elif kind == "text":
        order_lines[0] = "three"
        broken.append("text_order")
    elif kind == "float":
        order_lines[0] = order_lines[0] + ".0"            # benign: "12.0"
    elif kind == "blank":
        order_lines = []
        broken.append("empty_order")
    elif kind == "count":
        order_lines = order_lines + [str(max(base) + 1)]
        broken.append("order_count")
    codes = np.random.default_rng(n * F).integers(0, 9, size=(n, F))
    lab_lines = [" ".join(str(int(c)) for c in row) for row in codes]
    lk = draw(st.sampled_from(["ok"] * 6 + ["code9", "half", "short", "text"]))
    if lk == "code9":
        lab_lines[-1] = lab_lines[-1].rsplit(" ", 1)[0] + " 9" if F > 1 else "9"
        broken.append("label_code")
    elif lk == "half":
        lab_lines[-1] = "1.5" + lab_lines[-1][1:]
        broken.append("label_code")
    elif lk == "short" and n >= 2 and F >= 2:
        lab_lines[-1] = " ".join(lab_lines[-1].split()[:-1])
        broken.append("short_line")
    elif lk == "text":
        lab_lines[0] = "x" + lab_lines[0]
        broken.append("text_label")
    chans = ["Acc_x", "Gyr_z"][: draw(st.integers(1, 2))]
    files = {"train/Label.txt": ("\n".join(lab_lines) + "\n").encode(),
             "train/train_order.txt": ("\n".join(order_lines) + "\n").encode()}
    for c in chans:
        rows = np.random.default_rng(len(c)).normal(size=(n, F)).astype(np.float32)
        files[f"train/{c}.txt"] = ("\n".join(" ".join(f"{v:.6f}" for v in r) for r in rows) + "\n").encode()
    dk = draw(st.sampled_from(["ok"] * 6 + ["nan", "text", "missing", "lines", "utf"]))
    target_ch = f"train/{chans[0]}.txt"
    if dk == "nan":
        files[target_ch] = b"nan" + files[target_ch][files[target_ch].index(b" ") if F > 1 else
                                                      files[target_ch].index(b"\n"):]
        eager_broken.append("nan_value")
    elif dk == "text":
        files[target_ch] = b"abc" + files[target_ch]
        broken.append("text_value")
    elif dk == "missing":
        del files[target_ch]
        broken.append("missing_channel")
    elif dk == "lines":
        files[target_ch] = files[target_ch] + b"1 " * F + b"\n"
        broken.append("line_count")
    elif dk == "utf":
        files[target_ch] = b"\xff\xfe" + files[target_ch]
        broken.append("not_utf8")
    kwargs = {"channels": chans}
    rate = draw(st.sampled_from([100.0] * 6 + [1e308, True, 0.0]))
    if rate != 100.0:
        kwargs["sample_rate_hz"] = rate
        broken.append("bad_rate")
    return Case("shl", files, "train", tuple(broken), tuple(eager_broken), kwargs=kwargs)


# --------------------------------------------------------------------------- byte mutations of seeds


def seed_files(repro: Path | None = None) -> list[tuple[str, bytes]]:
    """(name, bytes) seeds: every file of the reliability-repro set (if given) plus valid generated files."""
    seeds: list[tuple[str, bytes]] = []
    if repro is not None and Path(repro).is_dir():
        for p in sorted(Path(repro).iterdir()):
            if p.is_file() and p.suffix.lower() in (".csv", ".npz"):
                seeds.append((p.name, p.read_bytes()))
    rows = "\n".join(f"{i / 50:.2f},{np.sin(i):.4f},{np.cos(i):.4f},{'Walk' if i % 20 < 10 else 'Run'}"
                     for i in range(60))
    seeds.append(("valid.csv", ("timestamp_s,acc_x,acc_y,label\n" + rows + "\n").encode()))
    for comp, name in ((zipfile.ZIP_STORED, "valid.npz"), (zipfile.ZIP_DEFLATED, "valid_z.npz")):
        rec = {"values": np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32),
               "labels": np.arange(40) % 2, "sample_rate_hz": np.float64(50.0), "channels": np.array(["a", "b"]),
               "class_names": np.array(["x", "y"]), "user": np.array("u")}
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=comp) as zf:
            for k, v in rec.items():
                zf.writestr(f"{k}.npy", _npy(v))
        seeds.append((name, buf.getvalue()))
    return seeds


def mutate_cases(seeds: list[tuple[str, bytes]]):
    """Strategy: a seed file with 0..4 byte-level mutations (the unmutated seed is drawn too)."""
    @st.composite
    def _draw(draw) -> Case:
        name, data = draw(st.sampled_from(seeds))
        data = bytearray(data)
        for _ in range(draw(st.integers(0, 4))):
            if not data:
                break
            op = draw(st.sampled_from(["flip", "flip", "delete", "insert", "truncate", "dup", "quote", "byte"]))
            i = draw(st.integers(0, len(data) - 1))
            if op == "flip":
                data[i] ^= 1 << draw(st.integers(0, 7))
            elif op == "byte":
                data[i] = draw(st.integers(0, 255))
            elif op == "delete":
                del data[i:i + draw(st.integers(1, 64))]
            elif op == "insert":
                data[i:i] = draw(st.binary(min_size=1, max_size=16))
            elif op == "truncate":
                del data[i:]
            elif op == "dup":
                j = min(len(data), i + draw(st.integers(1, 256)))
                data[i:i] = data[i:j]
            elif op == "quote":
                data[i:i] = b'"'
        return Case("mutate", {name: bytes(data)}, name)
    return _draw()


STRATEGIES = {"csv": csv_cases, "npz": npz_cases, "shl": shl_cases}


# --------------------------------------------------------------------------- running one case


def finite_only(detail: str) -> bool:
    """Whether an error is the eager loader's finiteness rule (a Recording holds finite values; a stream passes
    NaN/Inf/empty values on), the one way the two readers may disagree."""
    return "NaN/Inf" in detail or "is empty; expected a finite number" in detail


def _invariants(rec_or_stream, eager: bool) -> str | None:
    """The structure every accepted input must have; a message if it does not."""
    s = rec_or_stream
    ch, cls = tuple(s.channels), tuple(s.class_names)
    if not ch or len(set(ch)) != len(ch) or any(not str(c).strip() for c in ch) or len(ch) > MAX_CHANNELS:
        return f"bad channels {ch!r:.80}"
    if not cls or len(set(cls)) != len(cls) or any(not str(c).strip() for c in cls) or len(cls) > MAX_CLASSES:
        return f"bad classes {cls!r:.80}"
    lo, hi = SAMPLE_RATE_RANGE_HZ
    if isinstance(s.sample_rate_hz, bool) or not (lo <= float(s.sample_rate_hz) <= hi):
        return f"bad sample rate {s.sample_rate_hz!r}"
    if eager:
        if s.n_samples < 1 or s.values.dtype != np.float32 or not np.isfinite(s.values).all():
            return "bad values"
        if s.labels.min() < -1 or s.labels.max() >= len(cls):
            return "labels outside the class list"
    return None


def _read(case: Case, path: Path, mode: str):
    """Run the reader; returns (object with channels/class_names/sample_rate_hz, samples, dropped, values)."""
    kw = dict(case.kwargs)
    if mode == "eager":
        if case.kind == "shl":
            recs = load_shl2018(path, **kw)
            values = np.concatenate([r.values for r in recs])
            return recs[0], int(values.shape[0]), 0, values, recs
        loader = load_npz if path.suffix.lower() == ".npz" else load_csv
        rec = loader(path, **kw)
        return rec, rec.n_samples, int(rec.meta.get("dropped_rows", 0)), rec.values, [rec]
    if case.kind == "shl":
        stream: Stream = Shl2018Stream(path, **kw)
    elif path.suffix.lower() == ".npz":
        stream = NpzStream(path, **kw)
    else:
        stream = CsvStream(path, **kw)
    blocks = list(stream.blocks())
    n = sum(b.n for b in blocks)
    values = np.concatenate([b.values for b in blocks]) if blocks else np.zeros((0, len(stream.channels)), np.float32)
    for b in blocks:
        if b.values.ndim != 2 or b.values.shape[1] != len(stream.channels) or b.labels.shape != (b.n,):
            raise AssertionError("block shape disagrees with the stream's channels")
        if b.n and (b.labels.min() < -1 or b.labels.max() >= len(stream.class_names)):
            raise AssertionError("stream labels outside the class list")
    return stream, n, int(stream.dropped_rows), values, None


def run_case(case: Case, folder: Path, mode: str) -> tuple[str, str, object]:
    """Write ``case`` into ``folder`` and read it with the ``mode`` (``"eager"`` or ``"stream"``) reader.

    Returns ``(outcome, detail, values)``: outcome in :data:`OUTCOMES` (never
    ``hang``: the caller times), detail a short message, values the samples
    read (an array) for a valid outcome, else None.
    """
    path = case.write(folder)
    try:
        obj, n, dropped, values, recs = _read(case, path, mode)
    except (ValueError, FileNotFoundError) as e:
        msg = str(e)
        inner = type(e.__cause__).__name__ if e.__cause__ is not None else ""
        if inner in _INTERNAL or any(f"({t}:" in msg for t in _INTERNAL):
            return "wrapped_internal", f"{type(e).__name__}: {msg[:300]}", None
        named = str(path) in msg or str(folder) in msg
        return ("clean_error" if named else "unnamed_error"), f"{type(e).__name__}: {msg[:300]}", None
    except MemoryError:
        return "traceback", "MemoryError", None
    except Exception as e:   # noqa: BLE001 - the harness classifies every outcome
        return "traceback", f"{type(e).__name__}: {str(e)[:300]}", None
    if case.broken or (mode == "eager" and case.eager_broken):
        return "silent_accept", f"accepted although broken: {case.broken + case.eager_broken}", None
    bad = _invariants(obj, mode == "eager")
    if bad is None and recs is not None:
        bad = next((b for b in (_invariants(r, True) for r in recs) if b), None)
    if bad:
        return "silent_accept", bad, None
    if case.values is not None and not np.array_equal(values, case.values, equal_nan=True):
        return "silent_accept", "the values read differ from the values the file holds", None
    if case.rows is not None and n + dropped != case.rows:
        return "silent_accept", f"{case.rows} rows in the file, {n} read and {dropped} counted as dropped", None
    return "valid", f"{n} samples", values


def isolated_dir(root: Path, i: int) -> Path:
    """A fresh folder ``root/case<i>``."""
    d = Path(root) / f"case{i}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def tidy(folder: Path) -> None:
    """Remove a case folder (files only: cases write at most one folder level)."""
    for dirpath, _dirs, files in os.walk(folder, topdown=False):
        for f in files:
            os.unlink(os.path.join(dirpath, f))
        os.rmdir(dirpath)

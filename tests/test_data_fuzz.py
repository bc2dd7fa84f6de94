"""Fuzzing the recording readers (issue 9): every input, through the eager loader and the stream reader, ends in
a valid recording or a ValueError / FileNotFoundError naming the file -- never another exception type, never an
accepted input whose structure the generator broke, never rows lost without being counted.

Strategies live in :mod:`imutune.data._fuzz` (shared with ``benchmarks/fuzz_readers.py``, which runs the long
profile: ``HYPOTHESIS_PROFILE=long`` or ``--long``, >= 10,000 inputs). Here a fixed, derandomized example budget
keeps these tests to a few seconds; set ``HYPOTHESIS_PROFILE=long`` to run them longer.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from imutune.data import _fuzz as F  # noqa: E402

REPRO = Path(__file__).parent / "data" / "repro"
_SCALE = 20 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 1


def _budget(n: int):
    return settings(max_examples=n * _SCALE, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def _check(case: F.Case) -> None:
    with tempfile.TemporaryDirectory() as d:
        eager, e_detail, e_values = F.run_case(case, Path(d) / "eager", "eager")
        stream, s_detail, s_values = F.run_case(case, Path(d) / "stream", "stream")
    assert eager in ("valid", "clean_error"), f"eager reader: {eager}: {e_detail} for {case!r}"
    assert stream in ("valid", "clean_error"), f"stream reader: {stream}: {s_detail} for {case!r}"
    if eager == "valid":   # one parser: whatever the loader accepts, the stream yields identically
        assert stream == "valid", f"eager accepted, stream rejected ({s_detail}) for {case!r}"
        np.testing.assert_array_equal(e_values, s_values)
    elif stream == "valid":
        assert F.finite_only(e_detail), f"stream accepted, eager rejected ({e_detail}) for {case!r}"


@_budget(120)
@given(case=F.csv_cases())
def test_fuzz_csv_readers(case):
    _check(case)


@_budget(120)
@given(case=F.npz_cases())
def test_fuzz_npz_readers(case):
    _check(case)


@_budget(80)
@given(case=F.shl_cases())
def test_fuzz_shl2018_readers(case):
    _check(case)


@_budget(150)
@given(case=F.mutate_cases(F.seed_files(REPRO)))
def test_fuzz_mutated_repro_and_valid_files(case):
    _check(case)


def test_fuzz_harness_flags_what_it_must():
    """The classifier itself: a broken input that is accepted is a silent accept, a named error is clean."""
    good = F.Case("csv", {"a.csv": b"timestamp_s,x,label\n0,1,a\n0.02,2,b\n"}, "a.csv")
    assert F.run_case(good, Path(tempfile.mkdtemp()), "eager")[0] == "valid"
    lying = F.Case("csv", good.files, "a.csv", broken=("pretend",))
    assert F.run_case(lying, Path(tempfile.mkdtemp()), "stream")[0] == "silent_accept"
    lost = F.Case("csv", good.files, "a.csv", rows=3)
    assert F.run_case(lost, Path(tempfile.mkdtemp()), "eager")[:2] == \
        ("silent_accept", "3 rows in the file, 2 read and 0 counted as dropped")
    corrupt = F.Case("csv", good.files, "a.csv", values=np.array([[1.0], [2.5]], np.float32))
    assert F.run_case(corrupt, Path(tempfile.mkdtemp()), "stream")[:2] == \
        ("silent_accept", "the values read differ from the values the file holds")
    bad = F.Case("csv", {"b.csv": b"timestamp_s,x,label\n"}, "b.csv")
    out, detail, _ = F.run_case(bad, Path(tempfile.mkdtemp()), "eager")
    assert out == "clean_error" and "b.csv' has no data rows" in detail

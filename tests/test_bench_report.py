"""imutune.bench.report: the fingerprinted JSON cache and the paired statistics the benchmarks share."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from imutune.bench.report import cached_json_value, paired_comparison
from scipy import stats


def test_cached_json_value_reuses_only_a_matching_fingerprint(tmp_path):
    path = tmp_path / "sub" / "cell.json"
    calls, seen = [], []

    def compute():
        calls.append(1)
        return {"u1": 0.5}

    assert cached_json_value(path, "fp1", "per_user", compute) == {"u1": 0.5} and len(calls) == 1
    assert json.loads(path.read_text()) == {"per_user": {"u1": 0.5}, "fingerprint": "fp1"}
    # same fingerprint: read back, not recomputed, and the reuse is logged with the name
    assert cached_json_value(path, "fp1", "per_user", compute, log=seen.append, name="pt") == {"u1": 0.5}
    assert len(calls) == 1 and seen == [f"[pt] reusing {path}"]
    # other settings, a file without the key, a foreign or truncated file: computed again and overwritten
    assert cached_json_value(path, "fp2", "per_user", compute) == {"u1": 0.5} and len(calls) == 2
    for text in ('{"fingerprint": "fp2"}', "[1, 2]", '{"per_user": '):
        path.write_text(text)
        cached_json_value(path, "fp2", "per_user", compute)
    assert len(calls) == 5 and json.loads(path.read_text())["fingerprint"] == "fp2"
    assert not list(path.parent.glob(".*.tmp"))                      # written atomically, nothing left behind


def test_load_average_text_gives_the_range_or_none():
    from imutune.bench.report import load_average_text

    assert load_average_text([1.25, 0.5, 2.0]) == "1-min load average 0.5-2.0"
    assert load_average_text([]) is None and load_average_text(None) is None


def test_recorded_load_text_pools_the_records_pairs_and_skips_records_without_one():
    from imutune.bench.report import recorded_load_text

    recs = [{"load_average_1min": [0.5, 1.5]}, {"macro_f1": 0.9}, {"load_average_1min": [2.0, 0.25]}]
    assert recorded_load_text(recs) == "1-min load average 0.2-2.0"
    assert recorded_load_text([{"macro_f1": 0.9}]) is None


def test_paired_comparison_matches_a_t_interval():
    a = np.array([0.8, 0.7, 0.9, 0.65, 0.75])
    b = np.array([0.7, 0.72, 0.85, 0.6, 0.7])
    r = paired_comparison(a, b)
    d = a - b
    h = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert r["wins"] == 4 and r["losses"] == 1 and r["ties"] == 0 and r["n"] == 5
    assert r["mean_diff"] == pytest.approx(d.mean())
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((d.mean() - h, d.mean() + h))
    one = paired_comparison([0.5], [0.4])
    assert one["ci_low"] is None and one["wins"] == 1
    with pytest.raises(ValueError, match=r"paired_comparison needs at least one pair"):
        paired_comparison([], [])

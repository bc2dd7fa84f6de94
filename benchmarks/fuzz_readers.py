"""Fuzz the recording readers (eager loaders and stream readers) and count the outcomes.

Every input goes through both the eager loader (``load_csv`` / ``load_npz`` /
``load_shl2018``) and the stream reader (``CsvStream`` / ``NpzStream`` /
``Shl2018Stream``, read to the end). Families and outcome classes are those of
:mod:`imutune.data._fuzz`: ``csv`` (grammar), ``npz`` (assembled archives),
``shl`` (SHL-2018 folders), ``mutate`` (byte mutations of the
reliability-repro files and valid files). A case running over 10 s is a hang
(interrupted with SIGALRM).

Writes ``fuzz_readers.json`` and ``fuzz_readers.md`` into ``--out``. Targets:
tracebacks 0, hangs 0, silent accepts 0 (also 0 unnamed errors, 0 wrapped
internal errors, 0 eager/stream disagreements).

    nice -n 10 python benchmarks/fuzz_readers.py --out runs/fuzz_readers_quick            # 200 per family
    HYPOTHESIS_PROFILE=long nice -n 10 python benchmarks/fuzz_readers.py --out runs/fuzz_readers   # 2,600 per family
    nice -n 10 python benchmarks/fuzz_readers.py --long --out runs/fuzz_readers                  # same
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from imutune._io import write_json_atomic, write_text_atomic
from imutune.bench.report import load_average_text
from imutune.data import _fuzz as F

ROOT = Path(__file__).resolve().parents[1]
HANG_S = 10


class _Hang(Exception):
    pass


def _alarm(signum, frame):   # noqa: ARG001
    raise _Hang()


def run(per_family: int, seed: int, repro: Path, examples_out: int = 5) -> dict:
    seeds = F.seed_files(repro)
    strategies = {"csv": F.csv_cases(), "npz": F.npz_cases(), "shl": F.shl_cases(), "mutate": F.mutate_cases(seeds)}
    signal.signal(signal.SIGALRM, _alarm)
    counts: dict = {}
    failures: dict = collections.defaultdict(list)
    timing: dict = {}
    work = Path(tempfile.mkdtemp(prefix="imutune-fuzz-"))
    for family, strat in strategies.items():
        c = collections.Counter()
        n_inputs = [0]
        slowest = [0.0]

        @hypothesis_seed(seed)
        @settings(max_examples=per_family, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck), derandomize=False)
        @given(case=strat)
        def one(case):
            n_inputs[0] += 1
            res = {}
            for mode in ("eager", "stream"):
                d = F.isolated_dir(work, n_inputs[0] * 2 + (mode == "stream"))
                t0 = time.perf_counter()
                signal.alarm(HANG_S)
                try:
                    out, detail, values = F.run_case(case, d, mode)
                except _Hang:
                    out, detail, values = "hang", f"over {HANG_S} s", None
                finally:
                    signal.alarm(0)
                dt = time.perf_counter() - t0
                slowest[0] = max(slowest[0], dt)
                F.tidy(d)
                res[mode] = (out, detail, values)
                c[f"{mode}_{out}"] += 1
                if out not in ("valid", "clean_error") and len(failures[f"{family}/{mode}/{out}"]) < examples_out:
                    failures[f"{family}/{mode}/{out}"].append({"case": repr(case), "detail": detail})
            (eo, ed, ev), (so, sd, sv) = res["eager"], res["stream"]
            agree = True
            if eo == "valid":
                agree = so == "valid" and np.array_equal(ev, sv, equal_nan=True)
            elif so == "valid":
                agree = F.finite_only(ed)
            if not agree:
                c["disagreements"] += 1
                if len(failures[f"{family}/disagreement"]) < examples_out:
                    failures[f"{family}/disagreement"].append({"case": repr(case), "eager": ed, "stream": sd})
            if case.broken:
                c["inputs_broken_on_purpose"] += 1
            if not case.broken and not case.eager_broken and eo != "valid" and case.kind != "mutate":
                c["valid_by_generator_but_rejected_eager"] += 1
                if len(failures[f"{family}/rejected_valid"]) < examples_out:
                    failures[f"{family}/rejected_valid"].append({"case": repr(case), "eager": ed})

        t0 = time.perf_counter()
        one()
        c["inputs"] = n_inputs[0]
        timing[family] = {"wall_s": round(time.perf_counter() - t0, 2), "slowest_case_s": round(slowest[0], 3)}
        counts[family] = dict(c)
        print(f"{family}: {n_inputs[0]} inputs in {timing[family]['wall_s']} s; {dict(c)}", flush=True)
    if work.exists() and not any(work.iterdir()):
        work.rmdir()
    return {"counts": counts, "timing": timing, "failure_examples": dict(failures)}


def _totals(counts: dict) -> dict:
    tot = collections.Counter()
    for c in counts.values():
        tot.update(c)
    modes = ("eager", "stream")
    return {
        "inputs_tried": tot["inputs"],
        "reader_runs": sum(tot[f"{m}_{o}"] for m in modes for o in F.OUTCOMES),
        "valid": sum(tot[f"{m}_valid"] for m in modes),
        "clean_errors": sum(tot[f"{m}_clean_error"] for m in modes),
        "tracebacks": sum(tot[f"{m}_traceback"] for m in modes),
        "wrapped_internal_errors": sum(tot[f"{m}_wrapped_internal"] for m in modes),
        "unnamed_errors": sum(tot[f"{m}_unnamed_error"] for m in modes),
        "hangs_over_10s": sum(tot[f"{m}_hang"] for m in modes),
        "silent_accepts": sum(tot[f"{m}_silent_accept"] for m in modes),
        "eager_stream_disagreements": tot["disagreements"],
        "inputs_broken_on_purpose": tot["inputs_broken_on_purpose"],
        "generator_valid_but_rejected": tot["valid_by_generator_but_rejected_eager"],
    }


def _markdown(result: dict, command: str) -> str:
    t = result["totals"]
    load = load_average_text(result.get("load_average_1min"))
    load = f"{load} around the run (the 10 s hang limit is wall time)" if load else "load not recorded"
    lines = ["# Reader fuzzing", "", f"Command: `{command}`", "",
             f"Inputs tried: **{t['inputs_tried']}** (each through the eager loader and the stream reader: "
             f"{t['reader_runs']} reader runs), {result['per_family']} per family, seed {result['seed']}. "
             f"Host: {result['host']}; {load}.", "",
             "| outcome (reader runs) | count | target |", "|---|---:|---:|",
             f"| valid recording / stream | {t['valid']} | |",
             f"| clean error (ValueError/FileNotFoundError naming the file) | {t['clean_errors']} | |",
             f"| traceback (any other exception type) | {t['tracebacks']} | 0 |",
             f"| wrapped internal error (AttributeError/TypeError/... behind the guard) | "
             f"{t['wrapped_internal_errors']} | 0 |",
             f"| documented type without the file name | {t['unnamed_errors']} | 0 |",
             f"| hang > 10 s | {t['hangs_over_10s']} | 0 |",
             f"| silent accept (broken structure accepted, rows lost uncounted, values read wrong) | "
             f"{t['silent_accepts']} | 0 |",
             f"| eager vs stream disagreement (inputs) | {t['eager_stream_disagreements']} | 0 |", "",
             f"Inputs broken on purpose by the generators: {t['inputs_broken_on_purpose']}; inputs the generators "
             f"considered valid but the eager loader rejected: {t['generator_valid_but_rejected']}.", "",
             "| family | inputs | eager valid | eager clean errors | stream valid | stream clean errors | "
             "wall s | slowest case s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for fam, c in result["counts"].items():
        tm = result["timing"][fam]
        lines.append(f"| {fam} | {c.get('inputs', 0)} | {c.get('eager_valid', 0)} | {c.get('eager_clean_error', 0)} | "
                     f"{c.get('stream_valid', 0)} | {c.get('stream_clean_error', 0)} | {tm['wall_s']} | "
                     f"{tm['slowest_case_s']} |")
    if result["failure_examples"]:
        lines += ["", "## Examples of outcomes off target", ""]
        for k, v in result["failure_examples"].items():
            for ex in v:
                lines.append(f"- `{k}`: {json.dumps(ex)[:400]}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/fuzz_readers", help="output folder (JSON + Markdown)")
    ap.add_argument("--long", action="store_true", help="the long profile: 2,600 inputs per family (10,400)")
    ap.add_argument("--per-family", type=int, default=None, help="inputs per family (overrides the profile)")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed")
    ap.add_argument("--repro", default=str(ROOT / "tests" / "data" / "repro"), help="seed files folder")
    args = ap.parse_args(argv)
    long = args.long or os.environ.get("HYPOTHESIS_PROFILE") == "long"
    per = args.per_family if args.per_family is not None else (2600 if long else 200)
    if per < 1:
        raise SystemExit(f"--per-family must be >= 1, got {per}")
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    result = run(per, args.seed, Path(args.repro))
    result.update(per_family=per, seed=args.seed, wall_s=round(time.perf_counter() - t0, 1),
                  load_average_1min=[load0, os.getloadavg()[0]],        # around the run: the host line
                  host=f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs")
    result["totals"] = _totals(result["counts"])
    command = "python benchmarks/fuzz_readers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if long and not args.long:
        command = "HYPOTHESIS_PROFILE=long " + command
    result["command"] = command
    out = Path(args.out)
    write_json_atomic(out / "fuzz_readers.json", result)
    write_text_atomic(out / "fuzz_readers.md", _markdown(result, command))
    print(json.dumps(result["totals"], indent=1))
    print(f"wrote {out / 'fuzz_readers.json'} and {out / 'fuzz_readers.md'}")
    t = result["totals"]
    return 0 if (t["tracebacks"] == t["hangs_over_10s"] == t["silent_accepts"] == 0) else 1


if __name__ == "__main__":
    sys.exit(main())

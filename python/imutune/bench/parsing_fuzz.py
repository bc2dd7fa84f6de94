"""Fuzzing of the three metadata parsers: ``manifest.json``, model bundles, per-user patches.

Valid files are written once (:func:`seed_files`), then mutated: a field
dropped, added, retyped or replaced by a hostile value (NaN, 1e308, huge
integers, wrong containers, duplicates, very long strings...), a nested value
replaced, the bytes truncated, flipped or replaced by garbage; safetensors
files get their metadata or tensors rewritten (keys dropped or renamed,
shapes and dtypes changed). Each mutated input goes through its parser
(:func:`imutune.deploy.manifest.load_manifest`,
:func:`imutune.train.bundle.load_bundle`,
:func:`imutune.personalize.patch.load_patch`) and the outcome is classified:

``valid``      the parser returned its object (e.g. a mutation of free-form ``info``);
``clean``      ``ValueError`` / ``FileNotFoundError`` naming the file;
``unnamed``    ``ValueError`` / ``FileNotFoundError`` that does not name the file (a defect);
``traceback``  any other exception (a defect).

The mutators take a :class:`random.Random`, so the test suite drives them
from hypothesis (``st.randoms()``, a fixed small budget) and
``benchmarks/parsing_fuzz.py`` runs thousands of seeded inputs and writes
the counts (JSON + Markdown).
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["seed_files", "mutate_json_bytes", "mutate_safetensors_bytes", "classify", "fuzz_manifest",
           "fuzz_bundle", "fuzz_patch", "run_fuzz", "OUTCOMES", "PARSERS"]

OUTCOMES = ("valid", "clean", "unnamed", "traceback")
PARSERS = ("manifest", "bundle", "patch")

HOSTILE: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 7, 2 ** 63, 10 ** 30, -1e308, 1e308, float("nan"), float("inf"), -0.0, 1e-300,
    "", "x", "1", "NaN", "g", [], {}, [1, 2], ["a", "a"], ["", "b"], {"a": 1}, [None], [[[]]], [float("nan")],
    "a" * 5000, ["x"] * 3, [1.0, -1.0, 0.0], {"sha256": 1},
)


# --------------------------------------------------------------------------- valid files


def seed_files(folder: str | Path) -> dict[str, Path]:
    """Write one valid manifest, bundle folder and patch into ``folder``; returns their paths."""
    import copy

    import torch

    from ..deploy.manifest import manifest_for
    from ..models.resnet1d import create_model
    from ..personalize.patch import make_patch, save_patch
    from ..signal.contract import Preprocessing
    from ..train.bundle import ModelBundle, save_bundle

    folder = Path(folder)
    torch.manual_seed(0)
    model = create_model("tinycnn1d", in_channels=3, num_classes=2, layers=(1,), widths=(8,)).eval()
    spec = Preprocessing(channels=("acc_x", "acc_y", "gyr_z"), class_names=("walk", "run"), sample_rate_hz=50.0,
                         window_s=1.0, hop_s=0.5, units=("g", "g", "rad/s"), norm_mean=(0.0, 0.1, 0.2),
                         norm_std=(1.0, 2.0, 0.5))
    bundle = ModelBundle(model, "tinycnn1d", spec, {"stage": "fuzz", "loss_history": [1.0, 0.5]})
    save_bundle(bundle, folder / "bundle")
    m = manifest_for(bundle).with_artifact("model.onnx", sha256="ab" * 32, format="onnx", precision="fp32",
                                           parity_max_abs_err=1e-6)
    m.save(folder / "manifest.json")
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        tuned.head.weight[0] += 1.0
        tuned.stem[0].weight[1] += 0.5
    save_patch(make_patch(model, tuned, class_names=("walk", "run"), info={"note": "fuzz"}),
               folder / "patch.safetensors")
    return {"manifest": folder / "manifest.json", "bundle": folder / "bundle",
            "patch": folder / "patch.safetensors"}


# --------------------------------------------------------------------------- mutators


def _hostile(rng: random.Random) -> Any:
    return rng.choice(HOSTILE)


def _mutate_value(v: Any, rng: random.Random) -> Any:
    """A hostile replacement of ``v`` or of one of its elements."""
    if isinstance(v, list) and v and rng.random() < 0.6:
        v = list(v)
        op = rng.randrange(4)
        i = rng.randrange(len(v))
        if op == 0:
            v[i] = _hostile(rng)
        elif op == 1:
            v.append(rng.choice(v + [_hostile(rng)]))
        elif op == 2:
            del v[i]
        else:
            v = v + v
        return v
    if isinstance(v, dict) and v and rng.random() < 0.6:
        v = dict(v)
        k = rng.choice(sorted(v, key=str))
        if rng.random() < 0.4:
            del v[k]
        else:
            v[k] = _mutate_value(v[k], rng)
        return v
    return _hostile(rng)


def mutate_json_bytes(data: bytes, rng: random.Random) -> bytes:
    """1-3 structural mutations of a JSON object file, then maybe one byte-level mutation."""
    try:
        d = json.loads(data)
    except ValueError:
        d = {}
    for _ in range(rng.randint(1, 3)):
        if not isinstance(d, dict) or not d:
            break
        key = rng.choice(sorted(d))
        op = rng.randrange(5)
        if op == 0:
            del d[key]
        elif op == 1:
            d[rng.choice(["colour", "window", "normalization", key + "_"])] = _hostile(rng)
        else:
            d[key] = _mutate_value(d[key], rng)
    if rng.random() < 0.1:
        d = rng.choice([[], [d], "manifest", 3, None, [1, 2]])
    text = json.dumps(d, allow_nan=True).encode("utf-8")
    return _byte_mutation(text, rng) if rng.random() < 0.35 else text


def _byte_mutation(b: bytes, rng: random.Random) -> bytes:
    op = rng.randrange(8)
    if op == 0 and b:
        return b[:rng.randrange(len(b))]                                   # truncated
    if op == 1 and b:
        a = bytearray(b)
        for _ in range(rng.randint(1, 8)):
            a[rng.randrange(len(a))] = rng.randrange(256)                  # flipped bytes
        return bytes(a)
    if op == 2:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))   # garbage
    if op == 3:
        return b"\xef\xbb\xbf" + b                                          # UTF-8 BOM (valid)
    if op == 4:
        return b"[" * 200_000 + b"]" * 200_000                              # nesting bomb
    if op == 5:
        return b.replace(b"50.0", b"1" * 5000, 1)                           # a 5000-digit integer
    if op == 6:
        return "é".encode("latin-1") + b                                    # not UTF-8
    return b + b"\x00garbage"


def mutate_safetensors_bytes(data: bytes, rng: random.Random, *, text_metadata: bool = True) -> bytes:
    """A byte-level or a structural (metadata / tensor) mutation of a safetensors file."""
    if rng.random() < 0.35:
        b = data
        op = rng.randrange(4)
        if op == 0:
            return b[:rng.randrange(len(b))]
        if op == 1:                                                          # header bytes flipped
            a = bytearray(b)
            for _ in range(rng.randint(1, 6)):
                a[rng.randrange(min(len(a), 400))] = rng.randrange(256)
            return bytes(a)
        if op == 2:
            return (2 ** 60).to_bytes(8, "little") + b[8:]                    # absurd header length
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    import torch
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    tensors = st_load(data)
    meta = _safetensors_metadata(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        if op <= 2 and meta:
            k = rng.choice(sorted(meta))
            if op == 0:
                del meta[k]
            else:
                meta[k] = rng.choice(['', '{', '[]', 'null', '"x"', '1e999', '[' * 5000, '{"a": [1, "b"]}',
                                      '[-1]', '[1, 1]', '{"head.weight": [0, 99999999999]}', '["a", "a"]', 'NaN',
                                      json.dumps(_hostile(rng), allow_nan=True), meta[k][:len(meta[k]) // 2],
                                      'imutune-model', 'tinycnn1d', 'mobilecnn1d', 'z' * 64, '1'])
        elif op == 3 and tensors:
            k = rng.choice(sorted(tensors))
            del tensors[k]
        elif op == 4 and tensors:
            k = rng.choice(sorted(tensors))
            t = tensors[k]
            tensors[k] = rng.choice([t.flatten()[: max(1, t.numel() // 2)].clone(), t.to(torch.float64),
                                     t.to(torch.int8), torch.zeros(0), t.reshape(-1).clone(), t.to(torch.bfloat16)])
        elif op == 5:
            tensors[rng.choice(["extra", "head.bias2", "stem.0.weight"])] = torch.zeros(rng.randint(1, 4))
    return st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta or None)


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return dict(header.get("__metadata__", {}))


# --------------------------------------------------------------------------- classification


def classify(fn: Callable[[], Any], names: tuple[str, ...], expected_type: type) -> tuple[str, str]:
    """Run ``fn`` and classify its outcome; returns (outcome, detail)."""
    try:
        out = fn()
    except (ValueError, FileNotFoundError) as e:
        msg = str(e)
        if any(n in msg for n in names):
            return "clean", type(e).__name__
        return "unnamed", f"{type(e).__name__}: {msg[:300]}"
    except Exception as e:  # noqa: BLE001 - the point is to catch everything
        return "traceback", f"{type(e).__name__}: {str(e)[:300]}"
    if not isinstance(out, expected_type):
        return "traceback", f"returned {type(out).__name__}"
    return "valid", ""


def fuzz_manifest(seed: Path, work: Path, rng: random.Random) -> tuple[str, str]:
    from ..deploy.manifest import Manifest, load_manifest

    p = work / "manifest.json"
    p.write_bytes(mutate_json_bytes(seed.read_bytes(), rng))
    return classify(lambda: _valid_manifest(load_manifest(p)), (str(p),), Manifest)


def _valid_manifest(m):
    json.dumps(m.to_dict())                         # a valid result must serialize again
    assert m.window_samples >= 8 and all(math.isfinite(v) for v in m.norm_std)
    return m


def fuzz_bundle(seed: Path, work: Path, rng: random.Random) -> tuple[str, str]:
    from ..train.bundle import ModelBundle, load_bundle

    folder = work / "bundle"
    folder.mkdir(parents=True, exist_ok=True)
    meta, weights = (seed / "model.json").read_bytes(), (seed / "model.safetensors").read_bytes()
    op = rng.randrange(10)
    if op < 6:
        meta = mutate_json_bytes(meta, rng)
    elif op < 9:
        weights = mutate_safetensors_bytes(weights, rng)
    (folder / "model.json").write_bytes(meta)
    (folder / "model.safetensors").write_bytes(weights)
    if op == 9:
        (folder / rng.choice(["model.json", "model.safetensors"])).unlink()
    return classify(lambda: load_bundle(folder), (str(folder),), ModelBundle)


def fuzz_patch(seed: Path, work: Path, rng: random.Random) -> tuple[str, str]:
    from ..personalize.patch import Patch, load_patch

    p = work / "patch.safetensors"
    p.write_bytes(mutate_safetensors_bytes(seed.read_bytes(), rng))
    return classify(lambda: load_patch(p), (str(p),), Patch)


_FUZZERS = {"manifest": fuzz_manifest, "bundle": fuzz_bundle, "patch": fuzz_patch}


def run_fuzz(n_per_parser: int, *, seed: int = 0, work_dir: str | Path, slow_s: float = 10.0) -> dict[str, Any]:
    """Feed ``n_per_parser`` mutated inputs to each parser; returns counts per parser and outcome.

    ``slow`` counts inputs whose parse took longer than ``slow_s`` seconds
    (wall clock, so under load this is an upper bound); ``examples`` keeps up
    to 5 details per defect outcome.
    """
    import shutil

    work = Path(work_dir)
    seeds = seed_files(work / "seed")
    report: dict[str, Any] = {"n_per_parser": int(n_per_parser), "seed": int(seed), "parsers": {}}
    for name in PARSERS:
        rng = random.Random(f"{seed}-{name}")
        counts = {o: 0 for o in OUTCOMES}
        counts["slow"] = 0
        examples: dict[str, list[str]] = {"unnamed": [], "traceback": []}
        worst = 0.0
        for i in range(n_per_parser):
            case = work / "case"
            shutil.rmtree(case, ignore_errors=True)
            case.mkdir(parents=True)
            t0 = time.perf_counter()
            outcome, detail = _FUZZERS[name](seeds[name], case, rng)
            dt = time.perf_counter() - t0
            worst = max(worst, dt)
            counts[outcome] += 1
            counts["slow"] += int(dt > slow_s)
            if outcome in examples and len(examples[outcome]) < 5:
                examples[outcome].append(f"#{i}: {detail}")
        report["parsers"][name] = {"counts": counts, "max_seconds": worst, "examples": examples}
    return report


def to_markdown(report: dict[str, Any]) -> str:
    """A Markdown table of :func:`run_fuzz` counts."""
    rows = ["| parser | inputs | valid | clean error | unnamed error | traceback | > 10 s | slowest s |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in report["parsers"].items():
        c = r["counts"]
        n = sum(c[o] for o in OUTCOMES)
        rows.append(f"| {name} | {n} | {c['valid']} | {c['clean']} | {c['unnamed']} | {c['traceback']} | "
                    f"{c['slow']} | {r['max_seconds']:.3f} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/parsing_fuzz.py --out DIR [--n N] [--seed S]``: writes ``parsing_fuzz.json`` / ``.md``."""
    import argparse
    import tempfile

    from .._io import write_json_atomic, write_text_atomic

    ap = argparse.ArgumentParser(description="fuzz the manifest / bundle / patch parsers")
    ap.add_argument("--out", required=True, help="folder for parsing_fuzz.json and parsing_fuzz.md")
    ap.add_argument("--n", type=int, default=3400, help="inputs per parser (default 3400: > 10,000 in all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n must be >= 1, got {args.n}")
    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        report = run_fuzz(args.n, seed=args.seed, work_dir=work)
        report["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    write_json_atomic(out / "parsing_fuzz.json", report)
    md = (f"# Parser fuzzing ({args.n} inputs per parser, seed {args.seed})\n\n{to_markdown(report)}\n"
          f"Command: `python benchmarks/parsing_fuzz.py --out {args.out} --n {args.n} --seed {args.seed}`; "
          f"{report['seconds']:.0f} s wall clock.\n")
    write_text_atomic(out / "parsing_fuzz.md", md)
    print(md)
    bad = sum(r["counts"]["unnamed"] + r["counts"]["traceback"] for r in report["parsers"].values())
    return 1 if bad else 0

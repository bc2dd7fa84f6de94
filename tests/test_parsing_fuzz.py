"""Fuzz tests of the manifest, bundle and patch parsers (imutune.bench.parsing_fuzz mutators driven by hypothesis).

Every mutated input must give a valid object or a ValueError / FileNotFoundError that names the file; never
another exception. Budget: 150 inputs per parser (a few seconds); HYPOTHESIS_PROFILE=long runs 3,400 per parser.
``benchmarks/parsing_fuzz.py`` gives the counts of a long seeded run.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from imutune.bench.parsing_fuzz import (  # noqa: E402
    fuzz_bundle,
    fuzz_manifest,
    fuzz_patch,
    mutate_json_bytes,
    seed_files,
)

N = 3400 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 150
FUZZ = settings(max_examples=N, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return seed_files(tmp_path_factory.mktemp("fuzz_seed"))


def _check(fuzzer, seed: Path, rnd) -> str:
    with tempfile.TemporaryDirectory() as d:
        outcome, detail = fuzzer(seed, Path(d), rnd)
    assert outcome in ("valid", "clean"), detail
    return outcome


def test_seed_files_are_valid(seeds):
    from imutune.deploy.manifest import load_manifest
    from imutune.personalize.patch import load_patch
    from imutune.train.bundle import load_bundle

    assert load_manifest(seeds["manifest"]).hop_samples == 25
    assert load_bundle(seeds["bundle"]).units == ("g", "g", "rad/s")
    assert load_patch(seeds["patch"]).class_names == ("walk", "run")


@FUZZ
@given(rnd=st.randoms(use_true_random=False))
def test_fuzz_manifest(seeds, rnd):
    _check(fuzz_manifest, seeds["manifest"], rnd)


@FUZZ
@given(rnd=st.randoms(use_true_random=False))
def test_fuzz_bundle(seeds, rnd):
    _check(fuzz_bundle, seeds["bundle"], rnd)


@FUZZ
@given(rnd=st.randoms(use_true_random=False))
def test_fuzz_patch(seeds, rnd):
    _check(fuzz_patch, seeds["patch"], rnd)


def test_mutators_do_mutate(seeds):
    """The budget is spent on broken inputs: most mutated manifests are refused (a check that the fuzzer bites)."""
    import random

    rng = random.Random(0)
    raw = seeds["manifest"].read_bytes()
    assert sum(mutate_json_bytes(raw, rng) != raw for _ in range(50)) >= 45
    with tempfile.TemporaryDirectory() as d:
        outcomes = [fuzz_manifest(seeds["manifest"], Path(d), rng)[0] for _ in range(50)]
    assert outcomes.count("clean") >= 35


@pytest.mark.parametrize("parser", ["manifest", "bundle", "patch"])
def test_known_hostile_inputs(seeds, tmp_path, parser):
    """Inputs that raised tracebacks before (non-dict JSON, NaN, huge ints, garbage safetensors)."""
    from imutune.deploy.manifest import load_manifest
    from imutune.personalize.patch import load_patch
    from imutune.train.bundle import load_bundle

    if parser == "manifest":
        p = tmp_path / "manifest.json"
        for text, pattern in [('"just a string"', r"holds a JSON str"),
                              (seeds["manifest"].read_text().replace('"hop_s": 0.5', '"hop_s": NaN'),
                               r"hop_s in preprocessing must be a positive number, got nan"),
                              (seeds["manifest"].read_text().replace('"hop_s": 0.5', '"hop_s": 1' + "0" * 5000),
                               r"is not valid JSON \(ValueError: Exceeds the limit"),
                              ("[" * 100000, r"is not valid JSON")]:
            p.write_text(text)
            with pytest.raises(ValueError, match=rf"manifest '{p}'.*{pattern}"):
                load_manifest(p)
    elif parser == "bundle":
        folder = tmp_path / "b"
        folder.mkdir()
        (folder / "model.json").write_bytes((seeds["bundle"] / "model.json").read_bytes())
        (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
        with pytest.raises(ValueError, match=rf"model weights '{folder}/model\.safetensors' are not a readable "
                                             r"safetensors file"):
            load_bundle(folder)
        (folder / "model.safetensors").write_bytes((seeds["bundle"] / "model.safetensors").read_bytes())
        (folder / "model.json").write_text("[]")
        with pytest.raises(ValueError, match=rf"model metadata '{folder}/model\.json' holds a JSON list"):
            load_bundle(folder)
    else:
        from safetensors.torch import load as st_load
        from safetensors.torch import save as st_save

        data = seeds["patch"].read_bytes()
        p = tmp_path / "p.safetensors"
        from imutune.bench.parsing_fuzz import _safetensors_metadata

        meta = _safetensors_metadata(data)
        for key, value, pattern in [("rows", "[1, 2]", r"metadata 'rows' is a JSON list; expected an object"),
                                    ("rows", '{"head.weight": [0, 99999999999]}', r"rows of 'head\.weight' are"),
                                    ("class_names", '["a", "a"]', r"class_names is \['a', 'a'\]"),
                                    ("info", "[1]", r"info is a JSON list"),
                                    ("base_sha256", "zz", r"base_sha256 is 'zz'; expected 64 lowercase hex")]:
            p.write_bytes(st_save(st_load(data), metadata={**meta, key: value}))
            with pytest.raises(ValueError, match=rf"patch '{p}'.*{pattern}"):
                load_patch(p)

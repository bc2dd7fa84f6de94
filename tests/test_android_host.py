"""The Android core's JUnit host tests (android_demo/core/run_host_tests.sh) against the golden data.

Skipped when javac or the Debian jars (junit4, libhamcrest-java, libandroid-json-org-java) are missing,
unless IMUTUNE_REQUIRE_JVM=1 (as in CI, after .ci/run installs them): then missing tools fail.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "android_demo" / "core"
GOLDEN = CORE / "src" / "test" / "resources" / "golden"
JARS = ("json-android.jar", "junit4.jar", "hamcrest-core.jar")


def _missing_tools() -> list[str]:
    libs = Path(os.environ.get("IMUTUNE_JAVA_LIBS", "/usr/share/java"))
    missing = [str(libs / j) for j in JARS if not (libs / j).is_file()]
    for tool in ("javac", "java"):
        if shutil.which(tool) is None:
            missing.append(tool)
    return missing


def test_golden_data_is_small_and_from_a_real_export():
    files = list(GOLDEN.iterdir())
    assert sum(f.stat().st_size for f in files) <= 1 << 20
    index = json.loads((GOLDEN / "golden.json").read_text())
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    assert manifest["artifacts"][index["artifact"]]["sha256"]
    assert all("load_watch()" in s["source"] for s in index["streams"])


def test_jvm_host_tests_pass(tmp_path):
    missing = _missing_tools()
    if missing:
        msg = (f"JVM host tests need {missing}: apt-get install -y default-jdk-headless junit4 libhamcrest-java "
               "libandroid-json-org-java")
        if os.environ.get("IMUTUNE_REQUIRE_JVM") == "1":
            pytest.fail(msg + " (IMUTUNE_REQUIRE_JVM=1)")
        pytest.skip(msg)
    env = dict(os.environ, IMUTUNE_JVM_BUILD=str(tmp_path / "build"))
    proc = subprocess.run(["bash", str(CORE / "run_host_tests.sh")], capture_output=True, text=True, env=env,
                          timeout=300)
    out = proc.stdout + proc.stderr
    m = re.search(r"^(\d+) passed, (\d+) failed$", proc.stdout, flags=re.M)
    assert m is not None, f"no 'N passed, N failed' line:\n{out[-4000:]}"
    assert proc.returncode == 0 and m.group(2) == "0", f"JVM host tests failed:\n{out[-4000:]}"
    assert int(m.group(1)) >= 15
    assert "max |input - python input|" in proc.stdout


def test_contract_cases_still_match_the_python_loader(tmp_path):
    """The Java loader is tested against Python's verdicts stored in contract_cases.json; if the Python
    contract changes, this fails: regenerate with android_demo/tools/make_golden.py and update
    dev.imutune.core.Manifest to match."""
    from imutune.deploy.manifest import load_manifest

    doc = json.loads((GOLDEN / "contract_cases.json").read_text())
    changed = []
    for case in doc["cases"] + doc["raw_cases"]:
        p = tmp_path / "manifest.json"
        p.write_text(case["text"])
        try:
            load_manifest(p)
            rejects = False
        except ValueError:
            rejects = True
        if rejects != (case["python_error"] is not None):
            changed.append(case["name"])
    assert not changed, f"the Python loader's verdict changed for {changed}"


def test_built_apk_contents():
    """The APK android_demo/build_apk.sh builds (not in CI: it downloads ~0.5 GB of tools); never run on a phone.
    No resources.arsc: the app has no resources (its label is a literal)."""
    apk = Path(os.environ.get("IMUTUNE_APK", ROOT / "android_demo" / "build" / "imutune-demo-ort.apk"))
    if not apk.is_file():
        pytest.skip(f"{apk} not built (bash android_demo/build_apk.sh builds it)")
    with zipfile.ZipFile(apk) as z:
        names = set(z.namelist())
        for member in ("AndroidManifest.xml", "classes.dex", "assets/manifest.json",
                       "assets/model.onnx", "lib/arm64-v8a/libonnxruntime.so", "lib/arm64-v8a/libonnxruntime4j_jni.so"):
            assert member in names, f"{apk} lacks {member}"
        assert z.getinfo("assets/model.onnx").compress_type == zipfile.ZIP_STORED
        manifest = json.loads(z.read("assets/manifest.json"))
        digest = hashlib.sha256(z.read("assets/model.onnx")).hexdigest()
        assert manifest["artifacts"]["model.onnx"]["sha256"] == digest     # what the app checks at start
        dex = z.read("classes.dex")
    for cls in (b"Ldev/imutune/core/WindowPipeline;", b"Ldev/imutune/core/Manifest;", b"Ldev/imutune/demo/MainActivity;",
                b"Ldev/imutune/demo/OrtBackend;", b"Lai/onnxruntime/OrtSession;", b"Lkotlin/jvm/internal/Intrinsics;"):
        assert cls in dex, f"classes.dex lacks {cls.decode()}"
    if shutil.which("apksigner"):
        subprocess.run(["apksigner", "verify", str(apk)], check=True, capture_output=True)
    if shutil.which("aapt"):
        badging = subprocess.run(["aapt", "dump", "badging", str(apk)], check=True, capture_output=True,
                                 text=True).stdout
        assert "package: name='dev.imutune.demo.ort'" in badging
        assert "launchable-activity: name='dev.imutune.demo.MainActivity'" in badging
        assert "native-code: 'arm64-v8a'" in badging

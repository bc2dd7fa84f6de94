"""The Android core's JUnit host tests (android_demo/core/run_host_tests.sh) against the golden data.

Skipped when javac or the Debian jars (junit4, libhamcrest-java, libandroid-json-org-java) are missing,
unless IMUTUNE_REQUIRE_JVM=1 (as in CI, after .ci/run installs them): then missing tools fail.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
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

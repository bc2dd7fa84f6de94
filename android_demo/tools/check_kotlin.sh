#!/usr/bin/env bash
# Compile-check the app's Kotlin sources without Gradle or the Android SDK (a developer check, not CI):
#   * android.jar (API 23) from Debian bullseye's libandroid-23-java (downloaded with a private apt config:
#     the system's apt sources are not changed);
#   * kotlinc from the npm package kotlin-compiler;
#   * ONNX Runtime's Java API from the onnxruntime.aar inside the npm package com.github.asus4.onnxruntime
#     (a third-party copy, ORT 1.29; its sha256 is printed);
#   * ExecuTorch: signature stubs of org.pytorch.executorch.{Module, EValue, Tensor} (the methods the app calls,
#     as in pytorch/executorch extension/android), since no ExecuTorch Android jar is reachable here.
# Both flavors (ort: MainActivity + OrtBackend; executorch: MainActivity + ExecuTorchBackend) are compiled
# against the core's classes. Nothing is packaged or run.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/tmp/imutune_kotlin_check}
mkdir -p "$W" && cd "$W"
[ -d node_modules/kotlin-compiler ] && [ -d node_modules/com.github.asus4.onnxruntime ] || \
    npm install --silent --no-audit --no-fund kotlin-compiler@2.4.20 com.github.asus4.onnxruntime@0.4.9
AND=andjar/usr/lib/android-sdk/platforms/android-23/android.jar
if [ ! -f "$AND" ]; then
    mkdir -p apt/lists/partial apt/cache/archives/partial
    echo "deb http://deb.debian.org/debian bullseye main" > apt/bullseye.list
    O=(-o Dir::Etc::sourcelist="$W/apt/bullseye.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$W/apt/lists"
       -o Dir::Cache="$W/apt/cache" -o APT::Get::List-Cleanup=0)
    apt-get "${O[@]}" update -qq
    apt-get "${O[@]}" download libandroid-23-java
    dpkg-deb -x libandroid-23-java_*.deb andjar
fi
AAR=node_modules/com.github.asus4.onnxruntime/Plugins/Android/onnxruntime.aar
sha256sum "$AAR"
mkdir -p ort && (cd ort && unzip -o -q "../$AAR" classes.jar)
mkdir -p stubs/org/pytorch/executorch stubcls core
cat > stubs/org/pytorch/executorch/Module.java <<'J'
package org.pytorch.executorch;
public class Module { public static Module load(String p) { return null; } public EValue[] forward(EValue... in) { return null; } public void destroy() {} }
J
cat > stubs/org/pytorch/executorch/EValue.java <<'J'
package org.pytorch.executorch;
public class EValue { public static EValue from(Tensor t) { return null; } public Tensor toTensor() { return null; } }
J
cat > stubs/org/pytorch/executorch/Tensor.java <<'J'
package org.pytorch.executorch;
public abstract class Tensor { public static Tensor fromBlob(float[] d, long[] s) { return null; } public float[] getDataAsFloatArray() { return null; } }
J
javac -d stubcls stubs/org/pytorch/executorch/*.java
javac --release 8 -Xlint:-options -nowarn -cp /usr/share/java/json-android.jar -d core \
    $(find "$HERE/core/src/main/java" -name '*.java')
KC=node_modules/kotlin-compiler/bin/kotlinc
APP=$HERE/app/src
$KC -Werror -jvm-target 17 -cp "$AND:ort/classes.jar:core" -d out_ort \
    "$APP/main/java/dev/imutune/demo/MainActivity.kt" "$APP/ort/java/dev/imutune/demo/BackendFactory.kt"
echo "ort flavor: Kotlin compiles"
$KC -Werror -jvm-target 17 -cp "$AND:stubcls:core" -d out_executorch \
    "$APP/main/java/dev/imutune/demo/MainActivity.kt" "$APP/executorch/java/dev/imutune/demo/BackendFactory.kt"
echo "executorch flavor: Kotlin compiles (against signature stubs)"

#!/usr/bin/env bash
# Build, sign and verify the `ort` flavor's APK WITHOUT Gradle or the Android SDK (arm64-v8a only).
#
#   bash android_demo/build_apk.sh [EXPORT_DIR (default runs/demo_q)] [WORK_DIR (default /tmp/imutune_apk)]
#
# Tools, all from package registries (nothing else is reachable here):
#   * android.jar (API 23) from Debian bullseye's libandroid-23-java and the dx dexer from bullseye's
#     dalvik-exchange, fetched with a private apt configuration (the system's apt sources are not changed);
#   * aapt, zipalign, apksigner, dexdump from Debian bookworm (apt-get install);
#   * kotlinc from the npm package kotlin-compiler; the Kotlin standard library from it;
#   * ONNX Runtime's Android AAR (1.29, Java API + arm64-v8a libraries) from the npm package
#     com.github.asus4.onnxruntime: a third-party copy, its sha256 is printed and checked below. Its classes
#     are Java 17 class files, which dx refuses; they are relabelled as Java 8 class files (major version
#     61 -> 52: the code uses no Java 9+ bytecode -- no indy string concatenation, no records -- but it does
#     carry Java 11 nestmate attributes, which dx ignores; private access between nested classes may then
#     fail on older Android runtimes). The APK targets minSdk 26 (dx emits invoke-custom for lambdas there).
# The Gradle build (./gradlew installOrtDebug) is the supported way; this APK was never run on a phone here.
# Output: android_demo/build/imutune-demo-ort.apk (git-ignored; signed with a throwaway debug key), verified
# with apksigner and described with aapt dump badging; tests/test_android_host.py checks its contents when present.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
EXPORT=$(cd "${1:-$ROOT/runs/demo_q}" && pwd)
W=${2:-/tmp/imutune_apk}
AAR_SHA256=98cddbac92640b4a6af72a03c42e0491851f366d3da66bbaeb5dd66310946cf2
for f in manifest.json model.onnx; do
    [ -f "$EXPORT/$f" ] || { echo "$EXPORT/$f missing: run imutune demo --quick --out runs/demo_q first" >&2; exit 2; }
done
mkdir -p "$W" && cd "$W"

# -- tools
command -v aapt >/dev/null && command -v zipalign >/dev/null && command -v apksigner >/dev/null \
    && command -v dexdump >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq aapt zipalign apksigner dexdump
[ -d node_modules/kotlin-compiler ] && [ -d node_modules/com.github.asus4.onnxruntime ] || \
    npm install --silent --no-audit --no-fund kotlin-compiler@2.4.20 com.github.asus4.onnxruntime@0.4.9
AND=$W/andjar/usr/lib/android-sdk/platforms/android-23/android.jar
DXJAR=$W/dx/usr/share/java/com.android.dx-10.0.0.jar
if [ ! -f "$AND" ] || [ ! -f "$DXJAR" ]; then
    mkdir -p apt/lists/partial apt/cache/archives/partial
    echo "deb http://deb.debian.org/debian bullseye main" > apt/bullseye.list
    O=(-o Dir::Etc::sourcelist="$W/apt/bullseye.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$W/apt/lists"
       -o Dir::Cache="$W/apt/cache" -o APT::Get::List-Cleanup=0)
    apt-get "${O[@]}" update -qq
    apt-get "${O[@]}" download libandroid-23-java dalvik-exchange 2>&1 | grep -v "unsandboxed" || true
    dpkg-deb -x libandroid-23-java_*.deb andjar
    dpkg-deb -x dalvik-exchange_*.deb dx
fi
AAR=node_modules/com.github.asus4.onnxruntime/Plugins/Android/onnxruntime.aar
echo "$AAR_SHA256  $AAR" | sha256sum -c -
rm -rf ort build && mkdir -p ort build/cls build/apk/assets build/apk/lib/arm64-v8a
(cd ort && unzip -q "../$AAR")

# -- classes: core (Java 8), app (Kotlin, JVM 1.8 bytecode), ORT (relabelled), Kotlin stdlib
javac --release 8 -Xlint:-options -nowarn -cp /usr/share/java/json-android.jar -d build/cls/core \
    $(find "$HERE/core/src/main/java" -name '*.java')
(cd build/cls/core && jar cf ../core.jar dev)
KC=node_modules/kotlin-compiler/bin/kotlinc
$KC -Werror -jvm-target 1.8 -cp "$AND:ort/classes.jar:build/cls/core" -d build/cls/app.jar \
    "$HERE/app/src/main/java/dev/imutune/demo/MainActivity.kt" "$HERE/app/src/ort/java/dev/imutune/demo/BackendFactory.kt"
python3 - "$W" <<'PY'
import sys, zipfile
w = sys.argv[1]
def copy(src, dst, relabel):
    with zipfile.ZipFile(src) as s, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as d:
        for info in s.infolist():
            f = info.filename
            if not f.endswith(".class") or f.startswith("META-INF/versions/") or f.endswith("module-info.class"):
                continue
            data = bytearray(s.read(info))
            if relabel:
                assert data[:4] == b"\xca\xfe\xba\xbe" and int.from_bytes(data[6:8], "big") <= 61, f
                data[6:8] = (52).to_bytes(2, "big")      # class file major version -> Java 8
            d.writestr(info, bytes(data))
copy(f"{w}/ort/classes.jar", f"{w}/build/cls/ort8.jar", True)
copy(f"{w}/node_modules/kotlin-compiler/lib/kotlin-stdlib.jar", f"{w}/build/cls/stdlib.jar", False)
PY
java -Xmx2g -cp "$DXJAR" com.android.dx.command.Main --dex --min-sdk-version=26 --output=build/apk/classes.dex \
    build/cls/app.jar build/cls/core.jar build/cls/ort8.jar build/cls/stdlib.jar

# -- resources, assets, native libraries
cat > build/AndroidManifest.xml <<'XML'
<?xml version="1.0" encoding="utf-8"?>
<manifest xmlns:android="http://schemas.android.com/apk/res/android" package="dev.imutune.demo.ort"
    android:versionCode="1" android:versionName="0.1.0">
    <uses-sdk android:minSdkVersion="26" android:targetSdkVersion="26" />
    <uses-feature android:name="android.hardware.sensor.accelerometer" android:required="true" />
    <uses-feature android:name="android.hardware.sensor.gyroscope" android:required="true" />
    <application android:allowBackup="false" android:label="imutune demo"
        android:theme="@android:style/Theme.Material.Light">
        <activity android:name="dev.imutune.demo.MainActivity" android:exported="true"
            android:screenOrientation="portrait">
            <intent-filter>
                <action android:name="android.intent.action.MAIN" />
                <category android:name="android.intent.category.LAUNCHER" />
            </intent-filter>
        </activity>
    </application>
</manifest>
XML
cp "$EXPORT/manifest.json" "$EXPORT/model.onnx" build/apk/assets/
cp ort/jni/arm64-v8a/libonnxruntime.so ort/jni/arm64-v8a/libonnxruntime4j_jni.so build/apk/lib/arm64-v8a/
aapt package -f -M build/AndroidManifest.xml -I "$AND" -A build/apk/assets -0 onnx -F build/unsigned.apk
(cd build/apk && aapt add ../unsigned.apk classes.dex lib/arm64-v8a/libonnxruntime.so \
    lib/arm64-v8a/libonnxruntime4j_jni.so >/dev/null)
zipalign -p -f 4 build/unsigned.apk build/aligned.apk
[ -f debug.keystore ] || keytool -genkeypair -keystore debug.keystore -storepass android -keypass android \
    -alias debug -keyalg RSA -keysize 2048 -validity 10000 -dname "CN=imutune debug" >/dev/null 2>&1
apksigner sign --ks debug.keystore --ks-pass pass:android --ks-key-alias debug --out imutune-demo-ort.apk \
    build/aligned.apk
apksigner verify --verbose imutune-demo-ort.apk | head -4
aapt dump badging imutune-demo-ort.apk | grep -E "^(package|sdkVersion|targetSdkVersion|launchable-activity|native-code)"
n=$(dexdump build/apk/classes.dex | grep -c "Class descriptor  : 'Ldev/imutune/")
echo "classes.dex: $n dev.imutune classes"
mkdir -p "$HERE/build"
cp imutune-demo-ort.apk "$HERE/build/imutune-demo-ort.apk"
echo "APK: $HERE/build/imutune-demo-ort.apk ($(stat -c %s imutune-demo-ort.apk) bytes)"

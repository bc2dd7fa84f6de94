#!/usr/bin/env bash
# Build the pure-JVM core (javac, no Gradle) and run its JUnit 4 host tests against the golden data.
# Needs a JDK (javac 17) and Debian's junit4, libhamcrest-java and libandroid-json-org-java
# (Android's own org.json, so the core parses manifests exactly as on the phone).
# Prints a closing line "N passed, N failed" and exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")"
J=${IMUTUNE_JAVA_LIBS:-/usr/share/java}
JSON=$J/json-android.jar
CP_TEST="$JSON:$J/junit4.jar:$J/hamcrest-core.jar"
for f in "$JSON" "$J/junit4.jar" "$J/hamcrest-core.jar"; do
    if [ ! -f "$f" ]; then
        echo "missing $f: apt-get install -y junit4 libhamcrest-java libandroid-json-org-java" >&2
        echo "0 passed, 1 failed"
        exit 2
    fi
done
command -v javac >/dev/null || { echo "javac not found: apt-get install -y default-jdk-headless" >&2; echo "0 passed, 1 failed"; exit 2; }
BUILD=${IMUTUNE_JVM_BUILD:-build/host}
rm -rf "$BUILD"
mkdir -p "$BUILD/main" "$BUILD/test"
# the core compiles against the Java 8 API (what every Android version offers), with no Android imports
if ! javac --release 8 -Xlint:-options -nowarn -encoding UTF-8 -cp "$JSON" -d "$BUILD/main" \
        $(find src/main/java -name '*.java'); then
    echo "0 passed, 1 failed"; exit 1
fi
if ! javac -nowarn -encoding UTF-8 -cp "$BUILD/main:$CP_TEST" -d "$BUILD/test" $(find src/test/java -name '*.java'); then
    echo "0 passed, 1 failed"; exit 1
fi
if grep -rn "^import android\." src/main/java; then
    echo "core imports android.*; it must stay pure JVM" >&2; echo "0 passed, 1 failed"; exit 1
fi
CLASSES=$(cd src/test/java && find . -name '*Test.java' | sed 's|^\./||; s|\.java$||; s|/|.|g' | sort)
LOG="$BUILD/junit.log"
java -cp "$BUILD/main:$BUILD/test:$CP_TEST" -Dgolden.dir=src/test/resources/golden \
    org.junit.runner.JUnitCore $CLASSES 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
run=$(sed -n 's/^OK (\([0-9]*\) tests\{0,1\})$/\1/p' "$LOG")
if [ -n "$run" ]; then
    failed=0; passed=$run
else
    run=$(sed -n 's/^Tests run: \([0-9]*\),  Failures: \([0-9]*\)$/\1/p' "$LOG")
    failed=$(sed -n 's/^Tests run: \([0-9]*\),  Failures: \([0-9]*\)$/\2/p' "$LOG")
    run=${run:-0}; failed=${failed:-1}
    passed=$((run - failed))
fi
[ "$rc" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1
echo "$passed passed, $failed failed"
[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ]

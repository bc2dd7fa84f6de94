#!/usr/bin/env bash
# Regenerate android_demo/core/src/test/resources/golden from a real demo export (see make_golden.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python android_demo/tools/make_golden.py "$@"

#!/usr/bin/env bash
# THE test command (CI runs exactly this through .ci/run). Runs every step even after a failure,
# then prints a summary and exits non-zero if any step failed.
#
#   bash scripts/test.sh
#
# Steps: environment (scripts/setup.sh), the EP library (release), every Rust test in the
# workspace, `quilt run` on the tiny SD UNet, the Python tests (fixtures, ONNX node conformance,
# bad input, registration), and the C/C++ examples.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

# shellcheck source=setup.sh
source scripts/setup.sh || { echo "[test] scripts/setup.sh failed" >&2; exit 1; }
export QUILT_EP_LIB="$ROOT/target/release/libquilt_ep.so"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# No incremental caches: they double the size of target/ and a fresh clone gains nothing from them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

UNET="models/fixtures/unet/model.onnx"
declare -a SUMMARY=()
FAILED=0

# step NAME COMMAND...: runs it, records pass/fail and wall time.
step() {
    local name="$1"; shift
    echo
    echo "================ $name: $* ================"
    local start=$SECONDS
    if "$@"; then
        SUMMARY+=("PASS  $(printf '%5ss' $((SECONDS - start)))  $name")
    else
        SUMMARY+=("FAIL  $(printf '%5ss' $((SECONDS - start)))  $name")
        FAILED=1
    fi
}

skip() {
    SUMMARY+=("SKIP         $1 ($2)")
}

step "build EP library (release)" cargo build --release -p quilt-capi
step "build quilt CLI (release)" cargo build --release -p quilt-models --bin quilt
step "cargo test --workspace" cargo test --workspace --no-fail-fast
# CI (.ci/run sets QUILT_CI=1) has a small disk: the test build (target/debug, a few GB) is not
# used by the steps below, which run the release builds, so it goes before they need space.
if [[ "${QUILT_CI:-}" == 1 ]]; then
    echo "[test] target/debug: $(du -sh target/debug 2>/dev/null | cut -f1), removed (QUILT_CI=1)"
    rm -rf target/debug
fi
if [[ -f "$UNET" ]]; then
    step "quilt run $UNET" target/release/quilt run "$UNET"
else
    skip "quilt run" "$UNET not present"
fi
step "pytest tests/python" python -m pytest -q tests/python
if [[ -f capi/examples/build.sh ]]; then
    if [[ -f "$UNET" ]]; then
        step "C/C++ examples" bash capi/examples/build.sh "$UNET"
    else
        skip "C/C++ examples" "$UNET not present"
    fi
else
    skip "C/C++ examples" "capi/examples/build.sh not present"
fi

echo
echo "================ summary ================"
printf '%s\n' "${SUMMARY[@]}"
if [[ -f target/conformance_report.json ]]; then
    python - <<'PY'
import json
r = json.load(open("target/conformance_report.json"))
print("conformance:", ", ".join(f"{k} {v}" for k, v in r["totals"].items()), f"({r['cases']} cases)")
PY
fi
echo "disk: target $(du -sh target 2>/dev/null | cut -f1), .venv $(du -sh .venv 2>/dev/null | cut -f1), .cache $(du -sh .cache 2>/dev/null | cut -f1); $(df -h . | awk 'NR==2 {print $4 " free"}')"
echo "total $((SECONDS / 60))m $((SECONDS % 60))s"
exit $FAILED

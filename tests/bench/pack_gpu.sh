#!/usr/bin/env bash
# Builds what the GPU scripts run and packs it, stripped and xz-compressed, into the ignored
# .gpu/p (the device tool carries at most 64 MiB: tree + .gpu/p + .whl). Then, on the GPU machine:
#   bash tests/bench/pending_gpu.sh .gpu/p $OUT PART      (carry .gpu/p and .whl)
# .whl comes from models/scripts/fetch_wheels.sh (diffusers wheel, onnxruntime as a tar.xz).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
TESTS=(cuda_fixtures cuda_graphs cuda_conv cuda_gemm cuda_attention)
cargo build --release -p quilt-capi
cargo build --release -p quilt-models --bin quilt
cargo build --release -p quilt-tests --example bench_onnx_gpu --example bench_regions_gpu
test_args=(); for t in "${TESTS[@]}"; do test_args+=(--test "$t"); done
cargo test --release -p quilt-tests "${test_args[@]}" --no-run
rm -rf .gpu/p && mkdir -p .gpu/p
for f in target/release/libquilt_ep.so target/release/quilt target/release/examples/bench_onnx_gpu target/release/examples/bench_regions_gpu; do
    strip -o ".gpu/p/$(basename "$f")" "$f"
done
for t in "${TESTS[@]}"; do
    # The newest build of each test binary (older hashes may linger in deps/).
    f=$(ls -t target/release/deps/"$t"-* | grep -v '\.d$' | head -1)
    strip -o ".gpu/p/$t" "$f"
done
xz -9 -T0 .gpu/p/*
git rev-parse --short HEAD > .gpu/p/COMMIT
du -sh .gpu/p .whl 2>/dev/null || true
echo "tree: $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes tracked"

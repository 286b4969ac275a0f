#!/usr/bin/env bash
# The GPU runs behind issues 4 and 5, in parts that each fit one 10-minute call (session 4 wrote
# this for its unmeasured work; session 5 ran most parts, see tests/bench/results/2026-12-06-session5-h100.md).
#
# Here (no GPU needed): `bash models/scripts/fetch_wheels.sh` once (.whl), then
# `bash tests/bench/pack_gpu.sh` (builds and packs the binaries into .gpu/p; the carried tree must
# stay under 64 MiB). There (carry .gpu/p and .whl):
#   bash tests/bench/pending_gpu.sh .gpu/p $OUT PART
# Only 8 files come back from $OUT: write PARTs' outputs elsewhere and tar them into $OUT.
#
# Not yet run at the current defaults (after session 12, which ran confirm11, the whole benchmark
# matrix in every mode, correct and trace: tests/bench/results/2026-12-07-session12-gpu.md):
#   gnmerge (first, ~4 min: session 12's batched row merge of the channels-last GroupNorm, default
#       without a GPU measurement);
#   QUILT_SDPA_DYNAMIC=1 (defaults9 has the commands);
#   gemmlt (plain GEMMs through cuBLASLt with algorithm reuse, opt-in: tests, speed, new shapes);
#   regions; SD_MODES=quilt,eager,compile_ro ... sd (the fp16 pipelines, last run in session 10).
#
# PART
#   tests     cuda_fixtures, cuda_graphs, cuda_gemm, cuda_conv (shapes A, B, A per Dnn: B reuses
#             A's engine), the flash correctness test.
#   fixtures  cuda_fixtures alone (every fixture's plans against the CPU reference on the GPU).
#   regions   bench_regions_gpu: device time of single memory-bound steps (GroupNorm, LayerNorm,
#             elementwise, copies) per index path (build it: --example bench_regions_gpu).
#   newshape  bench_onnx_gpu on the SD 1.5 UNet (exported here by bench_gpu.sh's first run):
#             b2 64² then --new-shape b1 64² and b2 96², with engine reuse (default), without
#             (QUILT_CUDNN_REUSE=0), with dynamic-shape graphs (QUILT_CUDNN_DYNAMIC=1), with the plans
#             built one by one at their first call (QUILT_CUDNN_THREADS=1, the default, serial_*) or
#             on 16 threads (parallel_*), with residual
#             adds in cuDNN's epilogue (--conv-residual 1, convres_*); and a
#             fresh b1 / 96² to compare their repeat times with the reused engines'. Issue 4's
#             target: first call at a new shape ≤ 50 ms over a repeat call.
#   flash     cuda_attention's flash_variant_timing: the `h` variants (Config::half_exp, f16x2
#             exponentials) against the defaults at SD's shapes, errors against the CPU reference.
#             Make half_exp the default where it is faster and within tolerance.
#   bench     issue 4's benchmark (eager, torch.compile reduce-overhead, ORT + quilt) at UNet b2
#             64², session creation with the compile phase times in the log (log_level=info).
#   correct   issue 4's correctness run: full-size UNet, VAE decoder, CLIP through ORT + quilt's GPU
#             device (fp32) against ORT's CPU EP, batch 1/2 and latents 64²/96², one session each.
#   profile   device time per step of the UNet b2 64² (channels-last, fp16), grouped by op.
#   memory    Dnn::prepare's memory cost per worker count (session 7: ~9.2 MB per worker), the
#             ORT peak and the new-shape cost at the defaults (OUT/summary.txt, written as it goes).
#   packing   packed q|k|v projections: the attention cases with column ranges, the UNet b2 with
#             and without packing (alternating), the new-shape queue breakdown, every fixture.
#   gemmreuse cuBLASLt algorithms reused across shapes (QUILT_GEMM_REUSE=1): correctness, then a
#             new shape's first call and repeat with and without.
#   trace     tests/bench/kernel_trace.py: every kernel of a UNet b2 64² run under CUDA graph replay
#             (PyTorch's profiler, CUPTI), per category and per kernel, and the device's idle time.
#   convsearch QUILT_CUDNN_ALGO=benchmark (cuDNN engines timed per shape) against the heuristic.
#   gnfast    the opt-in channels-last GroupNorm path and 16-bit fast SiLU (session 8): fixtures,
#             microbenchmark, UNet A/B, trace.
#   gemmlt    plain GEMMs through cuBLASLt (QUILT_GEMM_LT=1, session 8): tests, UNet A/B, new shapes.
#   sdpa      attention on cuDNN's fused SDPA engines (QUILT_ATTN_CUDNN=1, session 9): test, per-shape
#             timing against the flash kernel, UNet A/B (outputs compared), trace.
#   defaults9 session 9's defaults: attention tests, fixtures, composite cuDNN graph, UNet A/B,
#             new shapes with and without QUILT_SDPA_DYNAMIC=1.
#   confirm11 every fixture, the memory-bound cases under QUILT_GN_LAST_BLOCK=0, issue 4's benchmark.
#   gnmerge   every fixture, the memory-bound cases with QUILT_GN_MERGE_BATCH=1, the GroupNorm steps and
#             the UNet b2 64² both ways.
#   sd        issue 5: every pipeline kind (txt2img, img2img, inpaint, AltDiffusion) 512², 50 steps,
#             against diffusers eager and compile reduce-overhead (not AltDiffusion), the UNet on IO
#             binding (default); then txt2img again on host tensors (--quilt-unet-io host), same seed:
#             the images must match and the `unet io` line must say "device binding".
set -uo pipefail
BIN="$(readlink -f "${1:?bin dir}")"; OUT="${2:?out dir}"; PART="${3:?part: tests|fixtures|regions|newshape|flash|bench|correct|profile|sd|memory|packing|gemmreuse|trace|convsearch|gnfast|gemmlt|sdpa|defaults9|confirm11|gnmerge}"
mkdir -p "$OUT" /tmp/qbin
for f in "$BIN"/*; do
    name=$(basename "$f" .xz)
    if [[ "$f" == *.xz ]]; then xz -dc "$f" > "/tmp/qbin/$name"; else cp "$f" "/tmp/qbin/$name"; fi
    chmod +x "/tmp/qbin/$name"
done
CUDNN_DIR=$(python3 -c 'import nvidia.cudnn, os; print(os.path.join(os.path.dirname(nvidia.cudnn.__file__), "lib"))' 2>/dev/null || true)
if [ -n "$CUDNN_DIR" ] && [ -f "$CUDNN_DIR/libcudnn.so.9" ]; then
    mkdir -p /tmp/cudnn_link && ln -sf "$CUDNN_DIR/libcudnn.so.9" /tmp/cudnn_link/libcudnn.so
    export LD_LIBRARY_PATH="/tmp/cudnn_link:$CUDNN_DIR:${LD_LIBRARY_PATH:-}"
fi
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
W=/tmp/quilt_bench/unet_full
D2=batch_size=2,height=64,width=64,sequence_length=77
D1=batch_size=1,height=64,width=64,sequence_length=77
D96=batch_size=2,height=96,width=96,sequence_length=77
BO="--iters 20 --precision fp16 --layout channels_last"
# bench_onnx_gpu NAME ARGS...: its JSON line to OUT/NAME.json and stdout, its log to OUT/NAME.log.
bench() { local name=$1; shift; echo "== $name"; timeout 240 /tmp/qbin/bench_onnx_gpu "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"; echo "rc=$?"; cat "$OUT/$name.json"; }
# test_binary NAME: one GPU test binary, its log to OUT/NAME.log, its result lines to stdout.
test_binary() { echo "== $1"; timeout 200 /tmp/qbin/$1 --test-threads 1 > "$OUT/$1.log" 2>&1; echo "rc=$?"; grep -E "test result|FAILED|panicked" "$OUT/$1.log" | head -5; }
# unet_ab "VARS" ...: the UNet b2 64²'s median under each environment setting, into $S.
unet_ab() {
    for v in "$@"; do
        echo "== UNet b2 64², $v" >> "$S"
        env $v timeout 100 /tmp/qbin/bench_onnx_gpu "$W/model.onnx" --dims $D2 --iters 50 --precision fp16 --layout channels_last 2>/dev/null | grep -oE '"median_ms":[0-9.]+' >> "$S"
    done
}
# fixtures_and_memory_bound VAR=VALUE: every fixture at the defaults, then the memory-bound cases
# under VAR=VALUE (the other side of an A/B), into $S.
fixtures_and_memory_bound() {
    test_binary cuda_fixtures >> "$S"
    echo "== $1: memory-bound cases" >> "$S"
    env "$1" timeout 120 /tmp/qbin/cuda_fixtures --exact memory_bound_steps_match_the_cpu_backend_on_the_gpu > "$OUT/fixtures_${1%%=*}.log" 2>&1
    echo "rc=$?" >> "$S"; grep -E "test result|panicked" "$OUT/fixtures_${1%%=*}.log" | head -4 >> "$S"
}
# new_shape NAME b1|96: the UNet's first call at b1 or b2 96² after b2 64², into $S.
new_shape() {
    local d=$([ "$2" = b1 ] && echo $D1 || echo $D96)
    bench "$1" "$W/model.onnx" --dims $D2 $BO --new-shape $d | grep -oE '"median_ms":[0-9.]+|"first_ms.{0,420}|"cudnn_attention":.{0,400}' >> "$S"
}
export_unet() {
    # bench_unet.py exports only for the quilt mode; its ORT + quilt run comes with it.
    [ -f "$W/model.onnx" ] || bash tests/bench/bench_gpu.sh /tmp/qbin "$OUT/export" --cases unet_b2 --modes "${EXPORT_MODES:-eager,quilt}" ${EXPORT_ONLY:+--export-only} --iters 5 > "$OUT/export.log" 2>&1
}
case "$PART" in
    tests)
        for t in cuda_fixtures cuda_graphs cuda_gemm cuda_conv; do test_binary $t; done
        echo "== cuda_attention"; timeout 200 /tmp/qbin/cuda_attention --exact flash_attention_matches_the_cpu_reference > "$OUT/cuda_attention.log" 2>&1; echo "rc=$?"; tail -3 "$OUT/cuda_attention.log"
        ;;
    fixtures)
        test_binary cuda_fixtures
        ;;
    regions)
        timeout 200 /tmp/qbin/bench_regions_gpu --iters 50 > "$OUT/regions.log" 2>&1; echo "rc=$?"; head -30 "$OUT/regions.log"
        ;;
    newshape)
        export_unet
        # NEWSHAPE_CASES=a,b,...: only those (default: all).
        want() { [ -z "${NEWSHAPE_CASES:-}" ] || [[ ",$NEWSHAPE_CASES," == *",$1,"* ]]; }
        want reuse_b2_to_b1 && bench reuse_b2_to_b1 "$W/model.onnx" --dims $D2 $BO --new-shape $D1
        want reuse_b2_to_96 && bench reuse_b2_to_96 "$W/model.onnx" --dims $D2 $BO --new-shape $D96
        want parallel_b2_to_b1 && QUILT_CUDNN_THREADS=16 bench parallel_b2_to_b1 "$W/model.onnx" --dims $D2 $BO --new-shape $D1
        want parallel_b2_to_96 && QUILT_CUDNN_THREADS=16 bench parallel_b2_to_96 "$W/model.onnx" --dims $D2 $BO --new-shape $D96
        # cuBLASLt algorithms of the first shape's classes taken at the new one (default since
        # session 8) against the heuristic asked at every new shape (QUILT_GEMM_REUSE=0).
        want gemmreuse_b2_to_b1 && QUILT_GEMM_REUSE=1 bench gemmreuse_b2_to_b1 "$W/model.onnx" --dims $D2 $BO --new-shape $D1
        want gemmreuse_b2_to_96 && QUILT_GEMM_REUSE=1 bench gemmreuse_b2_to_96 "$W/model.onnx" --dims $D2 $BO --new-shape $D96
        want noreuse_gemm_b2_to_b1 && QUILT_GEMM_REUSE=0 bench noreuse_gemm_b2_to_b1 "$W/model.onnx" --dims $D2 $BO --new-shape $D1
        want noreuse_gemm_b2_to_96 && QUILT_GEMM_REUSE=0 bench noreuse_gemm_b2_to_96 "$W/model.onnx" --dims $D2 $BO --new-shape $D96
        want threads4_b2_to_b1 && QUILT_CUDNN_THREADS=4 bench threads4_b2_to_b1 "$W/model.onnx" --dims $D2 $BO --new-shape $D1
        # Whether the driver's lazy module loading (a kernel loaded at its first launch) is part
        # of a new shape's first call: every module loaded at context creation instead.
        want eagerload_b2_to_b1 && CUDA_MODULE_LOADING=EAGER bench eagerload_b2_to_b1 "$W/model.onnx" --dims $D2 $BO --new-shape $D1
        want serial_b2_to_b1 && QUILT_CUDNN_THREADS=1 bench serial_b2_to_b1 "$W/model.onnx" --dims $D2 $BO --new-shape $D1
        want noreuse_b2_to_b1 && QUILT_CUDNN_REUSE=0 bench noreuse_b2_to_b1 "$W/model.onnx" --dims $D2 $BO --new-shape $D1
        want dynamic_b2_to_b1 && QUILT_CUDNN_DYNAMIC=1 bench dynamic_b2_to_b1 "$W/model.onnx" --dims $D2 $BO --new-shape $D1
        want dynamic_b2_to_96 && QUILT_CUDNN_DYNAMIC=1 bench dynamic_b2_to_96 "$W/model.onnx" --dims $D2 $BO --new-shape $D96
        want convres_b2_to_b1 && bench convres_b2_to_b1 "$W/model.onnx" --dims $D2 $BO --conv-residual 1 --new-shape $D1
        want convres_b2_to_96 && bench convres_b2_to_96 "$W/model.onnx" --dims $D2 $BO --conv-residual 1 --new-shape $D96
        want fresh_b1 && bench fresh_b1 "$W/model.onnx" --dims $D1 $BO
        want fresh_96 && bench fresh_96 "$W/model.onnx" --dims $D96 $BO
        true
        ;;
    flash)
        timeout 500 /tmp/qbin/cuda_attention --ignored --exact flash_variant_timing --nocapture > "$OUT/flash.log" 2>&1
        echo "rc=$?"; grep -A 40 "^case " "$OUT/flash.log"
        ;;
    bench)
        bash tests/bench/bench_gpu.sh /tmp/qbin "$OUT" --cases "${BENCH_CASES:-unet_b2}" --modes "${BENCH_MODES:-eager,compile_ro,quilt}" \
            --iters 20 --reuse-export --budget-s "${BENCH_BUDGET_S:-540}" --quilt-options precision=fp16,log_level=info > "$OUT/bench_stdout.log" 2>&1
        echo "rc=$?"; grep -E "compile phases|claimed" "$OUT/bench_stdout.log" | cut -c1-300 | head -6
        tail -20 "$OUT/bench.log"
        ;;
    correct)
        source tests/bench/carried_wheels.sh && install_carried_wheels || exit 1
        PYTHONUNBUFFERED=1 python3 tests/bench/full_correctness.py --ep-lib /tmp/qbin/libquilt_ep.so --out "$OUT" --models "${CORRECT_MODELS:-unet,vae_decoder,clip}" 2>&1 | tee "$OUT/correct.log" | grep -vE "^\s*$"
        ;;
    profile)
        export_unet
        SKIP_EXPORT=1 PROFILE_LINES=45 bash tests/bench/profile_gpu.sh /tmp/qbin "$OUT" unet_b2 fp16 channels_last
        ;;
    sd)
        # The benchmark's UNet export is the pipeline's UNet (same make_fixtures spec and seed).
        if [ -f "$W/model.onnx" ] && [ ! -e /tmp/sd_pipeline/sd15/unet/model.onnx ]; then
            mkdir -p /tmp/sd_pipeline/sd15/unet && ln -s "$W/model.onnx" "$W/model.onnx_data" /tmp/sd_pipeline/sd15/unet/
        fi
        bash tests/bench/sd_pipeline_gpu.sh /tmp/qbin "$OUT/binding" --pipelines "${SD_PIPELINES:-txt2img,img2img,inpaint,alt}" \
            --modes "${SD_MODES:-quilt,eager,compile_ro}" --repeat 3 --reuse-export
        bash tests/bench/sd_pipeline_gpu.sh /tmp/qbin "$OUT/host" --pipelines txt2img --modes quilt --repeat 3 --quilt-unet-io host --reuse-export
        ;;
    memory)
        # What Dnn::prepare's worker handles cost (session 6 turned it off by default when the UNet's
        # peak rose from 1.144x to 1.230x the fp16 weights with 16 of them): device memory through
        # bench_onnx_gpu --memory per thread count; then issue 4's peak through ORT at the default and
        # the new-shape cost at the serial default. Results go to OUT/summary.txt as they come.
        # (Session 7 also ran QUILT_CUDNN_HELPERS=drop, workers' handles destroyed after prepare: the
        # peak stayed, and the experiment was removed.)
        export_unet
        S="$OUT/summary.txt"
        for t in 1 16 4; do
            echo "== bench_onnx_gpu --memory, QUILT_CUDNN_THREADS=$t" >> "$S"
            QUILT_CUDNN_THREADS=$t timeout 90 /tmp/qbin/bench_onnx_gpu "$W/model.onnx" --dims $D2 $BO --memory >> "$S" 2> "$OUT/memory_$t.log"
        done
        for c in reuse_b2_to_b1 reuse_b2_to_96; do
            echo "== newshape $c (serial default)" >> "$S"
            bench "$c" "$W/model.onnx" --dims $D2 $BO --new-shape "$( [ $c = reuse_b2_to_b1 ] && echo $D1 || echo $D96 )" >> "$S"
        done
        echo "== ORT bench, quilt only, defaults" >> "$S"
        bash tests/bench/bench_gpu.sh /tmp/qbin "$OUT/ort" --cases unet_b2 --modes quilt --iters 20 --reuse-export --budget-s 120 --quilt-options precision=fp16 > "$OUT/ort.log" 2>&1
        tail -2 "$OUT/ort.log" | head -1 >> "$S"
        cat "$S"
        ;;
    packing)
        # Packed projections (session 7): the attention cases with column ranges (flash and GEMM
        # routes) against the CPU reference, then the UNet b2 64² with and without packing, twice
        # each in alternation, then the first call at a new shape with its queue-time breakdown,
        # with lazy and eager module loading, then every fixture. OUT/summary.txt as it goes.
        S="$OUT/summary.txt"
        echo "== cuda_attention" >> "$S"
        for t in flash_attention_matches_the_cpu_reference wide_and_f32_attention_as_gemms_matches_the_cpu_reference; do
            timeout 150 /tmp/qbin/cuda_attention --exact $t --nocapture > "$OUT/attention_$t.log" 2>&1
            echo "$t rc=$?" >> "$S"; grep -E "columns|test result|FAIL|panicked" "$OUT/attention_$t.log" >> "$S"
        done
        export_unet
        for round in $(seq 1 "${PACKING_ROUNDS:-2}"); do
            for pack in 1 0; do
                echo "== UNet b2 64², pack_projections=$pack (round $round)" >> "$S"
                timeout 120 /tmp/qbin/bench_onnx_gpu "$W/model.onnx" --dims $D2 --iters 50 --precision fp16 --layout channels_last --pack-projections $pack >> "$S" 2> "$OUT/pack_${pack}_$round.log"
            done
        done
        NEWSHAPE_CASES=${PACKING_NEWSHAPE:-reuse_b2_to_b1,eagerload_b2_to_b1} bash "$0" "$BIN" "$OUT" newshape >> "$S" 2>&1
        test_binary cuda_fixtures >> "$S"
        cat "$S"
        ;;
    gemmreuse)
        # cuBLASLt algorithm reuse across shapes (session 7): its correctness test, then the first
        # call at a new shape with and without it (b1, 96²). OUT/summary.txt as it goes.
        S="$OUT/summary.txt"
        echo "== cuda_gemm reused algorithms" >> "$S"
        timeout 120 /tmp/qbin/cuda_gemm --exact reused_gemm_algorithms_match_the_cpu_reference --nocapture > "$OUT/gemm_reuse.log" 2>&1
        echo "rc=$?" >> "$S"; grep -E "earlier shape|test result|failure" "$OUT/gemm_reuse.log" >> "$S"
        NEWSHAPE_CASES=gemmreuse_b2_to_b1,reuse_b2_to_b1,gemmreuse_b2_to_96,reuse_b2_to_96 bash "$0" "$BIN" "$OUT" newshape >> "$S" 2>&1
        cat "$S"
        ;;
    trace)
        # Every kernel of a UNet b2 64² run as the device ran it (CUDA graph replay, no
        # synchronisation between steps; tests/bench/kernel_trace.py): time per category and per
        # kernel, and the idle time between kernels. TRACE_OPTIONS adds provider options.
        export_unet
        source tests/bench/carried_wheels.sh && install_carried_wheels || exit 1
        timeout 240 python3 tests/bench/kernel_trace.py --ep-lib /tmp/qbin/libquilt_ep.so --model "$W/model.onnx" --dims $D2 \
            --options "precision=fp16${TRACE_OPTIONS:+,$TRACE_OPTIONS}" --iters 5 --top 45 --out "$OUT/trace${TRACE_TAG:-}.json" > "$OUT/trace${TRACE_TAG:-}.log" 2>&1
        echo "rc=$?"; head -60 "$OUT/trace${TRACE_TAG:-}.log"
        ;;
    convsearch)
        # cuDNN engines timed on the first call's buffers (QUILT_CUDNN_ALGO=benchmark, up to 8
        # candidates per shape) against the heuristic's first choice: UNet b2 64², alternating.
        export_unet
        S="$OUT/summary.txt"
        for round in 1 2; do
            for algo in heuristic benchmark; do
                echo "== UNet b2 64², QUILT_CUDNN_ALGO=$algo (round $round)" >> "$S"
                QUILT_CUDNN_ALGO=$algo timeout 120 /tmp/qbin/bench_onnx_gpu "$W/model.onnx" --dims $D2 --iters 50 --precision fp16 --layout channels_last >> "$S" 2> "$OUT/conv_${algo}_$round.log"
            done
        done
        cat "$S"
        ;;
    gnfast)
        # Session 8's channels-last GroupNorm path (QUILT_CL_SLAB=1: per-position offsets from
        # slab strides, a branch-free loop of 16-byte loads unrolled by 4) and the approximate SiLU
        # of 16-bit kernels (QUILT_FAST_MATH=1), opt-in until this runs: every fixture under both,
        # the GroupNorm microbenchmark, the UNet b2 64² alternating, the kernel trace. Make them the
        # default if the fixtures pass and the UNet is faster. OUT/summary.txt as it goes.
        S="$OUT/summary.txt"
        echo "== cuda_fixtures, QUILT_CL_SLAB=1 QUILT_FAST_MATH=1" >> "$S"
        QUILT_CL_SLAB=1 QUILT_FAST_MATH=1 test_binary cuda_fixtures >> "$S"
        echo "== bench_regions_gpu" >> "$S"
        timeout 90 /tmp/qbin/bench_regions_gpu --iters 30 --only gn --env ';QUILT_CL_SLAB=1;QUILT_CL_SLAB=1,QUILT_CL_UNROLL=1;QUILT_CL_SLAB=1,QUILT_FAST_MATH=1' >> "$S" 2>&1
        export_unet
        for round in 1 2; do
            for v in 'X=1' 'QUILT_CL_SLAB=1' 'QUILT_CL_SLAB=1 QUILT_FAST_MATH=1'; do
                echo "== UNet b2 64², $v (round $round)" >> "$S"
                env $v timeout 100 /tmp/qbin/bench_onnx_gpu "$W/model.onnx" --dims $D2 --iters 50 --precision fp16 --layout channels_last 2>/dev/null | grep -oE '"median_ms":[0-9.]+' >> "$S"
            done
        done
        QUILT_CL_SLAB=1 QUILT_FAST_MATH=1 TRACE_TAG=_fast bash "$0" "$BIN" "$OUT" trace >> "$S" 2>&1
        cat "$S"
        ;;
    sdpa)
        # Attention through cuDNN's fused SDPA engines (QUILT_ATTN_CUDNN=1, session 9, opt-in):
        # the correctness test (every case must run on cuDNN), flash vs cuDNN per SD shape, then
        # the UNet b2 64² alternating default / unified graph / composite graph, the cuDNN runs'
        # outputs compared with the default's (--reference), and the kernel trace under it. Make it
        # the default if the test passes and the UNet is faster.
        S="$OUT/summary.txt"
        echo "== cuda_attention cudnn_sdpa_matches_the_cpu_reference" >> "$S"
        timeout 150 /tmp/qbin/cuda_attention --exact cudnn_sdpa_matches_the_cpu_reference --nocapture > "$OUT/sdpa_test.log" 2>&1; echo "rc=$?" >> "$S"; grep -E "test result|failed|cuDNN" "$OUT/sdpa_test.log" | head -20 >> "$S"
        echo "== cuda_attention cudnn_sdpa_timing" >> "$S"
        timeout 150 /tmp/qbin/cuda_attention --ignored --exact cudnn_sdpa_timing --nocapture > "$OUT/sdpa_timing.log" 2>&1; echo "rc=$?" >> "$S"; grep -E '^\{|test result' "$OUT/sdpa_timing.log" >> "$S"
        export_unet
        for round in 1 2; do
            for v in 'X=1' 'QUILT_ATTN_CUDNN=1' 'QUILT_ATTN_CUDNN=1 QUILT_SDPA_GRAPH=composite'; do
                echo "== UNet b2 64², $v (round $round)" >> "$S"
                ref=$([ "$v" = X=1 ] && echo "--save-output /tmp/unet_ref.f32" || echo "--reference /tmp/unet_ref.f32")
                env $v timeout 100 /tmp/qbin/bench_onnx_gpu "$W/model.onnx" --dims $D2 --iters 50 --precision fp16 --layout channels_last $ref 2>/dev/null | grep -oE '"median_ms":[0-9.]+|"(max_rel|l2_rel)_err":[-0-9.e+a-z]+|"cudnn_attention":.{0,300}' >> "$S"
            done
        done
        QUILT_ATTN_CUDNN=1 TRACE_TAG=_sdpa bash "$0" "$BIN" "$OUT" trace >> "$S" 2>&1
        cat "$S"
        ;;
    defaults9)
        # Session 9's defaults (slab GroupNorm, fast SiLU, cuDNN SDPA for ≥ 2048² scores): the
        # attention tests (flash kernel alone, cuDNN), every fixture, cuDNN's composite graph per
        # shape, the UNet b2 64² alternating default / composite graph / no cuDNN attention, and a
        # new shape's first call with
        # and without dynamic-shape SDPA graphs (QUILT_SDPA_DYNAMIC=1).
        S="$OUT/summary.txt"
        echo "== cuda_attention flash + cudnn" >> "$S"
        for t in flash_attention_matches_the_cpu_reference cudnn_sdpa_matches_the_cpu_reference; do
            timeout 150 /tmp/qbin/cuda_attention --exact $t > "$OUT/$t.log" 2>&1; echo "$t rc=$?" >> "$S"; grep -E "test result|failed" "$OUT/$t.log" | head -8 >> "$S"
        done
        test_binary cuda_fixtures >> "$S"
        echo "== cudnn_sdpa_timing, QUILT_SDPA_GRAPH=composite" >> "$S"
        QUILT_SDPA_GRAPH=composite timeout 150 /tmp/qbin/cuda_attention --ignored --exact cudnn_sdpa_timing --nocapture > "$OUT/sdpa_timing_composite.log" 2>&1; grep -E '^\{|test result' "$OUT/sdpa_timing_composite.log" >> "$S"
        export_unet
        for round in 1 2; do
            for v in 'X=1' 'QUILT_SDPA_GRAPH=composite' 'QUILT_ATTN_CUDNN=0'; do
                echo "== UNet b2 64², $v (round $round)" >> "$S"
                ref=$([ "$v" = QUILT_ATTN_CUDNN=0 ] && echo "--save-output /tmp/unet_ref.f32" || echo "")
                [ "$round" = 2 ] && [ "$v" != QUILT_ATTN_CUDNN=0 ] && ref="--reference /tmp/unet_ref.f32"
                env $v timeout 100 /tmp/qbin/bench_onnx_gpu "$W/model.onnx" --dims $D2 --iters 50 --precision fp16 --layout channels_last $ref 2>/dev/null | grep -oE '"median_ms":[0-9.]+|"(max_rel|l2_rel)_err":[-0-9.e+a-z]+|"cudnn_attention":.{0,200}' >> "$S"
            done
        done
        for dyn in 0 1; do
            for c in $([ $dyn = 0 ] && echo b1) 96; do
                echo "== new shape b2 -> $c, QUILT_SDPA_DYNAMIC=$dyn" >> "$S"
                QUILT_SDPA_DYNAMIC=$dyn new_shape newshape_dyn${dyn}_b2_to_$c $c
            done
        done
        cat "$S"
        ;;
    confirm11)
        # After session 11: the last-block GroupNorm merge (default after its call 2, an H100's
        # UNet A/B; its benchmark ran on an H200 with the first form) and every fixture, then issue
        # 4's benchmark on the UNet b2 64² (BENCH_BUDGET_S, default 240): the 3.5× target on an H100.
        S="$OUT/summary.txt"
        fixtures_and_memory_bound QUILT_GN_LAST_BLOCK=0
        echo "== bench" >> "$S"
        BENCH_BUDGET_S=${BENCH_BUDGET_S:-240} bash "$0" "$BIN" "$OUT/bench" bench >> "$S" 2>&1
        cat "$S"
        ;;
    gnmerge)
        # Session 12: the channels-last GroupNorm's last block loads 8 chunk partials per lane
        # before merging them (QUILT_GN_MERGE_BATCH, default 8; 1 = one at a time, session 11).
        # Session 12's trace showed the partials kernel at 6.9-11.5 us whatever the tensor size
        # (a serial tail: ~17 dependent L2 round trips per lane). Keep 8 if the fixtures pass and
        # the GroupNorm steps and the UNet are no slower; else set ROW_MERGE_BATCH to 1.
        S="$OUT/summary.txt"
        fixtures_and_memory_bound QUILT_GN_MERGE_BATCH=1
        echo "== bench_regions_gpu --only gn" >> "$S"
        timeout 90 /tmp/qbin/bench_regions_gpu --iters 30 --only gn --env ';QUILT_GN_MERGE_BATCH=1' >> "$S" 2>&1
        export_unet
        unet_ab X=1 QUILT_GN_MERGE_BATCH=1 X=1 QUILT_GN_MERGE_BATCH=1
        cat "$S"
        ;;
    gemmlt)
        # Plain GEMMs (the bias-free MatMuls, the attention GEMM route) through cuBLASLt with
        # per-class algorithm reuse (QUILT_GEMM_LT=1, session 8, opt-in): the GEMM, fixture and
        # attention GEMM-route tests under it, the UNet b2 64² alternating, and a new shape's first
        # call (session 8, H200: 18-21 ms of it was cuBLAS choosing algorithms). Make it the
        # default if the tests pass, the repeat is no slower and the first call drops.
        S="$OUT/summary.txt"
        for t in cuda_gemm cuda_fixtures; do echo "== $t, QUILT_GEMM_LT=1" >> "$S"; QUILT_GEMM_LT=1 test_binary $t >> "$S"; done
        echo "== cuda_attention GEMM route, QUILT_GEMM_LT=1" >> "$S"
        QUILT_GEMM_LT=1 timeout 150 /tmp/qbin/cuda_attention --exact wide_and_f32_attention_as_gemms_matches_the_cpu_reference > "$OUT/attention_lt.log" 2>&1; echo "rc=$?" >> "$S"; grep "test result" "$OUT/attention_lt.log" >> "$S"
        export_unet
        for round in 1 2; do
            for v in 'X=1' 'QUILT_GEMM_LT=1'; do
                echo "== UNet b2 64², $v (round $round)" >> "$S"
                env $v timeout 100 /tmp/qbin/bench_onnx_gpu "$W/model.onnx" --dims $D2 --iters 50 --precision fp16 --layout channels_last 2>/dev/null | grep -oE '"median_ms":[0-9.]+' >> "$S"
            done
        done
        for c in b1 96; do
            d=$([ $c = b1 ] && echo $D1 || echo $D96)
            echo "== new shape b2 -> $c, QUILT_GEMM_LT=1" >> "$S"
            QUILT_GEMM_LT=1 bench gemmlt_b2_to_$c "$W/model.onnx" --dims $D2 $BO --new-shape $d | grep -oE '"first_ms.{0,420}' >> "$S"
        done
        cat "$S"
        ;;
    *) echo "unknown part $PART"; exit 2 ;;
esac

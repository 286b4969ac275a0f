//! The on-disk kernel cache (`kernels::cuda::kernel_cache`) with the real NVRTC, no GPU needed: a
//! source compiled once is loaded from disk after the in-memory cache is dropped (same cubin, no
//! second compile), a corrupted entry is recompiled and rewritten, another architecture gets its own
//! entry, and an empty cache directory turns the disk cache off. Needs libnvrtc like
//! `cuda_codegen.rs` (skips, or fails under `QUILT_REQUIRE_NVRTC=1`).

#[path = "cuda_support.rs"]
mod support;

use quilt_kernels::cuda::{kernel_cache, nvrtc};

const SOURCE: &str = r#"extern "C" __global__ void q_cache_probe(float* out, const float* x, unsigned n) {
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = x[i] * 2.5f + 1.0f;
}
"#;

fn cubins_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "cubin")).collect()).unwrap_or_default();
    v.sort();
    v
}

#[test]
fn compiled_kernels_are_reused_from_disk() {
    if !support::nvrtc_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("quilt-kernel-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    kernel_cache::set_dir(Some(dir.clone()));
    // A unique source per run, so no earlier process's memory or disk state matters.
    let source = format!("{SOURCE}// run {}\n", std::process::id());

    let (hits0, writes0) = kernel_cache::stats();
    let first = nvrtc::compile_cached(&source, "probe.cu", (9, 0)).unwrap();
    assert_eq!(kernel_cache::stats(), (hits0, writes0 + 1), "the first compile writes one entry");
    let files = cubins_in(&dir);
    assert_eq!(files.len(), 1, "{files:?}");

    nvrtc::clear_memory_cache();
    let second = nvrtc::compile_cached(&source, "probe.cu", (9, 0)).unwrap();
    assert_eq!(kernel_cache::stats(), (hits0 + 1, writes0 + 1), "the second compile is a disk hit");
    assert_eq!(second.cubin, first.cubin);
    assert_eq!(second.log, first.log);

    // A corrupted entry is not used: it is recompiled and rewritten.
    std::fs::write(&files[0], b"quilt-cubin-v1\nnot a cubin").unwrap();
    nvrtc::clear_memory_cache();
    let third = nvrtc::compile_cached(&source, "probe.cu", (9, 0)).unwrap();
    assert_eq!(third.cubin, first.cubin);
    assert_eq!(kernel_cache::stats(), (hits0 + 1, writes0 + 2));

    // Another architecture: its own entry.
    let _ = nvrtc::compile_cached(&source, "probe.cu", (8, 0)).unwrap();
    assert_eq!(cubins_in(&dir).len(), 2);

    // Disk cache off: nothing read or written.
    kernel_cache::set_dir(None);
    nvrtc::clear_memory_cache();
    let before = kernel_cache::stats();
    let _ = nvrtc::compile_cached(&source, "probe.cu", (9, 0)).unwrap();
    assert_eq!(kernel_cache::stats(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

//! Helpers shared by the pipeline tests (each test file includes this module).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use quilt_models::runtime::{Runtime, RuntimePaths};
use quilt_models::sd::bundled::{materialize, TinyPipeline};
use quilt_models::sd::models::Ep;
use quilt_models::sd::pipeline_dir::PipelineDir;
use quilt_models::sd::txt2img::SdPipeline;

/// ORT with quilt registered, once per test process (ORT allows one environment per process).
/// `None`, after saying why, when `ORT_DYLIB_PATH` or `QUILT_EP_LIB` is unset.
pub fn runtime() -> Option<&'static Runtime> {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        if !set("ORT_DYLIB_PATH") || !set("QUILT_EP_LIB") {
            return None;
        }
        Some(Runtime::new(RuntimePaths::resolve(None, None).expect("library paths")).expect("ORT with quilt"))
    });
    if runtime.is_none() {
        eprintln!("skipped: set ORT_DYLIB_PATH and QUILT_EP_LIB (scripts/test.sh does)");
    }
    runtime.as_ref()
}

/// (max |a - b|, max of |a - b| - 1e-3·|b|): the second is ≤ atol when a matches b within
/// atol + 1e-3 relative.
#[allow(dead_code)] // not every test file that includes this module uses each helper
pub fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    max_diff_rel(a, b, 1e-3)
}

/// (max |a - b|, max of |a - b| - rtol·|b|): the second is ≤ atol when a matches b within
/// atol + rtol relative.
pub fn max_diff_rel(a: &[f32], b: &[f32], rtol: f32) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let mut worst_abs = 0.0f32;
    let mut worst_excess = f32::NEG_INFINITY;
    for (&x, &y) in a.iter().zip(b) {
        let d = (x - y).abs();
        worst_abs = worst_abs.max(d);
        worst_excess = worst_excess.max(d - rtol * y.abs());
    }
    (worst_abs, worst_excess)
}

/// A fresh copy of the tiny pipeline `kind` for one test (tests run in parallel).
#[allow(dead_code)]
pub fn tiny(kind: TinyPipeline, test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../target/quilt-sd-test-{}-{test}/{}", std::process::id(), kind.dir_name()));
    materialize(kind, &dir).unwrap()
}

/// Removes what `tiny` made.
#[allow(dead_code)]
pub fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

/// The pipeline in `dir` on quilt (which must take every node) and on ORT's CPU EP.
#[allow(dead_code)]
pub fn pair(runtime: &Runtime, dir: &Path) -> (SdPipeline, SdPipeline) {
    let quilt = SdPipeline::load(runtime, PipelineDir::open(dir).unwrap(), Ep::Quilt).unwrap();
    let cpu = SdPipeline::load(runtime, PipelineDir::open(dir).unwrap(), Ep::Cpu).unwrap();
    assert!(quilt.fallbacks().is_empty(), "quilt declined nodes of {:?}", quilt.fallbacks());
    (quilt, cpu)
}

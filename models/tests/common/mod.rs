//! Helpers shared by the pipeline tests (each test file includes this module).

use std::sync::OnceLock;

use quilt_models::runtime::{Runtime, RuntimePaths};

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
pub fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let mut worst_abs = 0.0f32;
    let mut worst_excess = f32::NEG_INFINITY;
    for (&x, &y) in a.iter().zip(b) {
        let d = (x - y).abs();
        worst_abs = worst_abs.max(d);
        worst_excess = worst_excess.max(d - 1e-3 * y.abs());
    }
    (worst_abs, worst_excess)
}

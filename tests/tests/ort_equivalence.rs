//! Every manifest fixture through ONNX Runtime (loaded by the `ort` crate) with quilt taking every
//! node, against ORT's own CPU EP, on seeded random inputs at every `test_dims` entry. One quilt
//! session per model serves all dims (one compile, every shape).
//!
//! Needs `ORT_DYLIB_PATH` and `QUILT_EP_LIB` (`scripts/test.sh` sets both); without them the test
//! prints why and passes, so a bare `cargo test` on a machine without ORT still works.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use quilt_models::compare::Tolerance;
use quilt_models::equivalence::{compare_sessions, dims_label, input_specs, make_inputs};
use quilt_models::manifest::Manifest;
use quilt_models::plan_dump::TakenNodes;
use quilt_models::runtime::{Runtime, RuntimePaths};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The process-wide runtime, or `None` (with the reason printed) when the libraries are not configured.
fn runtime() -> Option<&'static Runtime> {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let (Some(ort_lib), Some(ep_lib)) = (std::env::var_os("ORT_DYLIB_PATH"), std::env::var_os("QUILT_EP_LIB")) else {
                eprintln!("skipping: ORT_DYLIB_PATH and QUILT_EP_LIB must both be set (scripts/test.sh sets them)");
                return None;
            };
            let paths = RuntimePaths::resolve(Some(ort_lib.into()), Some(ep_lib.into())).expect("ORT and quilt libraries exist");
            Some(Runtime::new(paths).expect("ORT loads and quilt registers with its reference device"))
        })
        .as_ref()
}

#[test]
fn every_fixture_matches_the_cpu_ep() {
    let Some(runtime) = runtime() else { return };
    let manifest_path = workspace_root().join("models/fixtures/manifest.json");
    let manifest = Manifest::load(&manifest_path).unwrap_or_else(|e| panic!("fixture manifest: {e}"));
    assert!(!manifest.models.is_empty(), "{} lists no models", manifest_path.display());

    // fp32 exports: the same tolerance as the Python tests and `quilt run`.
    let tol = Tolerance::FP32;
    let mut failures = Vec::new();
    for entry in &manifest.models {
        let model = manifest.model_path(entry);
        let dump = std::env::temp_dir().join(format!("quilt-ort-equivalence-{}-{}", std::process::id(), entry.name));
        let _ = std::fs::remove_dir_all(&dump);
        std::fs::create_dir_all(&dump).unwrap();
        let dump_str = dump.to_string_lossy().into_owned();

        // Fallback disabled: this fails if quilt declines any node.
        let mut quilt = match runtime.quilt_session(&model, &[("dump_plans", dump_str.as_str())], false) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{}: {e}", entry.name));
                continue;
            }
        };
        let mut cpu = runtime.cpu_session(&model).unwrap_or_else(|e| panic!("{}: {e}", entry.name));
        let taken = TakenNodes::read(&dump).unwrap_or_else(|e| panic!("{}: {e}", entry.name));
        if taken.nodes.is_empty() {
            failures.push(format!(
                "{}: dump_plans has no *.nodes.txt node list ({} compiled subgraph(s) without one)",
                entry.name,
                taken.without_node_list.len()
            ));
        }
        eprintln!("{}: quilt took {} node(s) in {} subgraph(s)", entry.name, taken.nodes.len(), taken.subgraphs.len());

        let specs = input_specs(Some(entry), &quilt).unwrap();
        for (i, dims) in entry.test_dims.iter().enumerate() {
            let inputs = make_inputs(&specs, dims, 1000 + i as u64).unwrap_or_else(|e| panic!("{}: {e}", entry.name));
            match compare_sessions(&mut quilt, &mut cpu, &inputs, tol) {
                Ok(report) => {
                    for line in report.failures() {
                        failures.push(format!("{} at {}: {line}", entry.name, dims_label(dims)));
                    }
                    for (name, c) in &report.outputs {
                        eprintln!("  {} {name}: {}", dims_label(dims), c.describe());
                    }
                }
                Err(e) => failures.push(format!("{} at {}: {e}", entry.name, dims_label(dims))),
            }
        }
        let _ = std::fs::remove_dir_all(&dump);
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

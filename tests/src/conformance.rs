//! The ONNX backend node tests (`onnx/backend/test/data/node/<case>/`) run straight through
//! quilt: load → strict import → lower → `CpuExecutable`, compared with the expected outputs.
//! Graph inputs that feed parameter slots (Reshape shape, axes, scales, …) are frozen into
//! initializers holding their test data, since quilt resolves parameters at import.
//! A case is *declined* when quilt refuses it before running (import or `CpuExecutable::new`),
//! and *failed* when it runs and errors or gives wrong values.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quilt_kernels::cpu::CpuExecutable;
use quilt_rewrites::import::{import, ImportOptions};
use quilt_rewrites::onnx::{self, LoadOptions};
use quilt_rewrites::source::{Initializer, SourceGraph};
use quilt_rewrites::{DType, Tensor, TensorData};

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Passed,
    Declined(String),
    Failed(String),
}

pub struct CaseResult {
    pub name: String,
    /// Graph inputs that fed parameter slots (shapes, axes, scales, …) and were turned into
    /// initializers holding the test data, as constant-parameter models have them.
    pub frozen: Vec<String>,
    /// The op types of the case's model, joined with '+' (one for single-node cases).
    pub op_type: String,
    pub outcome: Outcome,
}

/// Tolerances: |actual - expected| <= atol + rtol * |expected|.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

/// rtol 1e-3 / atol 1e-5 for f32 and f16 as the ONNX reference tests use; bf16 keeps only 8
/// mantissa bits, so its values get rtol 1e-2. Integers and bools compare exactly.
pub fn tolerance_for(dtype: DType) -> Tolerance {
    match dtype {
        DType::BF16 => Tolerance { rtol: 1e-2, atol: 1e-5 },
        d if d.is_float() => Tolerance { rtol: 1e-3, atol: 1e-5 },
        _ => Tolerance { rtol: 0.0, atol: 0.0 },
    }
}

/// The first difference between an actual and an expected tensor, described.
pub fn first_mismatch(actual: &Tensor, expected: &Tensor) -> Option<String> {
    if actual.dtype() != expected.dtype() {
        return Some(format!("dtype {} != expected {}", actual.dtype(), expected.dtype()));
    }
    if actual.shape != expected.shape {
        return Some(format!("shape {:?} != expected {:?}", actual.shape, expected.shape));
    }
    let tol = tolerance_for(expected.dtype());
    let exact = !expected.dtype().is_float();
    if exact {
        let (a, e) = (int_view(&actual.data), int_view(&expected.data));
        return a.iter().zip(&e).position(|(x, y)| x != y).map(|i| format!("element {i}: {} != expected {}", a[i], e[i]));
    }
    let (a, e) = (actual.data.to_f64_vec(), expected.data.to_f64_vec());
    for (i, (&x, &y)) in a.iter().zip(&e).enumerate() {
        let same = (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= tol.atol + tol.rtol * y.abs();
        if !same {
            return Some(format!("element {i}: {x} != expected {y} (rtol {}, atol {})", tol.rtol, tol.atol));
        }
    }
    None
}

fn int_view(d: &TensorData) -> Vec<i64> {
    d.to_i64_vec().expect("integer data")
}

/// Case directories (those with a `model.onnx`), sorted by name.
pub fn case_dirs(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    v.sort();
    Ok(v)
}

fn read_tensors(dir: &Path, prefix: &str) -> Result<Vec<Tensor>, String> {
    let mut out = Vec::new();
    for i in 0.. {
        let p = dir.join(format!("{prefix}_{i}.pb"));
        if !p.is_file() {
            break;
        }
        let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        out.push(onnx::tensor_from_bytes(&bytes, Some(dir)).map_err(|e| format!("{}: {e}", p.display()))?);
    }
    Ok(out)
}

/// Runs one case; panics inside quilt are caught and count as failures.
pub fn run_case(dir: &Path) -> CaseResult {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut op_type = String::from("?");
    let mut frozen = Vec::new();
    let outcome = match onnx::load(&dir.join("model.onnx"), &LoadOptions::default()) {
        Err(e) => Outcome::Declined(format!("load: {e}")),
        Ok(src) => {
            let mut ops: Vec<&str> = src.nodes.iter().map(|n| n.op_type.as_str()).collect();
            ops.dedup();
            op_type = ops.join("+");
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_loaded(dir, src, &mut frozen))) {
                Ok(o) => o,
                Err(p) => {
                    let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                    Outcome::Failed(format!("panic: {}", msg.unwrap_or_default()))
                }
            }
        }
    };
    CaseResult { name, frozen, op_type, outcome }
}

/// The value name in an importer message "… (input N, 'name') is not known at import time".
fn unknown_parameter(msg: &str) -> Option<&str> {
    if !(msg.contains("is not known at import time") || msg.contains("is not a constant")) {
        return None;
    }
    let start = msg.rfind(", '")? + 3;
    let end = start + msg[start..].find('\'')?;
    Some(&msg[start..end])
}

fn run_loaded(dir: &Path, mut src: SourceGraph, frozen: &mut Vec<String>) -> Outcome {
    let data = dir.join("test_data_set_0");
    let (mut inputs, expected) = match (read_tensors(&data, "input"), read_tensors(&data, "output")) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) | (_, Err(e)) => return Outcome::Declined(format!("test data: {e}")),
    };
    if inputs.len() != src.inputs.len() {
        return Outcome::Declined(format!("{} test inputs for {} graph inputs", inputs.len(), src.inputs.len()));
    }
    let imported = loop {
        match import(&src, &ImportOptions::default()) {
            Ok(i) => break i,
            Err(e) => {
                let msg = e.to_string();
                // A parameter fed by a graph input: make it an initializer with the test data.
                let pos = unknown_parameter(&msg).and_then(|name| src.inputs.iter().position(|d| d.name == name));
                let Some(pos) = pos else { return Outcome::Declined(format!("import: {msg}")) };
                let decl = src.inputs.remove(pos);
                let t = inputs.remove(pos);
                src.initializers.insert(decl.name.clone(), Initializer::Data(Arc::new(t)));
                frozen.push(decl.name);
            }
        }
    };
    let plan = match quilt_rewrites::optimize(&imported.graph) {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(format!("lower: {e}")),
    };
    if inputs.len() != plan.inputs.len() || expected.len() != plan.outputs.len() {
        return Outcome::Failed(format!(
            "plan has {} inputs / {} outputs, test data has {} / {}",
            plan.inputs.len(),
            plan.outputs.len(),
            inputs.len(),
            expected.len()
        ));
    }
    let exe = match CpuExecutable::new(plan) {
        Ok(x) => x,
        Err(e) => return Outcome::Declined(format!("cpu: {e}")),
    };
    let actual = match exe.run(&inputs) {
        Ok(a) => a,
        Err(e) => return Outcome::Failed(format!("run: {e}")),
    };
    for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
        if let Some(m) = first_mismatch(a, e) {
            let name = &exe.plan().outputs[i].name;
            return Outcome::Failed(format!("output {i} '{name}': {m}"));
        }
    }
    Outcome::Passed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_names_come_from_import_messages() {
        let m = "node 'r' (Reshape): shape (input 1, 'shape') is not known at import time";
        assert_eq!(unknown_parameter(m), Some("shape"));
        assert_eq!(unknown_parameter("node 'c' (Clip): min (input 1, 'lo') is not a constant"), Some("lo"));
        assert_eq!(unknown_parameter("node 'x' (Add): dimensions 2 and 3 do not broadcast"), None);
    }

    #[test]
    fn comparison_uses_tolerances_and_exact_ints() {
        let e = Tensor::from_f32s(vec![3], vec![1.0, f32::NAN, -100.0]);
        let ok = Tensor::from_f32s(vec![3], vec![1.0005, f32::NAN, -100.09]);
        assert_eq!(first_mismatch(&ok, &e), None);
        let bad = Tensor::from_f32s(vec![3], vec![1.0, f32::NAN, -100.2]);
        assert!(first_mismatch(&bad, &e).unwrap().starts_with("element 2"));
        let nan = Tensor::from_f32s(vec![3], vec![1.0, 0.0, -100.0]);
        assert!(first_mismatch(&nan, &e).unwrap().starts_with("element 1"));
        assert!(first_mismatch(&Tensor::from_f32s(vec![1, 3], vec![1.0, f32::NAN, -100.0]), &e).unwrap().contains("shape"));
        let i = Tensor::from_i64s(vec![2], vec![1, 2]);
        assert!(first_mismatch(&Tensor::from_i64s(vec![2], vec![1, 3]), &i).is_some());
        assert!(first_mismatch(&Tensor::new(vec![2], TensorData::I32(vec![1, 2])), &i).unwrap().contains("dtype"));
    }
}

//! ONNX node conformance straight through quilt (no ONNX Runtime): every case under
//! `$QUILT_ONNX_NODE_TESTS` is loaded, strictly imported, lowered and run on the CPU backend.
//! Declined cases are fine (quilt says no up front); a case that runs and disagrees fails the test.

use std::collections::BTreeMap;
use std::path::PathBuf;

use quilt_tests::conformance::{case_dirs, run_case, Outcome};

#[test]
fn onnx_node_conformance_direct() {
    let Some(root) = std::env::var_os("QUILT_ONNX_NODE_TESTS").map(PathBuf::from) else {
        eprintln!("skipped: set QUILT_ONNX_NODE_TESTS to onnx/backend/test/data/node of an installed onnx package");
        return;
    };
    let cases = case_dirs(&root).unwrap_or_else(|e| panic!("QUILT_ONNX_NODE_TESTS={}: {e}", root.display()));
    assert!(!cases.is_empty(), "no cases under {}", root.display());

    // op type → (passed, failed, declined)
    let mut per_op: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut passed_frozen = 0;
    let mut declined_reasons: BTreeMap<String, usize> = BTreeMap::new();
    // QUILT_CONFORMANCE_VERBOSE=1 prints every declined case with its reason.
    let verbose = std::env::var_os("QUILT_CONFORMANCE_VERBOSE").is_some();
    for dir in &cases {
        let mut r = run_case(dir);
        if r.op_type.contains('+') {
            // Multi-node cases (function expansions) are grouped together.
            r.op_type = "(multi-node)".into();
        }
        if let (true, Outcome::Declined(why)) = (verbose, &r.outcome) {
            println!("declined {} [{}]: {why}", r.name, r.op_type);
        }
        let slot = match &r.outcome {
            Outcome::Passed => {
                passed_frozen += !r.frozen.is_empty() as usize;
                0
            }
            Outcome::Failed(why) => {
                let frozen = if r.frozen.is_empty() { String::new() } else { format!(" (frozen: {})", r.frozen.join(", ")) };
                failures.push(format!("{} [{}]{frozen}: {why}", r.name, r.op_type));
                1
            }
            Outcome::Declined(why) => {
                *declined_reasons.entry(reason_class(why)).or_default() += 1;
                2
            }
        };
        per_op.entry(r.op_type).or_default()[slot] += 1;
    }
    let total = |k: usize| per_op.values().map(|c| c[k]).sum::<usize>();
    println!("per op type (passed / failed / declined):");
    for (op, c) in &per_op {
        if c[0] + c[1] > 0 {
            println!("  {op:<28} {:>3} / {:>3} / {:>3}", c[0], c[1], c[2]);
        }
    }
    let fully_declined: Vec<&str> = per_op.iter().filter(|(_, c)| c[0] + c[1] == 0).map(|(o, _)| o.as_str()).collect();
    println!("op types with every case declined ({}): {}", fully_declined.len(), fully_declined.join(" "));
    println!("most common decline reasons:");
    let mut reasons: Vec<(&String, &usize)> = declined_reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1));
    for (why, n) in reasons.iter().take(25) {
        println!("  {n:>4}  {why}");
    }
    println!(
        "conformance: {} cases: {} passed ({} with parameter inputs frozen to their test data), {} failed, {} declined",
        cases.len(),
        total(0),
        passed_frozen,
        total(1),
        total(2)
    );
    if !failures.is_empty() {
        println!("FAILED cases:");
        for f in &failures {
            println!("  {f}");
        }
    }
    assert!(failures.is_empty(), "{} conformance cases failed (listed above)", failures.len());
}

/// A decline reason without the node and value names, so reasons group across cases.
fn reason_class(why: &str) -> String {
    let mut s = why.to_string();
    if let Some(i) = s.find("): ") {
        if s.starts_with("import: node '") {
            s = format!("import: {}", &s[i + 3..]);
        }
    }
    s.chars().take(110).collect()
}

/// The importer's real targets: every SD fixture (weights inline, and the weightless full-size
/// graphs) imports strictly — no node declined — with outputs of the declared rank, and the
/// weighted ones are accepted by the CPU backend as they are.
#[test]
fn sd_fixtures_import_strictly() {
    use quilt_rewrites::import::{import, ImportOptions};
    use quilt_rewrites::onnx::{load, LoadOptions};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures");
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())).flatten() {
        if let Ok(entries) = std::fs::read_dir(dir.path()) {
            files.extend(entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "onnx")));
        }
    }
    files.sort();
    assert!(files.len() >= 10, "expected the SD fixtures under {}, found {files:?}", root.display());
    for path in &files {
        let weightless = path.to_string_lossy().contains(".graph.");
        let src = load(path, &LoadOptions { load_weights: !weightless }).unwrap_or_else(|e| panic!("{e}"));
        let imported = import(&src, &ImportOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(imported.graph.outputs.len(), src.outputs.len(), "{}", path.display());
        for (out, decl) in imported.graph.outputs.iter().zip(&src.outputs) {
            let ty = imported.graph.value_type(out.value);
            let declared_rank = decl.dims.as_ref().map(|d| d.len());
            assert_eq!(Some(ty.rank()), declared_rank, "{} output {}: {ty}", path.display(), decl.name);
            assert_eq!(Some(ty.dtype), decl.dtype, "{} output {}", path.display(), decl.name);
        }
        let plan = quilt_rewrites::optimize(&imported.graph).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        println!("{}: {} nodes -> {} steps", path.display(), src.nodes.len(), plan.steps.len());
        if !weightless {
            if let Err(e) = quilt_kernels::cpu::CpuExecutable::new(plan) {
                panic!("{}: the CPU backend declines an imported plan: {e}", path.display());
            }
        }
    }
}

/// The TorchScript and dynamo exports of each SD fixture are different graphs (opset 17 vs 18,
/// shape chains vs folded shapes, Split/Slice choices) of the same weights, so their outputs
/// through quilt must agree: a reference for the importer that does not involve quilt's own
/// understanding of either graph. Inputs are seeded random values (ids in the vocabulary).
#[test]
fn torchscript_and_dynamo_exports_agree() {
    use quilt_rewrites::import::{import, ImportOptions};
    use quilt_rewrites::onnx::{load, LoadOptions};
    use quilt_rewrites::{DType, Tensor, TensorData};
    use quilt_tests::conformance::first_mismatch;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures");
    let cases: &[(&str, &[(&str, i64)])] = &[
        ("unet", &[("batch_size", 2), ("height", 8), ("width", 6), ("sequence_length", 5)]),
        ("unet_inpaint", &[("batch_size", 1), ("height", 6), ("width", 8), ("sequence_length", 3)]),
        ("vae_decoder", &[("batch_size", 1), ("latent_height", 4), ("latent_width", 6)]),
        ("vae_encoder", &[("batch_size", 2), ("sample_height", 8), ("sample_width", 6)]),
        ("text_encoder", &[("batch_size", 2), ("sequence_length", 7)]),
        ("text_encoder_xlmr", &[("batch_size", 2), ("sequence_length", 7)]),
    ];
    let run = |path: &std::path::Path, dims: &[(&str, i64)]| -> Vec<Tensor> {
        let src = load(path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let imported = import(&src, &ImportOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let plan = quilt_rewrites::optimize(&imported.graph).unwrap();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        };
        let inputs: Vec<Tensor> = plan
            .inputs
            .iter()
            .map(|v| {
                let ty = &plan.buffers[v.buffer].ty;
                let lookup = |s: &str| dims.iter().find(|(k, _)| *k == s).map(|(_, v)| *v);
                let shape: Vec<usize> = ty.shape.iter().map(|d| d.eval(&lookup).unwrap() as usize).collect();
                let n: usize = shape.iter().product();
                let data = match ty.dtype {
                    // Token ids: 3..900 keeps clear of the special ids and inside the vocabulary;
                    // the mask is all ones.
                    DType::I64 if v.name == "attention_mask" => TensorData::I64(vec![1; n]),
                    DType::I64 => TensorData::I64((0..n).map(|_| 3 + (next() * 897.0) as i64).collect()),
                    DType::F32 => TensorData::F32((0..n).map(|_| (next() * 2.0 - 1.0) as f32).collect()),
                    other => panic!("{}: input {} has dtype {other}", path.display(), v.name),
                };
                Tensor::new(shape, data)
            })
            .collect();
        let exe = quilt_kernels::cpu::CpuExecutable::new(plan).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        exe.run(&inputs).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    for (model, dims) in cases {
        let dir = root.join(model);
        let (a, b) = (run(&dir.join("model.onnx"), dims), run(&dir.join("model.dynamo.onnx"), dims));
        assert_eq!(a.len(), b.len(), "{model}");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(x.data.to_f64_vec().iter().any(|v| *v != 0.0), "{model} output {i} is all zeros");
            if let Some(m) = first_mismatch(x, y) {
                panic!("{model} output {i}: TorchScript vs dynamo export: {m}");
            }
        }
    }
}

//! On a GPU: runs replayed from CUDA graphs compute what step-by-step runs and the CPU backend
//! compute, when the input shape changes between runs and the caller's buffers change every run.
//!
//! For the tiny UNet, VAE decoder and CLIP text encoder fixtures (optimized plans), one
//! executable with CUDA graphs and one without run the sequence of shapes A, B, A, B, A (the
//! manifest's two `test_dims` entries) through `run_device`, each call on freshly drawn random
//! inputs in fresh device buffers and into output buffers poisoned with 0xFF bytes (a NaN for
//! floats) that alternate between two sets. Checks per call:
//! - every output element was written (no poison left);
//! - graphs vs no graphs: max |on − off| ≤ 1e-6 · max |off| (the same kernels and library
//!   calls; bitwise equality is reported);
//! - both vs the CPU interpreter on the lowered plan: max |gpu − cpu| ≤ 1e-3 · max |cpu| + 1e-6
//!   (fp32, TF32 off), as in `cuda_fixtures.rs`;
//! - the executables' counters: with graphs, the first call at each shape runs step by step,
//!   later calls replay a captured graph and no capture fails; without, nothing is captured.
//!
//! A second test feeds the text encoder token ids past its vocabulary: `run_device` returns
//! without waiting, `finish` reports the Gather node, and the next valid run is clean.
//! Without a GPU both print that they were skipped.

#[path = "cuda_support.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;

use quilt_kernels::cpu::CpuExecutable;
use quilt_kernels::cuda::{CudaDevice, CudaExecutable, DeviceBuffer, DeviceTensor};
use quilt_rewrites::{Plan, Tensor, TensorData};

const REL_TOL: f64 = 1e-3;
const GRAPH_TOL: f64 = 1e-6;
const MODELS: [&str; 3] = ["unet", "vae_decoder", "text_encoder"];

fn gpu() -> Option<Arc<CudaDevice>> {
    match CudaDevice::new(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("SKIPPED (no GPU): {e}");
            None
        }
    }
}

/// Output buffers filled with 0xFF bytes.
fn poisoned(dev: &Arc<CudaDevice>, plan: &Plan, shapes: &[Vec<usize>]) -> Vec<DeviceBuffer> {
    plan.outputs
        .iter()
        .zip(shapes)
        .map(|(v, s)| {
            let bytes = s.iter().product::<usize>() * plan.buffers[v.buffer].ty.dtype.size_bytes();
            let b = dev.alloc(bytes).unwrap();
            dev.write(&b, &vec![0xFF; bytes]).unwrap();
            b
        })
        .collect()
}

/// Runs `exec` on `inputs` (uploaded to fresh buffers) into `outs`, returns the outputs.
fn run_into(exec: &CudaExecutable, inputs: &[Tensor], outs: &[DeviceBuffer]) -> Result<Vec<Tensor>, String> {
    let dev = exec.device();
    let plan = exec.plan();
    let uploaded: Vec<DeviceBuffer> = inputs.iter().map(|t| dev.upload(&t.data.to_le_bytes()).unwrap()).collect();
    let views: Vec<DeviceTensor> = inputs.iter().zip(&uploaded).map(|(t, b)| DeviceTensor { ptr: b.ptr, shape: &t.shape, dtype: t.dtype() }).collect();
    let mut shapes: Vec<Vec<usize>> = vec![Vec::new(); plan.outputs.len()];
    exec.run_device(
        &views,
        &mut |j, shape| {
            shapes[j] = shape.to_vec();
            let need = shape.iter().product::<usize>() * plan.buffers[plan.outputs[j].buffer].ty.dtype.size_bytes();
            if need > outs[j].bytes {
                return Err(quilt_kernels::Error::Plan(format!("test buffer for output {j} holds {} bytes, {need} needed", outs[j].bytes)));
            }
            Ok(outs[j].ptr)
        },
        None,
    )
    .map_err(|e| e.to_string())?;
    exec.finish().map_err(|e| e.to_string())?;
    let mut result = Vec::new();
    for (j, v) in plan.outputs.iter().enumerate() {
        let dtype = plan.buffers[v.buffer].ty.dtype;
        let n = shapes[j].iter().product::<usize>() * dtype.size_bytes();
        let bytes = dev.download(&outs[j], n).map_err(|e| e.to_string())?;
        if let Some(k) = bytes.chunks_exact(dtype.size_bytes()).position(|c| c.iter().all(|&x| x == 0xFF)) {
            return Err(format!("output {} element {k} was not written (poison left)", v.name));
        }
        result.push(Tensor::new(shapes[j].clone(), TensorData::from_le_bytes(dtype, &bytes).unwrap()));
    }
    Ok(result)
}

/// (max |a − b|, max |b|); NaN anywhere is an error.
fn diff(a: &Tensor, b: &Tensor) -> Result<(f64, f64), String> {
    if a.shape != b.shape {
        return Err(format!("shape {:?} vs {:?}", a.shape, b.shape));
    }
    let (x, y) = (a.data.to_f64_vec(), b.data.to_f64_vec());
    let (mut d, mut m) = (0f64, 0f64);
    for (p, q) in x.iter().zip(&y) {
        if p.is_nan() || q.is_nan() {
            return Err("NaN in an output".into());
        }
        d = d.max((p - q).abs());
        m = m.max(q.abs());
    }
    Ok((d, m))
}

#[test]
fn graph_replays_match_stepwise_runs_and_the_cpu_across_shapes() {
    let Some(device) = gpu() else { return };
    let manifest = support::manifest();
    let mut failures = Vec::new();
    println!("{:<14} {:>4} {:<40} {:>11} {:>7} {:>11} {:>11} {:>9} {:>9}", "model", "call", "dims", "on-off", "bitwise", "on-cpu rel", "off-cpu rel", "on_ms", "off_ms");
    for name in MODELS {
        let entry = manifest.models.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("{name} not in the manifest"));
        assert!(entry.test_dims.len() >= 2, "{name}: two test sizes needed");
        let path = manifest.model_path(entry);
        let lowered = support::lowered_plan(&path, true);
        let cpu = CpuExecutable::new(lowered.clone()).unwrap();
        let plan = support::plan(&path, true, support::PlanKind::Optimized);
        let mut on = CudaExecutable::with_device(plan.clone(), device.clone()).unwrap();
        on.set_cuda_graphs(true);
        let mut off = CudaExecutable::with_device(plan.clone(), device.clone()).unwrap();
        off.set_cuda_graphs(false);
        // Output buffers big enough for either shape, two sets that alternate.
        let max_shapes: Vec<Vec<usize>> = {
            let cpu_opt = CpuExecutable::new(plan.clone()).unwrap();
            let mut best: Vec<Vec<usize>> = vec![Vec::new(); plan.outputs.len()];
            for (k, dims) in entry.test_dims.iter().enumerate() {
                let outs = cpu_opt.run(&support::random_inputs(&plan, entry, dims, k as u64)).unwrap();
                for (j, t) in outs.iter().enumerate() {
                    if t.shape.iter().product::<usize>() > best[j].iter().product::<usize>() || best[j].is_empty() {
                        best[j] = t.shape.clone();
                    }
                }
            }
            best
        };
        let sets = [poisoned(&device, &plan, &max_shapes), poisoned(&device, &plan, &max_shapes)];
        let sequence = [0usize, 1, 0, 1, 0];
        for (call, &k) in sequence.iter().enumerate() {
            let dims = &entry.test_dims[k];
            let dims_s = dims.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(",");
            let label = format!("{name} call {call} ({dims_s})");
            let inputs = support::random_inputs(&plan, entry, dims, 7000 + call as u64);
            let want = cpu.run(&inputs).unwrap();
            let outs = &sets[call % 2];
            // Re-poison: a replay that writes nowhere (or into the previous call's buffers)
            // must not pass on values left over from an earlier call.
            for b in outs {
                device.write(b, &vec![0xFF; b.bytes]).unwrap();
            }
            let t = Instant::now();
            let got_on = match run_into(&on, &inputs, outs) {
                Ok(g) => g,
                Err(e) => {
                    failures.push(format!("{label}: graphs on: {e}"));
                    continue;
                }
            };
            let on_ms = t.elapsed().as_secs_f64() * 1e3;
            for b in outs {
                device.write(b, &vec![0xFF; b.bytes]).unwrap();
            }
            let t = Instant::now();
            let got_off = match run_into(&off, &inputs, outs) {
                Ok(g) => g,
                Err(e) => {
                    failures.push(format!("{label}: graphs off: {e}"));
                    continue;
                }
            };
            let off_ms = t.elapsed().as_secs_f64() * 1e3;
            for (j, v) in plan.outputs.iter().enumerate() {
                let Some(c) = lowered.outputs.iter().position(|o| o.name == v.name).map(|i| &want[i]) else {
                    failures.push(format!("{label}: output {} is not in the lowered plan", v.name));
                    continue;
                };
                let checks = (diff(&got_on[j], &got_off[j]), diff(&got_on[j], c), diff(&got_off[j], c));
                let ((d_oo, m_off), (d_on, m_cpu), (d_off, _)) = match checks {
                    (Ok(a), Ok(b), Ok(c)) => (a, b, c),
                    (a, b, c) => {
                        failures.push(format!("{label} output {}: {:?} {:?} {:?}", v.name, a.err(), b.err(), c.err()));
                        continue;
                    }
                };
                let bitwise = got_on[j].data == got_off[j].data;
                println!(
                    "{:<14} {:>4} {:<40} {:>11.3e} {:>7} {:>11.3e} {:>11.3e} {:>9.2} {:>9.2}",
                    name, call, dims_s, d_oo, bitwise, d_on / m_cpu.max(1e-30), d_off / m_cpu.max(1e-30), on_ms, off_ms
                );
                if m_cpu == 0.0 {
                    failures.push(format!("{label} output {}: the reference is all zeros", v.name));
                }
                if d_oo > GRAPH_TOL * m_off {
                    failures.push(format!("{label} output {}: graphs on vs off differ by {d_oo:.3e} (> {GRAPH_TOL:e} * {m_off:.3e})", v.name));
                }
                for (what, d) in [("graphs on", d_on), ("graphs off", d_off)] {
                    if d > REL_TOL * m_cpu + 1e-6 {
                        failures.push(format!("{label} output {} ({what}): max abs error vs cpu {d:.3e} > {REL_TOL:e} * {m_cpu:.3e}", v.name));
                    }
                }
            }
        }
        let (s_on, s_off) = (on.stats(), off.stats());
        println!("{name}: graphs on {s_on:?}\n{name}: graphs off {s_off:?}");
        // Calls 0 and 1 are the first at their shapes; calls 2..4 replay.
        if s_on.stepwise_runs != 2 || s_on.replays != 3 || s_on.capture_failures != 0 || s_on.captures < 2 {
            failures.push(format!("{name}: graphs on: expected 2 step-by-step runs, 3 replays, no failed capture, got {s_on:?}"));
        }
        if s_off.captures != 0 || s_off.replays != 0 || s_off.stepwise_runs != 5 {
            failures.push(format!("{name}: graphs off: expected 5 step-by-step runs, got {s_off:?}"));
        }
        if s_on.shapes != 2 || s_on.arena_bytes == 0 {
            failures.push(format!("{name}: expected 2 shapes and an arena, got {s_on:?}"));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn an_index_out_of_range_is_reported_after_the_run_naming_the_node() {
    let Some(device) = gpu() else { return };
    let manifest = support::manifest();
    let entry = manifest.models.iter().find(|e| e.name == "text_encoder").unwrap();
    let plan = support::plan(&manifest.model_path(entry), true, support::PlanKind::Optimized);
    let exec = CudaExecutable::with_device(plan.clone(), device.clone()).unwrap();
    let dims = &entry.test_dims[0];
    let good = support::random_inputs(&plan, entry, dims, 1);
    let shapes: Vec<Vec<usize>> = CpuExecutable::new(plan.clone()).unwrap().run(&good).unwrap().into_iter().map(|t| t.shape).collect();
    let outs = poisoned(&device, &plan, &shapes);
    for round in 0..3 {
        // Rounds 1 and 2 replay a graph (the error words are outside it, and must still work).
        run_into(&exec, &good, &outs).unwrap_or_else(|e| panic!("round {round}, valid ids: {e}"));
        let mut bad = good.clone();
        if let TensorData::I64(ids) = &mut bad[0].data {
            ids[3] = 1_000_000;
        } else {
            panic!("input_ids is not int64");
        }
        let e = run_into(&exec, &bad, &outs).err().unwrap_or_else(|| panic!("round {round}: an id past the vocabulary was not reported"));
        println!("round {round}: {e}");
        assert!(e.contains("index is out of range") && e.contains("node '"), "round {round}: {e}");
        run_into(&exec, &good, &outs).unwrap_or_else(|e| panic!("round {round}: the error stuck to the next valid run: {e}"));
    }
    println!("{:?}", exec.stats());
}

//! Compile: one fused node's OrtGraph → SourceGraph → strict import → optimize → executable for
//! the session's backend (the CPU interpreter, or the CUDA backend with the weights uploaded
//! once), wrapped in an `OrtNodeComputeInfo` that ORT calls at run time (see `compute`).

use std::collections::HashMap;
use std::ffi::c_char;
use std::ptr;
use std::sync::Arc;

use ort_sys::{OrtGraph, OrtNode};
use quilt_kernels::cpu::CpuExecutable;
use quilt_kernels::cuda::CudaExecutable;
use quilt_rewrites::import::{import, ImportOptions};
use quilt_rewrites::Plan;

use crate::abi::{OrtNodeComputeInfo, ORT_VERSION_SUPPORTED};
use crate::api::{string_from, Api};
use crate::compute;
use crate::ep::{Backend, QuiltEp};
use crate::error::{Error, Result};
use crate::ort_call;
use crate::ort_graph::{convert, GraphIo, WeightCopy};

/// A plan prepared for the session's backend.
#[allow(clippy::large_enum_variant)] // one per fused node
pub enum Executable {
    Cpu(CpuExecutable),
    Cuda(CudaExecutable),
}

impl Executable {
    pub fn plan(&self) -> &Plan {
        match self {
            Executable::Cpu(e) => e.plan(),
            Executable::Cuda(e) => e.plan(),
        }
    }
}

/// A compiled fused node. Immutable, so concurrent runs share it.
pub struct FusedKernel {
    /// The fused node's name (for messages and plan dumps).
    pub name: String,
    pub exec: Executable,
    /// For each plan input (in plan order): its kernel-context input index and name.
    pub inputs: Vec<(usize, String)>,
    /// For each kernel-context output (in context order): the plan output index and name.
    pub outputs: Vec<(usize, String)>,
}

/// `OrtNodeComputeInfo` first, so ORT's `this` pointer casts back.
#[repr(C)]
pub struct ComputeInfo {
    base: OrtNodeComputeInfo,
    pub api: Api,
    pub kernel: Arc<FusedKernel>,
}

/// Compiles one fused node. Every error names the fused node (and, through the compiler's
/// errors, the model node that failed).
///
/// # Safety
/// Pointers as ORT passes them to `OrtEp::Compile`.
pub unsafe fn compile(ep: &QuiltEp, graph: *const OrtGraph, fused_node: *const OrtNode) -> Result<*mut OrtNodeComputeInfo> {
    let mut p: *const c_char = ptr::null();
    ort_call!(ep.api, Node_GetName(fused_node, &mut p))?;
    let name = string_from(p);
    let kernel = build(ep, graph, fused_node, &name).map_err(|e| e.in_fused_node(&name))?;
    ep.log.info(&format!(
        "compiled '{name}': {} input(s), {} output(s), {} step(s)",
        kernel.inputs.len(),
        kernel.outputs.len(),
        kernel.exec.plan().steps.len()
    ));
    let info = Box::new(ComputeInfo {
        base: OrtNodeComputeInfo {
            ort_version_supported: ORT_VERSION_SUPPORTED,
            CreateState: Some(compute::create_state),
            Compute: Some(compute::compute),
            ReleaseState: Some(compute::release_state),
        },
        api: ep.api,
        kernel: Arc::new(kernel),
    });
    Ok(Box::into_raw(info) as *mut OrtNodeComputeInfo)
}

/// Frees a compute info made by [`compile`] (NULL is ignored).
///
/// # Safety
/// `info` must come from [`compile`] and not be used afterwards.
pub unsafe fn release(info: *mut OrtNodeComputeInfo) {
    if !info.is_null() {
        drop(Box::from_raw(info as *mut ComputeInfo));
    }
}

unsafe fn build(ep: &QuiltEp, graph: *const OrtGraph, fused_node: *const OrtNode, name: &str) -> Result<FusedKernel> {
    // Phase times go to the log: session creation time is a target (issue 4).
    let mut clock = std::time::Instant::now();
    let mut phases: Vec<String> = Vec::new();
    let mut lap = |what: &str| {
        phases.push(format!("{what} {:.0} ms", clock.elapsed().as_secs_f64() * 1e3));
        clock = std::time::Instant::now();
    };
    let converted = convert(ep.api, graph, GraphIo::FusedNode(fused_node), WeightCopy::All)?;
    lap("read graph + copy weights");
    let src = &converted.source;
    let imported = import(src, &ImportOptions { lenient: false })?;
    lap("import");
    let plan = ep.options.plan(&imported.graph, matches!(ep.backend, Backend::Cuda { .. }))?;
    lap("optimize");
    if let Some(dir) = &ep.options.dump_plans {
        // The node list says which ORT nodes quilt took (shape chains that fold away leave no
        // step in the plan, so the plan alone cannot say).
        let nodes: String = src.nodes.iter().map(|n| format!("{}\t{}\n", n.name, n.op_type)).collect();
        let stem = name.replace(['/', '\\'], "_");
        for (file, text) in [(dir.join(format!("{stem}.plan.txt")), plan.to_string()), (dir.join(format!("{stem}.nodes.txt")), nodes)] {
            match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&file, text)) {
                Ok(()) => ep.log.info(&format!("wrote {}", file.display())),
                Err(e) => ep.log.warning(&format!("could not write {}: {e}", file.display())),
            }
        }
    }

    let context_input: HashMap<&str, usize> =
        src.inputs[..converted.num_io_inputs].iter().enumerate().map(|(i, d)| (d.name.as_str(), i)).collect();
    let inputs = plan
        .inputs
        .iter()
        .map(|v| match context_input.get(v.name.as_str()) {
            Some(&i) => Ok((i, v.name.clone())),
            None => Err(Error::Graph(format!("the plan reads '{}', which is not an input of the fused node", v.name))),
        })
        .collect::<Result<Vec<_>>>()?;
    let plan_output: HashMap<&str, usize> = plan.outputs.iter().enumerate().map(|(i, v)| (v.name.as_str(), i)).collect();
    let outputs = src
        .outputs
        .iter()
        .map(|d| match plan_output.get(d.name.as_str()) {
            Some(&i) => Ok((i, d.name.clone())),
            None => Err(Error::Graph(format!("the plan does not produce fused-node output '{}'", d.name))),
        })
        .collect::<Result<Vec<_>>>()?;
    let exec = match &ep.backend {
        Backend::Reference => Executable::Cpu(CpuExecutable::new(plan)?),
        Backend::Cuda { device, .. } => {
            if let Some(dir) = &ep.options.cache_dir {
                // Process-wide: the cache is keyed by source and architecture, so sessions share it.
                quilt_kernels::cuda::kernel_cache::set_dir(dir.clone());
            }
            let mut exec = CudaExecutable::with_device(plan, device.clone())?;
            exec.set_cuda_graphs(ep.options.cuda_graph);
            Executable::Cuda(exec)
        }
    };
    lap("prepare executable (kernels, weight upload)");
    ep.log.info(&format!("compile phases of '{name}': {}", phases.join(", ")));
    Ok(FusedKernel { name: name.to_string(), exec, inputs, outputs })
}

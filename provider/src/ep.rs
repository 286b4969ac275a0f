//! `QuiltEp`: the per-session `OrtEp`. It dispatches ORT's calls to `capability` (what quilt
//! claims), `compile` (fused node → executable) and, through the compute infos, `compute`.
//! Its [`Backend`] says where the session's subgraphs run and where their I/O lives.

use std::ffi::{c_char, c_int};
use std::ptr;
use std::sync::Arc;

use ort_sys::{OrtGraph, OrtNode, OrtStatusPtr};
use quilt_kernels::cuda::CudaDevice;

use crate::abi::{
    OrtEp, OrtEpGraphSupportInfo, OrtMemoryDevice, OrtNodeComputeInfo, ORT_EP_DATA_LAYOUT_NCHW, ORT_VERSION_SUPPORTED,
};
use crate::api::Api;
use crate::factory::EP_NAME;
use crate::log::Log;
use crate::options::Options;
use crate::{capability, compile, guard};

/// Where a session's subgraphs run.
pub enum Backend {
    /// The CPU interpreter, I/O in CPU memory (the reference device).
    Reference,
    /// The CUDA backend on GPU `ordinal`, I/O in its device memory.
    Cuda {
        ordinal: usize,
        device: Arc<CudaDevice>,
        /// The device memory ORT places fused-node inputs and outputs in (owned by the factory).
        memory_device: *const OrtMemoryDevice,
    },
}

impl Backend {
    pub fn describe(&self) -> String {
        match self {
            Backend::Reference => "the CPU reference device".into(),
            Backend::Cuda { ordinal, device, .. } => format!("GPU {ordinal} ({})", device.name),
        }
    }
}

/// `OrtEp` first, so ORT's `this` pointer casts back to `QuiltEp`.
#[repr(C)]
pub struct QuiltEp {
    base: OrtEp,
    pub api: Api,
    pub options: Options,
    pub log: Log,
    pub backend: Backend,
}

impl QuiltEp {
    /// A new EP for ORT to own; freed by [`QuiltEp::release_raw`].
    pub fn new_raw(api: Api, options: Options, log: Log, backend: Backend) -> *mut OrtEp {
        let ep = Box::new(QuiltEp {
            base: OrtEp {
                ort_version_supported: ORT_VERSION_SUPPORTED,
                GetName: Some(get_name),
                GetCapability: Some(get_capability),
                Compile: Some(compile_fused),
                ReleaseNodeComputeInfos: Some(release_node_compute_infos),
                GetPreferredDataLayout: Some(get_preferred_data_layout),
                ShouldConvertDataLayoutForOp: Some(should_convert_data_layout_for_op),
                SetDynamicOptions: None,
                OnRunStart: None,
                OnRunEnd: None,
                CreateAllocator: None,
                CreateSyncStreamForDevice: None,
                GetCompiledModelCompatibilityInfo: None,
                GetKernelRegistry: None,
                IsConcurrentRunSupported: None,
                Sync: None,
                CreateProfiler: None,
                IsGraphCaptureEnabled: None,
                IsGraphCaptured: None,
                ReplayGraph: None,
                GetGraphCaptureNodeAssignmentPolicy: None,
                GetAvailableResource: None,
                OnSessionInitializationEnd: None,
                GetDefaultMemoryDevice: Some(get_default_memory_device),
                ReleaseCapturedGraph: None,
                GetWeightlessSupport: None,
            },
            api,
            options,
            log,
            backend,
        });
        Box::into_raw(ep) as *mut OrtEp
    }

    /// # Safety
    /// `ep` must come from [`QuiltEp::new_raw`] and not be used afterwards.
    pub unsafe fn release_raw(ep: *mut OrtEp) {
        drop(Box::from_raw(ep as *mut QuiltEp));
    }
}

unsafe fn quilt_ep<'a>(this: *const OrtEp) -> &'a QuiltEp {
    &*(this as *const QuiltEp)
}

unsafe extern "C" fn get_name(_this: *const OrtEp) -> *const c_char {
    EP_NAME.as_ptr()
}

/// Never fails the session: any error means "claim nothing in this graph" and is logged.
unsafe extern "C" fn get_capability(this: *mut OrtEp, graph: *const OrtGraph, info: *mut OrtEpGraphSupportInfo) -> OrtStatusPtr {
    let ep = quilt_ep(this);
    guard::status(ep.api, "GetCapability", || {
        if let Err(e) = guard::result("GetCapability", || capability::claim(ep, graph, info)) {
            ep.log.warning(&format!("claiming nothing in this graph: {e}"));
        }
        Ok(())
    })
}

unsafe extern "C" fn compile_fused(
    this: *mut OrtEp,
    graphs: *const *const OrtGraph,
    fused_nodes: *const *const OrtNode,
    count: usize,
    node_compute_infos: *mut *mut OrtNodeComputeInfo,
    ep_context_nodes: *mut *mut OrtNode,
) -> OrtStatusPtr {
    let ep = quilt_ep(this);
    guard::status(ep.api, "Compile", || {
        if !ep_context_nodes.is_null() {
            // quilt writes no EPContext nodes.
            for i in 0..count {
                *ep_context_nodes.add(i) = ptr::null_mut();
            }
        }
        let graphs = std::slice::from_raw_parts(graphs, count);
        let fused = std::slice::from_raw_parts(fused_nodes, count);
        let out = std::slice::from_raw_parts_mut(node_compute_infos, count);
        out.fill(ptr::null_mut());
        for i in 0..count {
            match compile::compile(ep, graphs[i], fused[i]) {
                Ok(info) => out[i] = info,
                Err(e) => {
                    // Free what this call made; ORT only releases infos of successful compiles.
                    for slot in out.iter_mut().take(i) {
                        compile::release(*slot);
                        *slot = ptr::null_mut();
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    })
}

unsafe extern "C" fn release_node_compute_infos(_this: *mut OrtEp, infos: *mut *mut OrtNodeComputeInfo, num: usize) {
    guard::value("ReleaseNodeComputeInfos", (), || {
        if infos.is_null() {
            return;
        }
        for &info in std::slice::from_raw_parts(infos, num) {
            compile::release(info);
        }
    })
}

unsafe extern "C" fn get_preferred_data_layout(_this: *mut OrtEp, layout: *mut i32) -> OrtStatusPtr {
    if !layout.is_null() {
        *layout = ORT_EP_DATA_LAYOUT_NCHW;
    }
    OrtStatusPtr(ptr::null_mut())
}

unsafe extern "C" fn should_convert_data_layout_for_op(
    _this: *mut OrtEp,
    _domain: *const c_char,
    _op_type: *const c_char,
    _target_layout: i32,
    should_convert: *mut c_int,
) -> OrtStatusPtr {
    if !should_convert.is_null() {
        // Let ORT decide (quilt prefers NCHW, so ORT converts nothing for it).
        *should_convert = -1;
    }
    OrtStatusPtr(ptr::null_mut())
}

/// The GPU's device memory for a CUDA session; NULL (CPU memory) for the reference device. ORT
/// would otherwise take the first given device's memory, which is the same unless `device_id`
/// picked another GPU.
unsafe extern "C" fn get_default_memory_device(this: *const OrtEp, out: *mut *const OrtMemoryDevice) -> OrtStatusPtr {
    if !out.is_null() {
        *out = match &quilt_ep(this).backend {
            Backend::Reference => ptr::null(),
            Backend::Cuda { memory_device, .. } => *memory_device,
        };
    }
    OrtStatusPtr(ptr::null_mut())
}

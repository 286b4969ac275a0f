//! `QuiltEp`: the per-session `OrtEp`. It dispatches ORT's calls to `capability` (what quilt
//! claims), `compile` (fused node → executable) and, through the compute infos, `compute`.

use std::ffi::{c_char, c_int};
use std::ptr;

use ort_sys::{OrtGraph, OrtNode, OrtStatusPtr};

use crate::abi::{OrtEp, OrtEpGraphSupportInfo, OrtNodeComputeInfo, ORT_EP_DATA_LAYOUT_NCHW, ORT_VERSION_SUPPORTED};
use crate::api::Api;
use crate::factory::EP_NAME;
use crate::log::Log;
use crate::options::Options;
use crate::{capability, compile, guard};

/// `OrtEp` first, so ORT's `this` pointer casts back to `QuiltEp`.
#[repr(C)]
pub struct QuiltEp {
    base: OrtEp,
    pub api: Api,
    pub options: Options,
    pub log: Log,
}

impl QuiltEp {
    /// A new EP for ORT to own; freed by [`QuiltEp::release_raw`].
    pub fn new_raw(api: Api, options: Options, log: Log) -> *mut OrtEp {
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
                GetDefaultMemoryDevice: None,
                ReleaseCapturedGraph: None,
                GetWeightlessSupport: None,
            },
            api,
            options,
            log,
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
